"""The search at -1 point with and without int8 as its last step, on the JPEG-fine-tuned ResNet-56 (issue 14).

    python benchmarks/search_quantize.py [--arch resnet56] [--drop 0.01]

Both searches: channel pruning by L1 norm alone (`--order ns`; the baseline was not sparsity-trained), bisect,
5% steps, no fine-tuning, decided on the stratified first half of the CIFAR-10 JPEG test split (seed 0); the
winners' test accuracy on the other half, once. The int8 search calibrates each candidate on 512 training images.
The winners and the fp32 baseline are then timed in ONNX Runtime side by side (the plain winner exported to ONNX).
Writes results/search_quantize_<arch>.json.
"""

import argparse

import torch

from _common import RUNS, save
from baseline_resnet56 import model_file, quantization_setup
from cnnzip.deploy import OnnxModel, compare_onnx_latency, export_onnx
from cnnzip.io import load
from cnnzip.measure import count_macs
from cnnzip.search import Pipeline, SearchConfig, search


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["resnet20", "resnet56"], default="resnet56")
    ap.add_argument("--drop", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, tester, calibration = quantization_setup(args.arch, 512)
    root = RUNS / f"bench-search-quantize-{args.arch}"
    shape = tuple(meta.input_shape)
    rows, files = {}, {"fp32 baseline": export_onnx(model, root / "baseline.fp32.onnx", shape)}
    for quantize in (None, "int8"):
        name = "search, int8 last" if quantize else "search, fp32"
        config = SearchConfig(pipeline=Pipeline(order="ns", structured="l1", quantize=quantize), strategy="bisect",
                              drop=args.drop)
        result = search(model, validator, meta, config, root / (quantize or "fp32"), say=print,
                        calibration=calibration if quantize else None)
        winner, _ = load(result.path)
        if not isinstance(winner, OnnxModel):
            files[name] = export_onnx(winner, root / "winner.fp32.onnx", shape)
            macs = count_macs(winner, shape)
        else:
            files[name] = result.path
            macs = None
        rows[name] = {"ratio": result.best.ratios[0], "file bytes": result.path.stat().st_size, "MACs": macs,
                      "val accuracy": result.final_accuracy, "test accuracy": tester.evaluate(winner).accuracy,
                      "target": result.target, "checks": result.cost["checks"], "seconds": result.cost["seconds"]}
        print(name, rows[name], flush=True)
    rows["fp32 baseline"] = {"file bytes": model_file(args.arch).stat().st_size, "MACs": count_macs(model, shape),
                             "val accuracy": validator.evaluate(model).accuracy,
                             "test accuracy": tester.evaluate(model).accuracy}
    times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    for name, t in times.items():
        rows[name].update(t)
        for b in (1, 256):
            rows[name][f"speed-up b{b}"] = times["fp32 baseline"][f"ort_ms_b{b}"] / t[f"ort_ms_b{b}"]
    for name, r in rows.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    save(f"search_quantize_{args.arch}", {"rows": rows, "drop": args.drop, "rounds": args.rounds,
                                           "threads": args.threads, "calibration_images": 512,
                                           "data": "val/test = stratified halves of the CIFAR-10 JPEG test split"})


if __name__ == "__main__":
    main()
