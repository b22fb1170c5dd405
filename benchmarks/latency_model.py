"""How well the layer-wise latency table predicts a pruned model's ONNX Runtime time (issue 21, part 2).

    python benchmarks/latency_model.py [--arch resnet56] [--threads 2] [--models 12] [--precisions fp32,int8]

The JPEG-fine-tuned model (`baseline_resnet56.py --arch ARCH`; only its architecture matters here) gets a latency
table at batch 1 and 256 (`cnnzip.deploy.build_latency_table`: every conv/linear configuration alone at every eighth of
its input and output widths, 3 rounds). Then `--models` pruned copies: L1 on the blocks' inner
channels at one ratio for all (0.1 to 0.6), and as many with a random ratio per layer (seed 0), each with widths as
L1 leaves them, every width a multiple of `--round-to` (8, as latency-aware pruning uses; the table's grid too).
Their measured time (all files side by side, 5 rotating rounds) against the prediction: the error
in percent of the measured time, and the rank correlation. With int8 among `--precisions`, the same for the int8
QDQ files (`build_latency_table(precision="int8")` against every model quantized as `cnnzip quantize` does;
random calibration inputs: ranges change results, not time). Run with nothing else on the machine. Writes
results/latency_model_<arch>.json.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RUNS, save
from baseline_resnet56 import ensure, model_file
from cnnzip.deploy import build_latency_table, compare_onnx_latency, export_onnx
from cnnzip.deploy.latency_table import EIGHTHS
from cnnzip.io import load
from cnnzip.measure import count_macs
from cnnzip.prune import ChannelPruning, analyze, apply_plan, plan_channels
from cnnzip.quantize.ptq import PostTraining, quantize_onnx
from recalibration_resnet56 import spearman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["resnet20", "resnet56"], default="resnet56")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--round-to", type=int, default=8, help="every width a multiple of this, in the table and the "
                    "pruned models (1: any width; the table then cannot see odd widths' slower kernels)")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    torch.set_num_threads(args.threads)
    ensure(arch=args.arch)
    model, meta = load(model_file(args.arch))
    shape = tuple(meta.input_shape)
    example = torch.zeros(1, *shape)
    tables = {(p, b): build_latency_table(model, shape, b, threads=args.threads,
                                          round_to=args.round_to, rounds=3, repeats=20 if b == 1 else 3,
                                          cache_dir=RUNS / "latency-tables",
                                          precision=p)
              for p in precisions for b in (1, 256)}
    graph = analyze(model, example)
    inner = [g for g in graph.groups if g.name not in graph.residual_groups()]
    rng = random.Random(0)
    variants = {}
    half = args.models // 2
    for k in range(half):
        ratio = 0.1 + 0.5 * k / max(half - 1, 1)
        variants[f"uniform {ratio:.2f}"] = ChannelPruning(method="l1", ratio=ratio, scope="layer",
                                                          residual_stream=False, round_to=args.round_to)
    for k in range(args.models - half):
        widths = {re.escape(g.name): max(1, int(g.size * (1 - rng.uniform(0.0, 0.7)))) for g in inner}
        variants[f"random {k}"] = ChannelPruning(method="l1", widths=widths, residual_stream=False,
                                                 round_to=args.round_to)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"unpruned": model}
        for name, config in variants.items():
            models[name] = apply_plan(graph, plan_channels(graph, config)).model
        files = {}
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal((8, *shape)).astype(np.float32) for _ in range(2)]
        for name, m in models.items():
            rows[name] = {"macs": count_macs(m, shape),
                          **{f"predicted_{p}_ms_b{b}": t.predict(m) for (p, b), t in tables.items()}}
            fp32 = export_onnx(m, Path(tmp) / f"{len(files)}.onnx", shape)
            for p in precisions:
                if p == "fp32":
                    files[(p, name)] = fp32
                else:
                    files[(p, name)] = quantize_onnx(fp32, fp32.with_suffix(".int8.onnx"), calibration,
                                                     PostTraining(images=16), workdir=fp32.with_suffix(".w")).path
        measured = compare_onnx_latency({f"{p} {n}": f for (p, n), f in files.items()}, shape, (1, 256),
                                        rounds=args.rounds)
    summary = {}
    for p in precisions:
        for b in (1, 256):
            errors = []
            for name, row in rows.items():
                row[f"measured_{p}_ms_b{b}"] = measured[f"{p} {name}"][f"ort_ms_b{b}"]
                row[f"error_{p}_pct_b{b}"] = 100 * (row[f"predicted_{p}_ms_b{b}"] / row[f"measured_{p}_ms_b{b}"] - 1)
                errors.append(abs(row[f"error_{p}_pct_b{b}"]))
            names = list(rows)
            summary[f"{p} b{b}"] = {"mean_abs_error_pct": statistics.mean(errors), "max_abs_error_pct": max(errors),
                                    "spearman": spearman([rows[n][f"predicted_{p}_ms_b{b}"] for n in names],
                                                         [rows[n][f"measured_{p}_ms_b{b}"] for n in names]),
                                    "table_base_ms": tables[p, b].base_ms}
    for name, row in rows.items():
        print(f"{name:14s} MACs {row['macs'] / 1e6:6.1f}M  " + "  ".join(
            f"{p} b{b} {row[f'predicted_{p}_ms_b{b}']:.2f}/{row[f'measured_{p}_ms_b{b}']:.2f} ms"
            for p in precisions for b in (1, 256)))
    print(summary)
    name = f"latency_model_{args.arch}" + (f"_r{args.round_to}" if args.round_to != 8 else "")
    save(name, {"arch": args.arch, "threads": args.threads, "rounds": args.rounds, "fractions": list(EIGHTHS),
                "seed": 0, "precisions": precisions, "round_to": args.round_to, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
