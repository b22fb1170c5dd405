"""`cnnzip compress` with its default recipe against the best single method, per objective (issue 20).

    python benchmarks/compress_resnet56.py [--arch resnet56] [--drop 0.01] [--threads 1]

Everything runs through the `cnnzip` command, as a user would, on the JPEG-fine-tuned model
(`baseline_resnet56.py --arch ARCH`; VGG-19 is trained there from scratch) with the default split (5,000 held-out training images decide; the ../shared
weights saw them, so validation is optimistic), then every file is tested once on the 10,000 JPEG test images and
timed in ONNX Runtime side by side (fp32 files exported first; 5 rotating rounds). Per objective:

- size: `cnnzip compress --objective size` (prune l1 then deep-compress, recalibrated trials) against the best
  single method in BENCHMARKS.md at -1 point, deep compression searched alone (`cnnzip search --order dc`,
  recalibrated trials);
- latency-b1 / latency-b256: `cnnzip compress --objective latency-bN` (prune l1 with widths in multiples of 8, then
  int8, the fastest passing candidate) against int8 post-training quantization alone (`cnnzip quantize`), the
  fastest single method in BENCHMARKS.md.

Cost: each run's wall seconds. Runs keep their directories under $CNNZIP_RUNS/bench-compress-<arch>/ (a rerun
resumes them). Writes results/compress_<arch>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import CIFAR_JPEG, REPO, RUNS, require_shared, save
from baseline_resnet56 import ARCHS, ensure, model_file

RUNS_ = {
    "size": {
        "compress": ["compress", "--objective", "size"],
        "single": ["search", "--order", "dc", "--structured", "l1"],
        "single_name": "deep compression alone (search --order dc)",
        "file": "best.cnnz",
    },
    "latency-b1": {
        "compress": ["compress", "--objective", "latency-b1"],
        "single": ["quantize"],
        "single_name": "int8 alone (cnnzip quantize)",
        "file": "best.int8.onnx",
    },
    "latency-b256": {
        "compress": ["compress", "--objective", "latency-b256"],
        "single": ["quantize"],
        "single_name": "int8 alone (cnnzip quantize)",
        "file": "best.int8.onnx",
    },
}


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    full = [sys.executable, "-m", "cnnzip.cli", *cmd, "--threads", str(threads), "--quiet"]
    print(" ".join(full), flush=True)
    started = time.perf_counter()
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="resnet56")
    ap.add_argument("--drop", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--objectives", default="size,latency-b1,latency-b256")
    args = ap.parse_args()
    require_shared()
    ensure(arch=args.arch)
    import torch

    from cnnzip.data import Loader, load_dataset
    from cnnzip.deploy import compare_onnx_latency, export_onnx
    from cnnzip.io import load
    from cnnzip.measure import Evaluator

    torch.set_num_threads(args.threads)
    base = model_file(args.arch)
    root = RUNS / f"bench-compress-{args.arch}"
    common = ["--data", str(CIFAR_JPEG), "--drop", str(args.drop)]
    rows, files = {}, {}
    baseline, meta = load(base)
    shape = tuple(meta.input_shape)
    files["fp32 baseline"] = export_onnx(baseline, root / "baseline.fp32.onnx", shape)
    rows["fp32 baseline"] = {"objective": "-", "path": str(base)}
    for objective in args.objectives.split(","):
        spec = RUNS_[objective]
        out_c, out_s = root / f"compress-{objective}", root / f"single-{objective}"
        seconds_c = _run([*spec["compress"], str(base), *common, "--out", str(out_c)], args.threads)
        single = spec["single"]
        if single == ["quantize"]:
            seconds_s = _run(["quantize", str(base), "--data", str(CIFAR_JPEG), "--out", str(out_s)], args.threads)
            single_file = out_s / "model.int8.onnx"
        else:
            seconds_s = _run([*single, str(base), *common, "--out", str(out_s)], args.threads)
            single_file = out_s / "best.cnnz"
        for name, path, seconds, out in ((f"compress ({objective})", out_c / spec["file"], seconds_c, out_c),
                                         (f"{spec['single_name']} ({objective})", single_file, seconds_s, out_s)):
            row = {"objective": objective, "path": str(path), "wall_seconds": seconds}
            result = out / "result.json"
            if result.exists():
                r = json.loads(result.read_text())
                row |= {"best": r["best"], "cost": r["cost"], "val_acc": (r["best"] or {}).get("accuracy")}
            rows[name] = row
            if path.exists():
                files[name] = path
    # Test accuracy once per file, and bytes; every file timed side by side.
    ds = load_dataset(str(CIFAR_JPEG))
    for name, row in rows.items():
        path = base if name == "fp32 baseline" else files.get(name)
        if path is None:
            row["missing"] = True
            continue
        model, m = load(path, None)
        tester = Evaluator(Loader(ds.test, 500, mean=m.mean, std=m.std))
        row["test_acc"] = tester.evaluate(model).accuracy
        row["file_bytes"] = path.stat().st_size
        if path.suffix in (".pt", ".cnnz"):
            files[name] = export_onnx(model, root / f"{name.split(' ')[0]}-{row['objective']}.fp32.onnx", shape)
    times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    for name, t in times.items():
        rows[name] |= t
        for b in (1, 256):
            rows[name][f"speedup_b{b}"] = times["fp32 baseline"][f"ort_ms_b{b}"] / t[f"ort_ms_b{b}"]
    for name, row in rows.items():
        print(f"{name:55s} {row.get('file_bytes', 0):>10,} B  test {row.get('test_acc', 0):.2%}  "
              f"b1 {row.get('speedup_b1', 0):.2f}x  b256 {row.get('speedup_b256', 0):.2f}x  "
              f"{row.get('wall_seconds', 0):.0f} s")
    save(f"compress_{args.arch}", {"arch": args.arch, "drop": args.drop, "seed": 0, "data": CIFAR_JPEG.name,
                                   "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
