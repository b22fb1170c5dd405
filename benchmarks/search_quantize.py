"""The search at -1 point with and without int8 as its last step, for the smallest file and for the fastest
model, on the JPEG-fine-tuned ResNet-56 (issue 14).

    python benchmarks/search_quantize.py [--arch resnet56] [--drop 0.01]

Every search: channel pruning by L1 norm alone (`--order ns`; the baseline was not sparsity-trained), bisect,
5% steps, no fine-tuning, decided on the stratified first half of the CIFAR-10 JPEG test split (seed 0); the
winners' test accuracy on the other half, once. The int8 searches calibrate each candidate on 512 training images.
The searches (VARIANTS): fp32 and int8 for the smallest file; int8 for the fastest model at batch 256
(`objective="latency-b256"`), with widths as L1 leaves them and rounded to multiples of 8 (`round_to=8`).
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

# name -> (quantize, objective, round_to); each search keeps its own run directory, so a rerun resumes it.
VARIANTS = {
    "search, fp32": (None, "size", 1),
    "search, int8 last": ("int8", "size", 1),
    "search, int8 last, fastest at b256": ("int8", "latency-b256", 1),
    "search, int8 last, fastest at b256, round_to 8": ("int8", "latency-b256", 8),
}


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
    for name, (quantize, objective, round_to) in VARIANTS.items():
        config = SearchConfig(pipeline=Pipeline(order="ns", structured="l1", quantize=quantize, round_to=round_to,
                                                    residual_stream=False),
                              strategy="bisect", drop=args.drop, objective=objective)
        run = (quantize or "fp32") + ("" if objective == "size" else f"-{objective}-r{round_to}")
        result = search(model, validator, meta, config, root / run, say=print,
                        calibration=calibration if quantize else None)
        winner, _ = load(result.path)
        if not isinstance(winner, OnnxModel):
            files[name] = export_onnx(winner, root / f"{run}.winner.fp32.onnx", shape)
            macs = count_macs(winner, shape)
        else:
            files[name] = result.path
            macs = None
        rows[name] = {"ratio": result.best.ratios[0], "file bytes": result.path.stat().st_size, "MACs": macs,
                      "objective": objective, "round_to": round_to, "searched latency": result.best.latency,
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
