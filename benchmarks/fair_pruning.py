"""Dynamic pruning against the simplest alternatives at the same FLOPs and the same training (issue 16, part 5).

    python benchmarks/fair_pruning.py --report benchmarks/results/dynamic_fusion_resnet56.json --threads 1
    python benchmarks/fair_pruning.py --report ... --methods tp --threads 1   # one method per process, side by side

Reads a dynamic-pruning report (`dynamic_fusion.py --stage report`): the pruned model's MACs, its val and test
accuracy, and every fine-tune it had. Its training budget counts every trial's epochs over its images and every
recovery's (a trial that removed nothing had no fine-tune), in training images seen. Each alternative starts
from the same JPEG-fine-tuned model (`baseline_resnet56.py --arch ARCH`), removes the blocks' inner channels in
one shot until its MACs are at most those of the dynamic result (cnnzip's one ratio for all blocks moves in
discrete steps and lands up to a point of FLOPs beyond it; Torch-Pruning within 0.5%), and is fine-tuned on
exactly as many training images: ceil(budget / 50,000) epochs over a fixed random subset (seed 0) of budget / epochs images,
with the dynamic run's learning rate (cosine, batch 128, flips and crops), and its distillation if it had one.

- `l1`, `fpgm`: cnnzip's `prune_to_macs` (one width ratio for every block, bisected on MACs), then BatchNorm
  recalibration on 2,048 augmented training images, as `cnnzip prune` does;
- `tp`: Torch-Pruning used directly, its MetaPruner with L1 group importance on the same layers, the ratio
  bisected on MACs, no recalibration.

Splits as in `dynamic_fusion.py`: val and test are the stratified halves of the JPEG test split (seed 0); val
is reported for reference only (nothing is chosen on it here). Fine-tunes checkpoint every epoch under
$CNNZIP_RUNS/bench-fair/ and finished methods are kept there, so a killed run resumes. Writes
results/fair_pruning_<arch>_<dynamic run>.json with every method measured so far.
"""

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from _common import CIFAR_JPEG, RUNS, save
from baseline_resnet56 import ensure, model_file
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.distill import Distillation
from cnnzip.finetune import Finetuner
from cnnzip.io import atomic_write_text, load_model
from cnnzip.measure import Evaluator, count_macs, count_parameters
from cnnzip.prune import ChannelPruning, prune_to_macs
from cnnzip.train import TrainConfig, recalibrate_batchnorm

SHAPE = (3, 32, 32)
METHODS = ("l1", "fpgm", "tp")


def training_images(report: dict) -> int:
    """Training images the dynamic run's fine-tunes saw: every trial that removed channels, every recovery."""
    a = report["args"]
    trials = sum(1 for t in report["dynamic"]["trials"] if t["model"])
    return trials * a["trial_images"] * a["epochs"] + len(report["dynamic"]["recovered"]) * a["recover_images"] \
        * a["recover_epochs"]


def torch_pruning_to_macs(model: torch.nn.Module, macs: int, tolerance: float = 0.005) -> torch.nn.Module:
    """Torch-Pruning's MetaPruner (L1 group importance) on the blocks' conv1 outputs, its ratio bisected until
    the MACs are within `tolerance` of `macs` (relative to the model's)."""
    import torch_pruning as tp

    base = count_macs(model, SHAPE)

    def prune(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model)
        ignored = [x for n, x in m.named_modules()
                   if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear)) and not n.endswith(".conv1")]
        tp.pruner.MetaPruner(m, torch.zeros(1, *SHAPE), importance=tp.importance.MagnitudeImportance(p=1),
                             pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False).step()
        return m

    lo, hi = 0.0, 0.99
    for _ in range(20):
        mid = (lo + hi) / 2
        m = prune(mid)
        got = count_macs(m, SHAPE)
        if abs(got - macs) <= tolerance * base:
            return m
        lo, hi = (mid, hi) if got > macs else (lo, mid)
    raise RuntimeError(f"Torch-Pruning found no ratio within {tolerance:.1%} of {macs:,} MACs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", type=Path, required=True, help="a dynamic_fusion.py report (results/...json)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--recalibrate", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    if set(methods) - set(METHODS):
        ap.error(f"--methods: choose from {', '.join(METHODS)}")
    report = json.loads(args.report.read_text())
    arch, dyn, a = report.get("arch", "resnet56"), report["dynamic"], report["args"]
    budget = training_images(report)
    if budget <= 0:
        raise SystemExit(f"{args.report} records no fine-tuning: nothing to match")
    epochs = math.ceil(budget / 50000)
    per_epoch = round(budget / epochs)
    ensure(arch=arch)
    model, meta = load_model(model_file(arch))
    ds = load_image_folder(CIFAR_JPEG)
    test, val = train_val_split(ds.test, 5000, seed=0)  # as dynamic_fusion.py
    validator = Evaluator(Loader(val, 500, mean=meta.mean, std=meta.std))
    tester = Evaluator(Loader(test, 500, mean=meta.mean, std=meta.std))
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    images = ds.train.subset(order[:per_epoch])
    batches = Loader(images, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    recal = [x for x, _ in Loader(ds.train.subset(order[:args.recalibrate]), 128, shuffle=True, augment=True,
                                  mean=meta.mean, std=meta.std, seed=0)]
    base_macs = count_macs(model, SHAPE)
    goal = dyn["macs"]
    work = RUNS / "bench-fair" / f"{arch}-{Path(report['run']).name}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"{arch}: dynamic pruning kept {goal:,} of {base_macs:,} MACs after {budget:,} training images; each "
          f"alternative gets {epochs} epochs x {per_epoch:,} images", flush=True)

    rows = {}
    for method in METHODS:
        done = work / f"{method}.json"
        if done.exists():
            rows[method] = json.loads(done.read_text())
            used = rows[method].get("recalibrate", 0 if method == "tp" else 2048)
            if method != "tp" and used != args.recalibrate:
                raise SystemExit(f"{done} was measured with --recalibrate {used}; rerun with that, or delete it")
            continue
        if method not in methods:
            continue
        started = time.perf_counter()
        if method == "tp":
            pruned = torch_pruning_to_macs(model, goal)
        else:
            pruned = prune_to_macs(model, ChannelPruning(method=method, residual_stream=False),
                                   torch.zeros(1, *SHAPE), 1 - goal / base_macs).model
        row = {"macs": count_macs(pruned, SHAPE), "params": count_parameters(pruned),
               "raw val": validator.evaluate(pruned).accuracy, "recalibrate": 0 if method == "tp" else args.recalibrate}
        if method != "tp":
            recalibrate_batchnorm(pruned, recal, args.recalibrate)
            row["recalibrated val"] = validator.evaluate(pruned).accuracy
        hooks = [Distillation(model)] if a.get("distill") else []
        Finetuner(batches, {"fair": epochs}, TrainConfig(lr=a["lr"], seed=0), hooks=hooks, run_dir=work / "checkpoints",
                  fingerprint={"images": per_epoch})("fair", pruned, tag=method)
        pruned.eval()
        row.update({"val": validator.evaluate(pruned).accuracy, "test": tester.evaluate(pruned).accuracy,
                    "epochs": epochs, "images per epoch": per_epoch,
                    "minutes": (time.perf_counter() - started) / 60})
        atomic_write_text(done, json.dumps(row))
        rows[method] = row
        print(method, row, flush=True)

    names = {"l1": "cnnzip L1, one shot", "fpgm": "cnnzip FPGM, one shot", "tp": "Torch-Pruning L1, one shot"}
    lines = ["| method | MACs | FLOPs removed | training images | val | test | test vs dynamic |", "|---|---|---|---|---|---|---|",
             f"| unpruned | {base_macs / 1e6:.1f}M | - | - | {report['baseline']['val']:.2%} | "
             f"{report['baseline']['test']:.2%} | |",
             f"| dynamic pruning (`{report['run']}`) | {goal / 1e6:.1f}M | {1 - goal / base_macs:.1%} | {budget:,} | "
             f"{dyn['val']:.2%} | {dyn['test']:.2%} | |"]
    for method, r in rows.items():
        lines.append(f"| {names[method]} | {r['macs'] / 1e6:.1f}M | {1 - r['macs'] / base_macs:.1%} | "
                     f"{r['epochs'] * r['images per epoch']:,} | {r['val']:.2%} | {r['test']:.2%} | "
                     f"{100 * (r['test'] - dyn['test']):+.2f} |")
    print("\n".join(lines))
    save(f"fair_pruning_{arch}_{Path(report['run']).name}", {
        "args": {k: str(v) for k, v in vars(args).items()}, "dynamic run": report["run"], "budget images": budget,
        "rows": rows, "table": "\n".join(lines),
        "data": "CIFAR-10 JPEG; val/test = stratified halves of the test split (seed 0); fine-tunes on a fixed "
                "subset of the training images (seed 0)"})


if __name__ == "__main__":
    main()
