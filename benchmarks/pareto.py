"""Accuracy against file size and against ONNX Runtime latency for every compressed ResNet-56 the benchmarks left on
this machine, the Pareto front marked (issue 18).

    python benchmarks/pareto.py --threads 1 --rounds 3

Collects the final models other benchmarks wrote under $CNNZIP_RUNS (each source is skipped, and named in the
output, when its benchmark has not run here): the unpruned JPEG-fine-tuned ResNet-56 (`baseline_resnet56.py`), the
latency-pruned variants (`latency_pruning.py --arch resnet56`), the low-rank models and their L1 twin
(`lowrank_resnet56.py`, with and without `--round-to 16`), the dynamically pruned models (`dynamic_fusion.py`), the
PCA / FPGM variants (`pca_fpgm.py --arch resnet56`), the searches' smallest files (`search_recovery.py`,
`compress_resnet56.py`), the distilled students and lightweight baselines (`students.py`), and deep compression's
`.cnnz` file (`deep_resnet56.py`). A `.cnnz` file's size is its own bytes; it decodes to a dense model that runs at
the unpruned model's speed. Every model is measured here, the same way, in one run: exported to ONNX (fp32) and
quantized to int8 as `cnnzip quantize` does (QDQ, per-channel weights, 512 training images to calibrate); its size
is the bytes of each ONNX file (what is deployed); accuracy is on the 9,000 test images `latency_pruning.py` tests
on (fp32 in PyTorch, int8 in ONNX Runtime; the other 1,000 ranked that benchmark's candidates); latency is ONNX
Runtime's on 1 thread at batch 1 and 256, all files side by side in rotating rounds. A point is on the Pareto front
when no other file is both at least as small (or fast) and at least as accurate, and better in one. Writes
results/pareto_resnet56.json and results/pareto_resnet56.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, RUNS, require_shared, save
from baseline_resnet56 import ensure, model_file
from cnnzip.data import Loader
from cnnzip.io import load_model
from cnnzip.measure import Evaluator, count_macs, count_parameters

LATENCY = RUNS / "bench-latency-resnet56-r0.3-b256"
SOURCES = {  # label prefix -> (globs under RUNS, the benchmark that writes them)
    "latency": (["bench-latency-resnet56-r0.3-b256/*/finetuned.pt"], "latency_pruning.py --arch resnet56"),
    "low-rank": (["bench-lowrank/m0.45-e0.9-ep1-n0/*.pt"], "lowrank_resnet56.py --epochs 1"),
    "low-rank r16": (["bench-lowrank/m0.45-e0.9-ep1-n0-r16/*.pt"], "lowrank_resnet56.py --epochs 1 --round-to 16"),
    "dynamic": (["bench-dynamic-resnet56/*/pruned.pt", "bench-dynamic-resnet56/*/*-ft[0-9]*.pt"],
                "dynamic_fusion.py --arch resnet56"),
    "PCA": (["bench-pca/resnet56-*/*/pruned.pt", "bench-pca/resnet56-*/pca/pca.pt",
             "bench-pca/resnet56-*/inherit/pca.pt"], "pca_fpgm.py --arch resnet56"),
    "search": (["bench-search-recovery/*/*/best.cnnz"], "search_recovery.py"),
    "compress": (["bench-compress-resnet56/*/best.cnnz"], "compress_resnet56.py --arch resnet56"),
    "deep compression": (["bench-deep-resnet56/resnet56.cnnz"], "deep_resnet56.py --sparsity 0.7 --epochs 2"),
    "student": (["bench-students/*/model.pt"], "students.py"),
}
GENERIC = ("finetuned.pt", "model.pt", "pruned.pt", "pca.pt", "best.cnnz")  # named by their folder(s)


def collect() -> tuple[dict[str, Path], list[str]]:
    """The model files, each once: a benchmark may reuse another's file as a copy (lowrank's L1 twin)."""
    import hashlib

    found, missing = {"unpruned": model_file("resnet56")}, []
    seen = {hashlib.sha256(found["unpruned"].read_bytes()).hexdigest()}
    for prefix, (patterns, command) in SOURCES.items():
        paths = sorted(p for pattern in patterns for p in RUNS.glob(pattern))
        if not paths:
            missing.append(f"{prefix} (run `python benchmarks/{command}`)")
        for p in paths:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            depth = patterns[0].count("/") - 1  # the folders below the source's own one
            parts = p.relative_to(RUNS).parts[1:]
            name = "/".join(parts[:-1][-depth:]) if p.name in GENERIC and depth else p.stem
            found[f"{prefix}: {name}"] = p
    return found, missing


def front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point dominates: cost no higher, accuracy no lower."""
    return [i for i, (c, a) in enumerate(points)
            if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in points)]


def chart(rows: dict[str, dict], path: Path, floor: float) -> None:
    """Both fronts, drawn on the points at or above `floor` percent (the rest, in the table, would squash the
    axis); the front is computed over every point."""
    from cnnzip.report.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, key, label in ((axes[0], "kB", "ONNX file size (kB, log scale)"),
                           (axes[1], "ms_b256", "ONNX Runtime latency at batch 256, 1 thread (ms, log scale)")):
        points, names = [], []
        for name, r in rows.items():
            for precision in ("fp32", "int8"):
                points.append((r[f"{precision} {key}"], 100 * r[f"test {precision}"]))
                names.append(f"{name} ({precision})")
        best = set(front(points))
        for i, ((x, y), n) in enumerate(zip(points, names, strict=True)):
            if y < floor:
                continue
            marker = "o" if n.endswith("(fp32)") else "^"
            ax.scatter([x], [y], marker=marker, color="tab:red" if i in best else "tab:gray", zorder=3)
            if i in best:
                ax.annotate(n, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
        line = sorted(points[i] for i in best if points[i][1] >= floor)
        ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="tab:red", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%), 9,000 CIFAR-10 test images")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"accuracy against size (o fp32, ^ int8; red: Pareto front; models below {floor:g}% in the "
                      "table only)", fontsize=9)
    axes[1].set_title("accuracy against latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from cnnzip.deploy import compare_onnx_latency, export_onnx, onnx_session
    from cnnzip.quantize.ptq import PostTraining, quantize_onnx
    from latency_pruning import setup

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chart-floor", type=float, default=70, help="draw models at or above this test accuracy (%%)")
    args = ap.parse_args()
    require_shared()
    torch.set_num_threads(args.threads)
    ensure()
    _, meta, _, _, test, recal = setup("resnet56")
    found, missing = collect()
    for m in missing:
        print(f"not on this machine: {m}")
    shape = tuple(meta.input_shape)
    tester = Evaluator(Loader(test, 500, mean=meta.mean, std=meta.std))
    calibration = [x.numpy() for x in recal(512)]
    work = RUNS / "bench-pareto"
    work.mkdir(parents=True, exist_ok=True)
    rows, files = {}, {}
    for i, (name, path) in enumerate(found.items()):
        if path.suffix == ".cnnz":
            from cnnzip.deep.fileformat import load_compressed
            model = load_compressed(path)[0].eval()
        else:
            model = load_model(path)[0].eval()
        fp32 = export_onnx(model, work / f"m{i}.fp32.onnx", shape)
        int8 = work / f"m{i}.int8.onnx"
        quantize_onnx(fp32, int8, calibration, PostTraining(), workdir=work / f"m{i}.work")
        files[f"{name} fp32"], files[f"{name} int8"] = fp32, int8
        session = onnx_session(int8, threads=args.threads)
        correct = total = 0
        for x, y in Loader(test, 500, mean=meta.mean, std=meta.std):
            out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            correct += int((np.argmax(out, 1) == y.numpy()).sum())
            total += len(y)
        rows[name] = {"file": str(path), "macs": count_macs(model, shape), "params": count_parameters(model),
                      "test fp32": tester.evaluate(model).accuracy, "test int8": correct / total,
                      "fp32 kB": (path if path.suffix == ".cnnz" else Path(fp32)).stat().st_size / 1000,
                      "int8 kB": int8.stat().st_size / 1000}
        print(name, rows[name], flush=True)
    started = time.perf_counter()
    times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    for name, r in rows.items():
        for precision in ("fp32", "int8"):
            for b in (1, 256):
                r[f"{precision} ms_b{b}"] = times[f"{name} {precision}"][f"ort_ms_b{b}"]
    chart(rows, RESULTS / "pareto_resnet56.png", args.chart_floor)
    points = [(r[f"{p} kB"], r[f"test {p}"]) for r in rows.values() for p in ("fp32", "int8")]
    labels = [f"{n} {p}" for n in rows for p in ("fp32", "int8")]
    by_size = [labels[i] for i in front(points)]
    points = [(r[f"{p} ms_b256"], r[f"test {p}"]) for r in rows.values() for p in ("fp32", "int8")]
    by_time = [labels[i] for i in front(points)]
    lines = ["| model | MACs | test fp32 | test int8 | fp32 kB | int8 kB | fp32 ms b1 | int8 ms b1 | fp32 ms b256 | "
             "int8 ms b256 |", "|---" * 10 + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['macs'] / 1e6:.1f}M | {r['test fp32']:.2%} | {r['test int8']:.2%} | "
                     f"{r['fp32 kB']:.0f} | {r['int8 kB']:.0f} | {r['fp32 ms_b1']:.2f} | {r['int8 ms_b1']:.2f} | "
                     f"{r['fp32 ms_b256']:.1f} | {r['int8 ms_b256']:.1f} |")
    print("\n".join(lines))
    print("Pareto front, size:", ", ".join(by_size))
    print("Pareto front, latency at batch 256:", ", ".join(by_time))
    save("pareto_resnet56", {"args": vars(args), "rows": rows, "table": "\n".join(lines), "missing": missing,
                             "front_size": by_size, "front_latency_b256": by_time,
                             "timing_seconds": time.perf_counter() - started,
                             "data": "CIFAR-10 JPEG; 9,000 test images (latency_pruning.py's test part, seed 0); "
                                     "512 augmented training images calibrate int8"})


if __name__ == "__main__":
    main()
