"""Which cheap trial signal ranks pruned candidates like a longer fine-tune does (issue 16)?

    python benchmarks/recalibration_resnet56.py --long-images 20000 --threads 1   # 13 L1 + 7 sparsity candidates

Candidates: the JPEG-fine-tuned ResNet-56 (`baseline_resnet56.py`) with its blocks' inner widths pruned (the
papers' choice), by L1 norm at ratios 0.1..0.7 and by channel sparsity (dynamic pruning's criterion, measured
on the decision half) at thresholds chosen to remove a similar spread of channels. For each candidate:

- raw: accuracy right after the surgery (what the search and the dynamic trials judged until now);
- recalibrated: after re-estimating BatchNorm statistics on --recalibrate training images, cropped and flipped as
  in training (no gradients; what `prune`, `search` and `dynamic-prune` do since commit f3fd629);
- recalibrated (clean): the same on the same images without augmentation (what they did before);
- short: after a 1-epoch fine-tune on --short-images training images (the dynamic pruning trials' signal);
- long: after --long-epochs on all training images (or --long-images of them), the reference the others
  should rank like.

Accuracies are on the decision half of the JPEG test split ("val"; stratified, seed 0), and the long-fine-tuned
ones also on the other half ("test", once). The output is Spearman's rank correlation of each signal with
"long", and what each signal costs in seconds. Every candidate's fine-tuned numbers are written to
$CNNZIP_RUNS/bench-recalibration/ as they come, so a killed run resumes (recalibration, seconds per candidate, is
redone every run). Writes
results/recalibration_resnet56.json.
"""

import argparse
import json
import time

import numpy as np
import torch

from _common import RUNS, save
from baseline_resnet56 import quantization_setup
from cnnzip.data import Loader
from cnnzip.finetune import Finetuner
from cnnzip.io import atomic_write_text
from cnnzip.measure import count_macs
from cnnzip.prune import ChannelPruning, analyze, apply_plan, plan_channels
from cnnzip.prune.channel_sparsity import channel_sparsity
from cnnzip.prune.dynamic import sparsity_plan
from cnnzip.train import TrainConfig, recalibrate_batchnorm

SIGNALS = ("raw", "recalibrated", "recalibrated (clean)", "short")


def spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratios", default="0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7")
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.75,0.8,0.85,0.9")
    ap.add_argument("--recalibrate", type=int, default=512)
    ap.add_argument("--short-images", type=int, default=5000)
    ap.add_argument("--long-epochs", type=int, default=1)
    ap.add_argument("--long-images", type=int, default=0, help="training images of the long fine-tune (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, tester, _ = quantization_setup("resnet56", 32)
    shape = tuple(meta.input_shape)
    work = RUNS / "bench-recalibration"
    work.mkdir(parents=True, exist_ok=True)
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    recal_images = ds.train.subset(order[:args.recalibrate])
    recal_batches = {augment: [x for x, _ in Loader(recal_images, 128, mean=meta.mean, std=meta.std, augment=augment,
                                                    shuffle=augment, seed=0)] for augment in (True, False)}
    short = Loader(ds.train.subset(order[:args.short_images]), 128, shuffle=True, augment=True, mean=meta.mean,
                   std=meta.std, seed=0)
    full = Loader(ds.train.subset(order[:args.long_images]) if args.long_images else ds.train, 128, shuffle=True,
                  augment=True, mean=meta.mean, std=meta.std, seed=0)

    graph = analyze(model, torch.zeros(1, *shape))
    inner = [g.name for g in graph.groups if g.name not in graph.residual_groups()]
    sparsity = channel_sparsity(graph, validator.batches)
    plans = {f"l1 {r}": plan_channels(graph, ChannelPruning(method="l1", ratio=float(r), residual_stream=False))
             for r in args.ratios.split(",")}
    plans.update({f"sparsity {t}": sparsity_plan(sparsity, float(t), 1, inner) for t in args.thresholds.split(",")})

    rows = {}
    base_macs = count_macs(model, shape)
    for name, plan in plans.items():
        recalibrated = {}
        for augment, signal in ((True, "recalibrated"), (False, "recalibrated (clean)")):
            recal = apply_plan(graph, plan).model
            t = time.perf_counter()
            recalibrate_batchnorm(recal, recal_batches[augment], args.recalibrate)
            recalibrated[f"seconds {signal}"] = time.perf_counter() - t
            recalibrated[signal] = validator.evaluate(recal).accuracy
        key = f"s{args.short_images}-l{args.long_epochs}x{args.long_images}.json"
        cache = work / f"{name.replace(' ', '-')}-{key}"
        earlier = work / f"{name.replace(' ', '-')}-r512-{key}"  # before recalibration left the cache key
        found = next((f for f in (cache, earlier) if f.exists()), None)
        if found is not None:
            rows[name] = {**json.loads(found.read_text()), **recalibrated}
            print(name, rows[name], flush=True)
            continue
        row = {"channels removed": sum(len(v) for v in plan.values())}
        pruned = apply_plan(graph, plan).model
        row["MACs reduction"] = 1 - count_macs(pruned, shape) / base_macs
        row["raw"] = validator.evaluate(pruned).accuracy
        for signal, batches, epochs in (("short", short, 1), ("long", full, args.long_epochs)):
            m = apply_plan(graph, plan).model  # each fine-tune starts from the raw surgery, as a trial does
            t = time.perf_counter()
            Finetuner(batches, {signal: epochs}, TrainConfig(lr=0.01), run_dir=work / "checkpoints")(signal, m)
            row[f"seconds {signal}"] = time.perf_counter() - t
            row[signal] = validator.evaluate(m.eval()).accuracy
            if signal == "long":
                row["long, test"] = tester.evaluate(m).accuracy
        atomic_write_text(cache, json.dumps(row))
        rows[name] = {**row, **recalibrated}
        print(name, row, flush=True)

    long = [r["long"] for r in rows.values()]
    correlation = {s: spearman([r[s] for r in rows.values()], long) for s in SIGNALS}
    cost = {s: float(np.mean([r[f"seconds {s}"] for r in rows.values()])) for s in SIGNALS[1:] + ("long",)}
    lines = ["| candidate | MACs cut | raw | recalibrated | recalibrated (clean) | short | long (val) | long (test) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["MACs reduction"]):
        lines.append(f"| {name} | {r['MACs reduction']:.1%} | "
                     + " | ".join(f"{r[s]:.2%}" for s in SIGNALS + ("long", "long, test")) + " |")
    lines.append("| Spearman vs long | | " + " | ".join(f"{correlation[s]:.2f}" for s in SIGNALS) + " | | |")
    lines.append("| seconds per candidate | | 0 | " + " | ".join(f"{cost[s]:.1f}" for s in SIGNALS[1:])
                 + f" | {cost['long']:.0f} | |")
    print("\n".join(lines))
    save("recalibration_resnet56", {"args": vars(args), "rows": rows, "spearman": correlation, "seconds": cost,
                                    "data": "CIFAR-10 JPEG; val/test = stratified halves of the test split (seed 0); "
                                    "recalibration and fine-tunes on training images (seed 0)",
                                    "table": "\n".join(lines)})


if __name__ == "__main__":
    main()
