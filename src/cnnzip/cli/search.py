"""`cnnzip search`: the smallest file that meets a target accuracy, across slimming and deep compression."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

from .. import distributed
from ..distill import Distillation
from ..errors import ConfigError
from ..io import load, skeleton
from ..report import Section, size_accuracy_plot
from ..search import OBJECTIVES, ORDERS, Pipeline, SearchConfig, search
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_model_args,
    add_out_args,
    nonnegative,
    prepare,
    some,
    start_run,
    write_run_report,
)

NAME = "search"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "find the smallest file that meets a target accuracy (slimming + deep compression)"
DESCRIPTION = ("Search the ratios of network slimming and deep compression, in either order, for the smallest "
               "compressed file whose validation accuracy meets the target. Every accuracy check is recorded in "
               "OUT/trials.jsonl; rerun the same command to resume. The winner is written to OUT/best.cnnz and "
               "evaluated once on the test split.")
EPILOG = """examples:
  cnnzip search runs/vgg-sparse/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --drop 0.01 --strategy bisect --out runs/vgg-search
  cnnzip search runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --target-acc 0.88 --strategy margin --margin 5 --step 0.05 --out runs/r56-margin
Decisions use the validation split (held out from the training images); the test split is used once, at the
end, for the winner."""


def add_arguments(s) -> None:
    add_model_args(s, help="cnnzip model file or raw weights (for slimming, a model trained with --sparsity)")
    add_data_args(s)
    goal = s.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-acc", type=float, help="validation accuracy to meet, e.g. 0.90")
    goal.add_argument("--drop", type=float, help="accepted drop below the baseline's validation accuracy, "
                      "e.g. 0.01 for one point")
    s.add_argument("--strategy", choices=["grid", "margin", "bisect"], default="bisect")
    s.add_argument("--order", choices=list(ORDERS), default="ns-dc",
                   help="methods and their order: ns = structured pruning (network slimming), dc = deep compression, "
                   "lr = low-rank factors (the ratio is the share of MACs they remove)")
    s.add_argument("--structured", choices=["slimming", "l1", "l2", "fpgm", "pca"], default="slimming",
                   help="channel importance of the structured step; pca: each layer keeps the channels (of largest "
                   "L1 norm) that PCA of its activations needs for 1 - ratio^3 of their variance")
    s.add_argument("--pca-images", type=int, default=2048, help="training images PCA measures (--structured pca)")
    s.add_argument("--quantize", choices=["int8"], default=None, help="int8 post-training quantization as the last "
                   "step (needs the [onnx] extra): candidates are int8 ONNX files, judged in ONNX Runtime; with "
                   "--order ns")
    s.add_argument("--objective", choices=list(OBJECTIVES), default="size",
                   help="what the winner minimises: file size, or ONNX Runtime time at batch 1 or 256 (measured "
                   "beside the original model for every passing candidate; needs the [onnx] extra and --order ns)")
    s.add_argument("--recalibrate", type=int, default=512, metavar="IMAGES",
                   help="re-estimate BatchNorm statistics of every candidate on this many training images before "
                   "its accuracy is checked (default 512; 0: judge candidates with the original's statistics)")
    s.add_argument("--recover-images", type=int, default=0, metavar="IMAGES",
                   help="fine-tune every candidate for one pass over this many training images (a fixed random "
                   "subset; --lr, --train-batch-size) before its accuracy is checked, so that the search judges "
                   "what a candidate becomes after a short recovery (default 0: off; a few thousand on a CPU; "
                   "at least the training split's size: one whole epoch, to judge what a fine-tune epoch makes of "
                   "each candidate)")
    s.add_argument("--recover-distill", action="store_true", help="distil from MODEL during those recoveries "
                   "(--temperature, --alpha)")
    add_distill_args(s)
    s.add_argument("--inner-only", action="store_true", help="structured pruning leaves channels joined by a "
                   "residual addition alone (a ResNet's streams)")
    s.add_argument("--round-to", type=int, default=1, metavar="N", help="structured pruning keeps a multiple of N "
                   "channels per layer: CPU kernels work on blocks of 8 or 16 channels (default 1)")
    s.add_argument("--calibration-images", type=int, default=512, help="training images that calibrate each "
                   "candidate's int8 ranges (with --quantize)")
    s.add_argument("--margin", type=int, default=5, help="the heuristic's margin, in grid steps")
    s.add_argument("--step", type=float, default=0.05, help="grid step of every ratio (default 0.05)")
    s.add_argument("--max-ratio", type=float, default=0.95)
    s.add_argument("--conv-bits", type=int, default=8)
    s.add_argument("--fc-bits", type=int, default=5)
    s.add_argument("--max-checks", type=int, default=None, help="stop after this many accuracy checks")
    s.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    s.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    s.add_argument("--structured-epochs", type=int, default=0, help="fine-tune the winner this many epochs "
                   "after its structured step, before deep compression (ns-dc only)")
    s.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the winner this many epochs after "
                   "its last pruning step, pruned weights held at zero")
    s.add_argument("--centroid-epochs", type=int, default=0, help="epochs of centroid fine-tuning after weight "
                   "sharing")
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    s.add_argument("--train-batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-images", type=int, default=0, help="decide on this many images of the validation split "
                   "(a fixed random subset; 0: all of it), without changing the split itself")
    s.add_argument("--workers", type=int, default=1, help="run accuracy checks on this many Ray workers at once "
                   "(pip install 'cnnzip[ray]'): the grid all at once, scans and bisections a few steps ahead; the "
                   "same trials and winner as one worker, in less wall time")
    s.add_argument("--ray-address", default=None, help="a running Ray cluster to send checks to (e.g. "
                   "ray://head:10001 or auto); every node must see the data and --out")
    s.add_argument("--no-progress", action="store_true")
    add_out_args(s, "runs/search")


# A search stopped by a budget resumes with another one; the winner's fine-tunes do not change the trials.
FREE = ("max_checks", "time_budget", "structured_epochs", "finetune_epochs", "centroid_epochs", "lr",
        "train_batch_size", "no_augment", "workers", "ray_address")


def run(args) -> int:
    nonnegative(args, "structured_epochs", "finetune_epochs", "centroid_epochs", "val_images", "recover_images",
                "pca_images")
    config = SearchConfig(
        pipeline=Pipeline(order=args.order, structured=args.structured, conv_bits=args.conv_bits,
                          fc_bits=args.fc_bits, quantize=args.quantize, round_to=args.round_to,
                          residual_stream=not args.inner_only, recalibrate=args.recalibrate),
        strategy=args.strategy, target=args.target_acc, drop=args.drop, step=args.step, max_ratio=args.max_ratio,
        margin=args.margin, max_checks=args.max_checks, time_budget=args.time_budget, objective=args.objective,
        recovery_images=args.recover_images, recovery_distill=args.recover_distill)
    check_workers(args)
    return execute(args, config, NAME, FREE)


def check_workers(args) -> None:
    """--workers and --ray-address, before any work: a count of at least 1, Ray installed, not under torchrun."""
    if args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more; got {args.workers}")
    if not (args.workers > 1 or args.ray_address):
        return
    if distributed.world().distributed:
        raise ConfigError("--workers and --ray-address run checks on Ray, not under torchrun: start the search as "
                          "one process (its fine-tunes can still run under torchrun as separate commands)")
    try:
        import ray  # noqa: F401 - checked before any work
    except ImportError as exc:
        raise ConfigError("--workers and --ray-address run checks on Ray, which is not installed: pip install "
                          "'cnnzip[ray]', or search with --workers 1") from exc


def execute(args, config: SearchConfig, command: str, free) -> int:
    """Claim --out, prepare the model and data, search, fine-tune and report the winner: the work of `search`
    and of `compress` (which builds `config` and these options from a recipe)."""
    say = Progress(args.quiet)
    start_run(args, command, free, say=say)
    job = prepare(args, say)
    val = some(job.require_val("a search decides on a validation split"), args.val_images, args.seed, "--val-images")
    epochs = {"structured": args.structured_epochs, "final": args.finetune_epochs, "shared": args.centroid_epochs}
    finetune = None
    if any(epochs.values()):
        finetune = job.distilling(job.finetuner(epochs, job.batches(job.train, args.train_batch_size),
                                                train_batch_size=args.train_batch_size, search=config.as_dict(),
                                                **job.distill_key()))
    recovery = None
    if args.recover_images:  # one pass over a fixed subset, checkpointed per candidate in OUT/recovery
        distill = {"temperature": args.temperature, "alpha": args.alpha} if args.recover_distill else None
        recovery = replace(job.finetuner({"final": 1}, job.batches(some(job.train, args.recover_images, args.seed,
                                                                        "--recover-images"), args.train_batch_size),
                                         hooks=[Distillation(job.model, **distill)] if distill else [],
                                         train_batch_size=args.train_batch_size, recovery=True, distill=distill),
                           run_dir=args.out / "recovery", progress=False)
    calibration = recalibration = None
    if args.quantize:  # int8 activation ranges: clean training images
        images = some(job.train, args.calibration_images, args.seed, "--calibration-images")
        calibration = [x.numpy() for x, _ in job.evaluator(images, 32).batches]
    if args.recalibrate or args.structured == "pca":  # BatchNorm statistics, PCA: training images augmented
        # as in training (recalibration reads the first --recalibrate of them)
        recalibration = job.recalibration(max(args.recalibrate, args.pca_images if args.structured == "pca" else 0))
    result = search(job.model.cpu().eval(), job.evaluator(val, args.batch_size), job.out_meta(), config, args.out,
                    finetune=finetune, say=say, calibration=calibration, recovery=recovery,
                    recalibration=recalibration, workers=args.workers, ray_address=args.ray_address)
    shutil.rmtree(args.out / "recovery", ignore_errors=True)  # per-candidate checkpoints: the search is done
    cost = result.cost
    print(f"baseline validation accuracy {result.baseline_accuracy:.2%}; target {result.target:.2%}")
    print(f"{cost['checks']:.0f} accuracy checks, {cost['images']:,.0f} images evaluated, {cost['seconds']:.0f} s"
          + ("" if result.complete else " (stopped by the budget: rerun without it to finish)"))
    if result.best is None:
        print("no candidate met the target, even the smallest ratios; the model itself may be below it")
        return 1
    best = result.best
    winner, _ = load(result.path, skeleton(job.model))
    say("evaluating the winner once on the test split")
    test = job.evaluator(job.data.test, args.batch_size).evaluate(winner).accuracy
    names = dict(zip(config.pipeline.axes, best.ratios, strict=True))
    speed = "" if best.latency is None else f", {best.latency:.2f}x the original's ONNX Runtime time"
    print(f"{'smallest' if best.latency is None else 'fastest'} passing: "
          f"{', '.join(f'{k} ratio {v:.2f}' for k, v in names.items())}: {best.size:,} bytes{speed}, "
          f"validation accuracy {best.accuracy:.2%}{'' if best.complete else ' (early exit)'}")
    if result.finetuned:
        print(f"after fine-tuning: {result.final_size:,} bytes, validation accuracy {result.final_accuracy:.2%}")
    print(f"test accuracy (evaluated once) {test:.2%}; file {result.path}")
    summary = result.as_dict() | {"test_accuracy": test}
    (args.out / "result.json").write_text(json.dumps(summary, indent=2))
    pictures = [(caption, (args.out / name).read_bytes() if (args.out / name).exists() else None)
                for caption, name in (("every accuracy check in order", "trajectory.png"),
                                      ("the winner's size at every margin", "margin_sweep.png"))]
    points = [(t.size, t.accuracy, t.passed) for t in result.trials]
    at = ", ".join(f"{k} {v:.2f}" for k, v in names.items())
    what = ("smallest file" if best.latency is None
            else f"fastest model in ONNX Runtime at batch {config.latency_batch}")
    timed = [] if best.latency is None else ["time / original"]
    write_run_report(args, command, [
        Section("Result", f"The {what} whose validation accuracy meets {result.target:.2%} (baseline "
                f"{result.baseline_accuracy:.2%}): {best.size:,} bytes{speed} at {at}; test accuracy {test:.2%} "
                "(evaluated once).",
                [["accuracy checks", "images evaluated", "seconds"],
                 [int(cost["checks"]), int(cost["images"]), round(cost["seconds"])]]),
        Section("Every accuracy check", "", [["check", *config.pipeline.axes, "bytes", *timed, "accuracy", "meets"]]
                + [[i + 1, *t.ratios, t.size, *([] if not timed else ["-" if t.latency is None else
                                                                       f"{t.latency:.2f}x"]),
                    f"{t.accuracy:.2%}", t.passed] for i, t in enumerate(result.trials)],
                images=[*pictures, ("accuracy against file size",
                                    size_accuracy_plot(points, result.target, "file bytes"))])])
    return 0
