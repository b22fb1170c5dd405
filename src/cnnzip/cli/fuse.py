"""`cnnzip fuse`: the paper's layer fusion, i.e. removal of thin residual blocks with distillation."""

from __future__ import annotations

import json

from ..errors import ConfigError
from ..io import save_model
from ..prune.block_removal import BlockRemoval, fresh_copy, remove_thin_blocks
from ..report import Section, size_accuracy_plot
from ..train import TrainConfig, fit
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_finetune_args,
    add_model_args,
    nonnegative,
    prepare,
    run_fingerprint,
    some,
    start_run,
    write_run_report,
)

NAME = "fuse"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "layer fusion: remove thin residual blocks with distillation"
DESCRIPTION = ("Layer fusion (Electronics 2023, 12, 1208): repeatedly remove the thinnest residual block with an "
               "identity shortcut, fine-tune the block before it (the carrier) with knowledge distillation from "
               "MODEL, and fine-tune the whole network every --every removals; stop when validation accuracy falls "
               "more than --max-drop below MODEL's. Keeps OUT/fused-<k>.pt after each long fine-tune and prints "
               "depth, fused layers, MACs and accuracy. Rerun the same command to resume.")
EPILOG = """examples:
  cnnzip fuse runs/r56-dynamic/pruned.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --short-epochs 1 --long-epochs 2 --every 4 --out runs/r56-fuse
  cnnzip fuse runs/r56-dynamic/pruned.pt --data ... --loss ce --out runs/r56-fuse-ce     # ablation
"""


def add_arguments(s) -> None:
    add_model_args(s, help="the (pruned) model: also the teacher")
    add_data_args(s)
    s.add_argument("--short-epochs", type=int, default=1, help="epochs of the carrier's fine-tune per removal")
    s.add_argument("--short-images", type=int, default=5000, help="training images of each short fine-tune's "
                   "epoch (a fixed random subset, sized for a CPU); 0: all of them")
    s.add_argument("--long-epochs", type=int, default=2, help="epochs of the whole network's fine-tune")
    s.add_argument("--every", type=int, default=4, help="long fine-tune after this many removals")
    s.add_argument("--max-drop", type=float, default=0.03)
    s.add_argument("--loss", choices=["kd", "ce"], default="kd", help="kd: distillation from MODEL (T, alpha); "
                   "ce: plain cross-entropy (ablation)")
    add_distill_args(s)
    s.add_argument("--no-short", action="store_true", help="skip the short fine-tunes (ablation)")
    s.add_argument("--max-width", type=int, default=None, help="only blocks at most this many channels wide")
    s.add_argument("--max-removals", type=int, default=None)
    s.add_argument("--recalibrate", type=int, default=0, metavar="IMAGES", help="re-estimate BatchNorm "
                   "statistics on this many training images (augmented as in training) after each removal; most "
                   "useful with --no-short, where nothing else updates them (default 0: off)")
    s.add_argument("--scratch-epochs", type=int, default=0, help="ablation: also train the final architecture "
                   "from new weights for this many epochs and report its accuracy")
    add_finetune_args(s, "runs/fuse")


def run(args) -> int:
    nonnegative(args, "short_epochs", "long_epochs", "scratch_epochs", "short_images", "recalibrate")
    if args.every < 1:
        raise ConfigError(f"--every must be 1 or more (a long fine-tune after that many removals); got {args.every}")
    if not 0 <= args.max_drop < 1:
        raise ConfigError(f"--max-drop is an accuracy drop in [0, 1), e.g. 0.03 for 3 points; got {args.max_drop}")
    config = BlockRemoval(loss=args.loss, temperature=args.temperature, alpha=args.alpha, short=not args.no_short,
                          long_every=args.every, max_drop=args.max_drop, max_width=args.max_width,
                          max_removals=args.max_removals, recalibrate=args.recalibrate)
    say = Progress(args.quiet)
    start_run(args, NAME, ("scratch_epochs",), say=say)
    job = prepare(args, say)
    val = job.require_val("layer fusion judges every step on a validation split")
    out_meta = job.out_meta(**{"from": str(args.model_path), "fused": True})
    batches = job.batches(job.train)
    short = job.batches(some(job.train, args.short_images, args.seed, "--short-images"))
    finetune = job.finetuner({"short": args.short_epochs, "long": args.long_epochs}, {"short": short, "long": batches},
                             config=str(config), short_images=args.short_images)
    training = {"short_epochs": args.short_epochs, "short_images": args.short_images, "long_epochs": args.long_epochs,
                "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "augment": not args.no_augment}
    model = job.model.cpu().eval()
    say("removing thin residual blocks one by one, each followed by a short fine-tune of its carrier")
    recalibration = job.recalibration(args.recalibrate) if args.recalibrate else None
    result = remove_thin_blocks(model, job.evaluator(val), finetune, config, out_meta, args.out, training=training,
                                say=say, recalibration=recalibration)
    test = job.evaluator(job.data.test)
    print(f"{'removed':>7} {'depth':>5} {'fused layers':>12} {'MACs':>13} {'val acc':>8}")
    for r in result.rows:
        print(f"{r['removed']:>7} {r['depth']:>5} {r['fused_layers']:>12} {r['macs']:>13,} {r['accuracy']:>8.2%}"
              + ("  below the floor: stopped" if r.get("below_floor") else ""))
    report = {"config": config.__dict__, "rows": result.rows, "reference_val_accuracy": result.reference_accuracy,
              "test": {"pruned": test.evaluate(model).accuracy, "fused": test.evaluate(result.model).accuracy}}
    if args.scratch_epochs > 0:
        say(f"training the final architecture from new weights for {args.scratch_epochs} epochs")
        scratch = fresh_copy(result.model, seed=args.seed)
        fit(scratch, batches, TrainConfig(epochs=args.scratch_epochs, lr=0.1, seed=args.seed), device=job.device,
            checkpoint=args.out / "scratch.pt", progress=not args.no_progress,
            fingerprint=run_fingerprint(args, scratch=str(result.path)))
        scratch.cpu().eval()
        save_model(args.out / "scratch-model.pt", scratch, out_meta)
        report["test"]["scratch"] = test.evaluate(scratch).accuracy
    print("test accuracy (once): " + ", ".join(f"{k} {v:.2%}" for k, v in report["test"].items()))
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    kept = [r for r in result.rows if r["file"]]
    if kept:
        print(f"kept {result.path}: {kept[-1]['fused_layers']} layers fused")
    else:
        print(f"no fused model stayed within {args.max_drop:.1%} of MODEL's validation accuracy; try more "
              "--short-epochs/--long-epochs, a larger --max-drop, or --every 1")
    floor = result.reference_accuracy - args.max_drop
    write_run_report(args, NAME, [
        Section("Result", "Test accuracy (once): " + ", ".join(f"{k} {v:.2%}" for k, v in report["test"].items())
                + "."),
        Section("After each long fine-tune", f"Snapshots are kept while validation accuracy stays at or above "
                f"{floor:.2%}.", [["blocks removed", "depth", "fused layers", "MACs", "accuracy", "kept"]]
                + [[r["removed"], r["depth"], r["fused_layers"], r["macs"], f"{r['accuracy']:.2%}", bool(r["file"])]
                   for r in result.rows],
                images=[("accuracy against MACs", size_accuracy_plot(
                    [(r["macs"], r["accuracy"], r["accuracy"] >= floor) for r in result.rows], floor, "MACs"))])])
    return 0
