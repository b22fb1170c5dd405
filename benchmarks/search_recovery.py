"""Recovery-aware search on ResNet-56 (issue 16): the same bisect search judging raw, recalibrated and recovered
trials, side by side.

    python benchmarks/search_recovery.py --drops 0.01 --orders dc,ns-dc --recover-images 2000 --threads 1
    python benchmarks/search_recovery.py --drops 0.01,0.03,0.08 --orders dc,ns-dc,dc-ns --modes raw,recalibrated \
        --threads 1 --out-name search_recalibrated_resnet56

Subject, data and grid as `search_minimal_size.py --model resnet56 --step 0.1`: the JPEG-fine-tuned ResNet-56
(`baseline_resnet56.py`), decisions on 2,000 of the 5,000 held-out training images (seed 0; optimistic, as the
shared weights were trained on them), L1 channel pruning of the blocks' inner widths, deep compression with 8-bit
conv and 5-bit linear indices, bisect with its early exit. Each trial is judged on one of three candidates:

- raw: right after the compression steps (the search as issue 5 built it);
- recalibrated: BatchNorm statistics re-estimated on 512 training images, augmented as in training
  (`Pipeline.recalibrate`);
- recovered: one pass over --recover-images training images (lr 0.01, batch 128, augmented, distilled from the
  starting model at T = 4, alpha = 0.9; pruned weights held at zero), then recalibrated
  (`SearchConfig.recovery_images`). Its winner's file is that recovered candidate.

Training images are those outside the 5,000 held out (seed 0). Each winner's file is evaluated once on the JPEG
test split. The searches resume after a kill (run directories under $CNNZIP_RUNS/bench-search-recovery/).
Writes results/search_recovery_resnet56.json.
"""

import argparse
import json
import shutil
import time

import torch

from _common import CIFAR_JPEG, RUNS, save
from baseline_resnet56 import MODEL, ensure
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.distill import Distillation
from cnnzip.finetune import Finetuner
from cnnzip.io import load, load_model
from cnnzip.measure import Evaluator
from cnnzip.search import Pipeline, SearchConfig, search
from cnnzip.train import TrainConfig

MODES = ("raw", "recalibrated", "recovered")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drops", default="0.01")
    ap.add_argument("--orders", default="dc,ns-dc")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--recover-images", type=int, default=2000)
    ap.add_argument("--recalibrate", type=int, default=512)
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-name", default="search_recovery_resnet56", help="results/<name>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure()
    model, meta = load_model(MODEL)
    ds = load_image_folder(CIFAR_JPEG)
    train, val = train_val_split(ds.train, val_size=5000, seed=0)
    evaluator = Evaluator(Loader(val.take(args.val_images), 500, mean=meta.mean, std=meta.std))
    tester = Evaluator(Loader(ds.test, 500, mean=meta.mean, std=meta.std))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    # Augmented as in training (benchmarks/recalibration_images.py: clean images move the statistics).
    recalibration = [x for x, _ in Loader(train.subset(order[:args.recalibrate]), 64, shuffle=True, augment=True,
                                          mean=meta.mean, std=meta.std, seed=0)]
    recover_batches = Loader(train.subset(order[:args.recover_images]), 128, shuffle=True, augment=True,
                             mean=meta.mean, std=meta.std, seed=0)
    root = RUNS / "bench-search-recovery" / f"v{args.val_images}-s{args.step}"

    results: dict = {}
    for drop in (float(d) for d in args.drops.split(",")):
        for pipeline_order in args.orders.split(","):
            for mode in args.modes.split(","):
                name = f"{pipeline_order} {mode} -{drop * 100:.0f} pt"
                run = root / f"{pipeline_order}-{mode}-{drop}-r{args.recover_images}"
                pipeline = Pipeline(order=pipeline_order, structured="l1", residual_stream=False,
                                    recalibrate=args.recalibrate if mode != "raw" else 0)
                recovered = mode == "recovered"
                config = SearchConfig(pipeline=pipeline, strategy="bisect", drop=drop, step=args.step,
                                      recovery_images=args.recover_images if recovered else 0,
                                      recovery_distill=recovered)
                recovery = None
                if recovered:
                    recovery = Finetuner(recover_batches, {"final": 1}, TrainConfig(lr=0.01, seed=0),
                                         hooks=[Distillation(model, temperature=4.0, alpha=0.9)],
                                         run_dir=run / "recovery",
                                         fingerprint={"images": args.recover_images, "distill": [4.0, 0.9]})
                started = time.perf_counter()
                r = search(model, evaluator, meta, config, run,
                           recalibration=recalibration if mode != "raw" else None, recovery=recovery)
                shutil.rmtree(run / "recovery", ignore_errors=True)
                row = {"target": r.target, "baseline": r.baseline_accuracy, "cost": r.cost,
                       "wall_seconds_this_call": time.perf_counter() - started,
                       "size": r.best.size if r.best else None, "ratios": list(r.best.ratios) if r.best else None,
                       "val": r.best.accuracy if r.best else None, "val_complete": r.best.complete if r.best else None}
                if r.best:
                    row["test"] = tester.evaluate(load(r.path)[0]).accuracy
                    row["file_val"] = r.final_accuracy
                results[name] = row
                print(name, json.dumps(row), flush=True)

    lines = ["| target | pipeline | trials | winner (ratios) | file kB | val (trial) | test (once) | checks | "
             "size builds | seconds | of which recovery |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        pipeline_order, mode, *target = name.split(" ")
        at = ", ".join(f"{a} {v:.1f}" for a, v in zip(pipeline_order.split("-"), row["ratios"] or [], strict=False))
        lines.append(f"| {' '.join(target)} | {pipeline_order} | {mode} | {at or 'none'} | "
                     f"{(row['size'] or 0) / 1000:,.1f} | {row['file_val'] or 0:.2%} | {row.get('test', 0):.2%} | "
                     f"{row['cost']['checks']:.0f} | {row['cost']['size_builds']:.0f} | "
                     f"{row['cost']['seconds']:.0f} | {row['cost'].get('recovery_seconds', 0):.0f} |")
    print("\n".join(lines))
    save(args.out_name, {"args": vars(args), "results": results, "table": "\n".join(lines),
                                      "data": f"validation: {args.val_images} of the 5,000 held-out training images "
                                              "(seed 0); recalibration and recovery on the other training images; "
                                              "test: the 10,000 JPEG test images, once per winner"})


if __name__ == "__main__":
    main()
