"""How well the layer-wise latency table predicts a pruned model's ONNX Runtime time (issue 21, part 2).

    python benchmarks/latency_model.py [--arch resnet56] [--threads 2] [--models 12]

The JPEG-fine-tuned model (`baseline_resnet56.py --arch ARCH`; only its architecture matters here) gets a latency
table at batch 1 and 256 (`cnnzip.deploy.build_latency_table`: every conv/linear configuration alone at 1/4, 1/2,
3/4 and all of its input and output widths, 3 rounds). Then `--models` pruned copies: L1 on the blocks' inner
channels at one ratio for all (0.1 to 0.6), and as many with a random ratio per layer (seed 0), each with widths as
L1 leaves them. Their measured time (all files side by side, 5 rotating rounds) against the prediction: the error
in percent of the measured time, and the rank correlation. Run with nothing else on the machine. Writes
results/latency_model_<arch>.json.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
from pathlib import Path

import torch

from _common import RUNS, save
from baseline_resnet56 import ensure, model_file
from cnnzip.deploy import build_latency_table, compare_onnx_latency, export_onnx
from cnnzip.io import load
from cnnzip.measure import count_macs
from cnnzip.prune import ChannelPruning, analyze, apply_plan, plan_channels
from recalibration_resnet56 import spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["resnet20", "resnet56"], default="resnet56")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure(arch=args.arch)
    model, meta = load(model_file(args.arch))
    shape = tuple(meta.input_shape)
    example = torch.zeros(1, *shape)
    tables = {b: build_latency_table(model, shape, b, fractions=(0.25, 0.5, 0.75, 1.0), threads=args.threads,
                                     rounds=3, repeats=20 if b == 1 else 3, cache_dir=RUNS / "latency-tables")
              for b in (1, 256)}
    graph = analyze(model, example)
    inner = [g for g in graph.groups if g.name not in graph.residual_groups()]
    rng = random.Random(0)
    variants = {}
    half = args.models // 2
    for k in range(half):
        ratio = 0.1 + 0.5 * k / max(half - 1, 1)
        variants[f"uniform {ratio:.2f}"] = ChannelPruning(method="l1", ratio=ratio, scope="layer",
                                                          residual_stream=False)
    for k in range(args.models - half):
        widths = {re.escape(g.name): max(1, int(g.size * (1 - rng.uniform(0.0, 0.7)))) for g in inner}
        variants[f"random {k}"] = ChannelPruning(method="l1", widths=widths, residual_stream=False)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"unpruned": export_onnx(model, Path(tmp) / "base.onnx", shape)}
        for name, config in variants.items():
            pruned = apply_plan(graph, plan_channels(graph, config)).model
            files[name] = export_onnx(pruned, Path(tmp) / f"{len(files)}.onnx", shape)
            rows[name] = {"macs": count_macs(pruned, shape),
                          **{f"predicted_ms_b{b}": t.predict(pruned) for b, t in tables.items()}}
        rows["unpruned"] = {"macs": count_macs(model, shape),
                            **{f"predicted_ms_b{b}": t.predict(model) for b, t in tables.items()}}
        measured = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    summary = {}
    for b in (1, 256):
        errors = []
        for name, row in rows.items():
            row[f"measured_ms_b{b}"] = measured[name][f"ort_ms_b{b}"]
            row[f"error_pct_b{b}"] = 100 * (row[f"predicted_ms_b{b}"] / row[f"measured_ms_b{b}"] - 1)
            errors.append(abs(row[f"error_pct_b{b}"]))
        names = list(rows)
        summary[f"b{b}"] = {"mean_abs_error_pct": statistics.mean(errors), "max_abs_error_pct": max(errors),
                            "spearman": spearman([rows[n][f"predicted_ms_b{b}"] for n in names],
                                                 [rows[n][f"measured_ms_b{b}"] for n in names]),
                            "table_base_ms": tables[b].base_ms}
    for name, row in rows.items():
        print(f"{name:14s} MACs {row['macs'] / 1e6:6.1f}M  b1 {row['predicted_ms_b1']:.2f}/{row['measured_ms_b1']:.2f} ms"
              f"  b256 {row['predicted_ms_b256']:.1f}/{row['measured_ms_b256']:.1f} ms")
    print(summary)
    save(f"latency_model_{args.arch}", {"arch": args.arch, "threads": args.threads, "rounds": args.rounds,
                                        "fractions": [0.25, 0.5, 0.75, 1.0], "seed": 0, "rows": rows,
                                        "summary": summary})


if __name__ == "__main__":
    main()
