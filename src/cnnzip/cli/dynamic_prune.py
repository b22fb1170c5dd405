"""`cnnzip dynamic-prune`: remove mostly-zero channels, the threshold set by binary search on fine-tuned accuracy."""

from __future__ import annotations

import json
from dataclasses import asdict

from ..errors import ConfigError
from ..measure import count_macs, count_parameters
from ..prune.dynamic import DynamicPruning, dynamic_prune
from ..report import Section, size_accuracy_plot
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_finetune_args,
    add_model_args,
    nonnegative,
    prepare,
    some,
    start_run,
    write_run_report,
)

NAME = "dynamic-prune"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "remove mostly-zero channels, threshold set by binary search on fine-tuned accuracy"
DESCRIPTION = ("Dynamic pruning (Electronics 2023, 12, 1208): measure each channel's zero fraction on the "
               "validation split, remove the channels above a threshold, fine-tune, and binary-search the threshold "
               "(from [0.5, 1.0] until the interval is below --tolerance) so that the fine-tuned model meets the "
               "target; repeat --iterations times. Rerun the same command to resume. Writes OUT/pruned.pt and "
               "OUT/report.json.")
EPILOG = """examples:
  # CPU-sized (the defaults): each trial fine-tuned on 10,000 images and judged 4 points below the start;
  # each iteration's winner then trained 2 epochs on everything
  cnnzip dynamic-prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --iterations 3 --out runs/r56-dynamic
  # the paper's recipe (a GPU): every trial fine-tuned on all images, target slightly below the start
  cnnzip dynamic-prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --drop 0.005 --epochs 30 --trial-images 0 --recover-epochs 0 --out runs/r56-dynamic-gpu
"""


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    goal = s.add_mutually_exclusive_group()
    goal.add_argument("--target-acc", type=float, help="validation accuracy every kept trial must meet")
    goal.add_argument("--drop", type=float, help="accepted drop of a trial's fine-tuned accuracy below the "
                      "starting validation accuracy (default 0.04, for the short CPU trials; the paper, with "
                      "full fine-tunes, sets it slightly below the baseline: use 0.005 with --trial-images 0)")
    s.add_argument("--iterations", type=int, default=3)
    s.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of every trial (the feedback)")
    s.add_argument("--trial-images", type=int, default=10000, help="training images each trial's epoch sees (a "
                   "fixed random subset): cheap feedback, sized for a CPU; 0: all of them")
    s.add_argument("--recover-epochs", type=int, default=2, help="fine-tune each iteration's winner this many "
                   "epochs on all training images before the next iteration starts (0: never)")
    add_distill_args(s, kinds=True)  # trials and recoveries learn from MODEL: faster recovery on short budgets
    # (the paper uses plain cross-entropy)
    s.add_argument("--lower", type=float, default=0.5, help="initial lower end of the threshold interval")
    s.add_argument("--upper", type=float, default=1.0)
    s.add_argument("--tolerance", type=float, default=0.03, help="stop when the interval is narrower")
    s.add_argument("--min-channels", type=int, default=1)
    s.add_argument("--residual-stream", action="store_true", help="also prune channels tied to residual "
                   "additions (default: only block inner widths, as the paper)")
    s.add_argument("--recalibrate", type=int, default=0, metavar="IMAGES", help="re-estimate BatchNorm "
                   "statistics of every trial on this many training images before it is judged and fine-tuned "
                   "(default 0: off; the trial's fine-tune re-estimates them anyway, and on ResNet-56 the "
                   "fine-tuned trial scored the same with it: --distill is what recovers more)")
    s.add_argument("--sparsity-images", type=int, default=None, help="validation images for the sparsity "
                   "measurement (default: all)")
    add_finetune_args(s, "runs/dynamic")


def run(args) -> int:
    nonnegative(args, "recover_epochs", "trial_images", "sparsity_images", "recalibrate")
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (every trial is fine-tuned); got {args.epochs}")
    config = DynamicPruning(target=args.target_acc, drop=None if args.target_acc is not None else
                            (args.drop if args.drop is not None else 0.04), lower=args.lower, upper=args.upper,
                            tolerance=args.tolerance, iterations=args.iterations, min_channels=args.min_channels,
                            residual_stream=args.residual_stream, max_images=args.sparsity_images,
                            recalibrate=args.recalibrate)
    say = Progress(args.quiet)
    start_run(args, NAME, ("iterations",), say=say)  # more iterations extend a run
    job = prepare(args, say)
    val = job.require_val("dynamic pruning measures sparsity and judges trials on a validation split")
    # More --iterations extend a run: the fine-tunes' checkpoints do not depend on them.
    key = str({k: v for k, v in asdict(config).items() if k != "iterations" and (k != "recalibrate" or v)})
    # (recorded only when given: runs from before the option still resume)
    distill = job.distill_key()
    trials = job.batches(some(job.train, args.trial_images, args.seed, "--trial-images"))
    finetune = job.distilling(job.finetuner({"trial": args.epochs, "recover": args.recover_epochs},
                                            {"trial": trials, "recover": job.batches(job.train)}, config=key,
                                            trial_images=args.trial_images, **distill))
    training = {"epochs": args.epochs, "trial_images": args.trial_images, "recover_epochs": args.recover_epochs,
                "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "augment": not args.no_augment,
                **distill}
    model = job.model.cpu().eval()
    recalibration = None
    if args.recalibrate:  # a fixed subset in a fixed order: every trial sees the same images
        recalibration = job.recalibration(args.recalibrate)
    say(f"dynamic pruning: {args.iterations} iterations, each a binary search on the threshold with fine-tuned trials")
    result = dynamic_prune(model, job.evaluator(val), finetune, config, job.out_meta(**{"from": str(args.model_path),
                           "dynamic": True}), args.out, recover=args.recover_epochs > 0, training=training,
                           device=job.device, say=say, recalibration=recalibration)
    test = job.evaluator(job.data.test)
    accuracy = {"original": test.evaluate(model.cpu()).accuracy, "pruned": test.evaluate(result.model).accuracy}
    print(f"{'iter':>4} {'threshold':>9} {'removed':>8} {'MACs':>13} {'val acc':>8}  verdict")
    for t in result.trials:
        print(f"{t.iteration:>4} {t.threshold:>9.4f} {t.removed:>8} {t.macs:>13,} {t.accuracy:>8.2%}  "
              + ("meets" if t.passed else "misses") + f" {result.target:.2%}")
    before, after = result.macs
    print(f"MACs {before:,} -> {after:,} ({1 - after / before:.1%} fewer); parameters {count_parameters(model):,} -> "
          f"{count_parameters(result.model):,}")
    print(f"validation accuracy {result.baseline_accuracy:.2%} -> {result.accuracy:.2%}; test accuracy (once) "
          f"{accuracy['original']:.2%} -> {accuracy['pruned']:.2%}")
    for it, r in sorted(result.recovered.items(), key=lambda kv: int(kv[0])):
        kept = "" if r.after >= r.before else f" (worse: kept its weights before, {r.accuracy:.2%})"
        print(f"iteration {it}: the winner {r.source} fine-tuned longer, {r.before:.2%} -> {r.after:.2%}{kept}")
    report = {"config": config.__dict__ | {"skip": list(config.skip)}, "epochs": args.epochs,
              "trial_images": args.trial_images, "recover_epochs": args.recover_epochs,
              "recovered": {k: r.to_dict() for k, r in result.recovered.items()},
              "macs": {"before": before, "after": after, "reduction": 1 - after / before},
              "params": {"before": count_parameters(model), "after": count_parameters(result.model)},
              "validation": {"before": result.baseline_accuracy, "after": result.accuracy, "target": result.target},
              "test": accuracy, "trials": [asdict(t) for t in result.trials],
              "macs_check": count_macs(result.model, job.shape)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"saved {result.path}")
    write_run_report(args, NAME, [
        Section("Result", f"MACs {before:,} -> {after:,} ({1 - after / before:.1%} fewer); validation accuracy "
                f"{result.baseline_accuracy:.2%} -> {result.accuracy:.2%} (target {result.target:.2%}); test accuracy "
                f"(once) {accuracy['original']:.2%} -> {accuracy['pruned']:.2%}."),
        Section("Every trial", "", [["iteration", "threshold", "channels removed", "MACs", "accuracy", "meets"]]
                + [[t.iteration + 1, t.threshold, t.removed, t.macs, f"{t.accuracy:.2%}", t.passed]
                   for t in result.trials],
                images=[("accuracy against MACs, one dot per trial", size_accuracy_plot(
                    [(t.macs, t.accuracy, t.passed) for t in result.trials], result.target, "MACs"))])])
    return 0
