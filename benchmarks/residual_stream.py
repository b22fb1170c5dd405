"""Pruning a ResNet's residual streams (through its zero-padding shortcuts) against its blocks' inner widths only.

    python benchmarks/residual_stream.py --macs-reduction 0.45 --epochs 2

The JPEG-fine-tuned ResNet-56 (`baseline_resnet56.py`), FPGM to the same MACs reduction both ways, each
fine-tuned the same epochs on the training images (lr 0.01, cosine, seed 0), then: parameters, MACs,
accuracy on the two stratified halves of the JPEG test split ("val" decides, "test" is reported once), and
ONNX Runtime fp32 latency at batch 1 and 256 against the unpruned model, all timed side by side (--rounds).
Fine-tuned models are cached in $CNNZIP_RUNS/bench-quantize-resnet56, so a rerun only measures.
Writes results/residual_stream_resnet56.json.
"""

import argparse

import torch

from _common import RUNS, save
from baseline_resnet56 import quantization_setup
from cnnzip.deploy import compare_onnx_latency, export_onnx
from cnnzip.measure import count_macs, count_parameters
from quantize_resnet56 import prune_fpgm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs-reduction", type=float, default=0.45)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, tester, _ = quantization_setup("resnet56", 32)
    work = RUNS / "bench-quantize-resnet56"
    shape = tuple(meta.input_shape)
    models = {"unpruned": model}
    for name, stream in (("inner widths only", False), ("residual streams too", True)):
        models[name] = prune_fpgm(model, meta, ds, work, args.epochs, args.macs_reduction, 1, residual_stream=stream)
    rows, files = {}, {}
    for name, m in models.items():
        m = m.eval()
        rows[name] = {"parameters": count_parameters(m), "MACs": count_macs(m, shape),
                      "val accuracy": validator.evaluate(m).accuracy, "test accuracy": tester.evaluate(m).accuracy,
                      "widths": {n: [c.in_channels, c.out_channels] for n, c in m.named_modules()
                                 if isinstance(c, torch.nn.Conv2d)}}
        files[name] = work / f"stream-bench-{name.replace(' ', '-')}.fp32.onnx"
        export_onnx(m, files[name], shape)
        print(name, {k: v for k, v in rows[name].items() if k != "widths"}, flush=True)
    times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    for name in models:
        rows[name].update(times[name])
        for b in (1, 256):
            rows[name][f"speed-up b{b}"] = times["unpruned"][f"ort_ms_b{b}"] / times[name][f"ort_ms_b{b}"]
    lines = ["| model | parameters | MACs | val | test | ORT fp32 speed-up b1 | b256 |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['parameters']:,} | {r['MACs'] / 1e6:.1f}M | {r['val accuracy']:.2%} | "
                     f"{r['test accuracy']:.2%} | {r['speed-up b1']:.2f}x | {r['speed-up b256']:.2f}x |")
    print("\n".join(lines))
    save("residual_stream_resnet56", {"macs_reduction": args.macs_reduction, "epochs": args.epochs,
                                      "rounds": args.rounds, "threads": args.threads, "rows": rows,
                                      "data": "CIFAR-10 JPEG; val/test = stratified halves of the test split (seed 0)",
                                      "table": "\n".join(lines)})


if __name__ == "__main__":
    main()
