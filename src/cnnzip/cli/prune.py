"""`cnnzip prune`: structured pruning with verified surgery, an optional fine-tune, and a before/after table."""

from __future__ import annotations

import contextlib
import json
import signal
import threading

import torch

from ..errors import ConfigError
from ..io import save_model
from ..prune import ChannelPruning, prune_channels, prune_to_latency, prune_to_macs
from ..report import Section, comparison_cells, describe, format_table, ratio_row, widths_plot
from ..train import recalibrate_batchnorm
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_model_args,
    add_out_args,
    int_list,
    nonnegative,
    prepare,
    some,
    start_run,
    write_run_report,
)

NAME = "prune"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "remove channels (structured pruning), verify, fine-tune, compare"
DESCRIPTION = ("Remove whole channels from a model: choose them by importance, cut them out of a copy, check the copy "
               "against the original with those channels zeroed, optionally fine-tune, and print a before/after "
               "table (parameters, MACs, bytes, CPU latency in eager PyTorch and ONNX Runtime, test accuracy). "
               "Writes OUT/pruned.pt and OUT/report.json.")
EPILOG = """examples:
  cnnzip prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --method fpgm --macs-reduction 0.4 --finetune-epochs 3 --out runs/r56-fpgm
  cnnzip prune runs/vgg-sparse/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --method slimming --ratio 0.6 --finetune-epochs 5 --out runs/vgg-slim60
Channels whose coupling cnnzip cannot verify (such as the zero-padded shortcut of CIFAR ResNets) are left
alone and listed."""


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    s.add_argument("--method", choices=["slimming", "l1", "l2", "fpgm", "random"], default="l1",
                   help="importance: slimming = |BatchNorm gamma|, l1/l2 = filter norm, fpgm = distance to the "
                   "geometric median, random = baseline")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of the prunable channels to remove")
    how.add_argument("--threshold", type=float, help="remove channels scoring below this (slimming: |gamma|)")
    how.add_argument("--macs-reduction", type=float, help="prune until MACs fall by this fraction (e.g. 0.4)")
    how.add_argument("--latency-reduction", type=float,
                     help="prune until the ONNX Runtime time at --latency-batch falls by this fraction (e.g. 0.4), "
                     "NetAdapt-style: each step cuts the layer that loses the least accuracy per millisecond saved, "
                     "priced by a table of each layer's measured time (cached per model and machine)")
    s.add_argument("--scope", choices=["auto", "global", "layer"], default="auto",
                   help="rank channels over all layers (global) or within each layer (default: global for "
                   "slimming and thresholds, per layer otherwise)")
    s.add_argument("--min-channels", type=int, default=1, help="channels every layer keeps (default 1)")
    s.add_argument("--rounding", choices=["down", "up"], default="down",
                   help="how --ratio becomes a channel count: down removes floor(ratio x channels), never more than "
                   "asked (default); up keeps floor((1 - ratio) x channels), at least the ratio (Torch-Pruning's)")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="leave layers matching this name or regex alone (repeatable)")
    s.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="every pruned layer keeps a multiple of N channels (rounded up): CPU kernels work on "
                   "blocks of 8 or 16 channels (default 8 with --latency-reduction, whose layer table is timed at "
                   "every eighth of each width, so at every multiple of 8 up to 64; 1, no rounding, otherwise)")
    s.add_argument("--recalibrate", type=int, default=512, metavar="IMAGES",
                   help="re-estimate BatchNorm statistics on this many training images after the surgery, before "
                   "measuring or fine-tuning (default 512; 0: keep the original's statistics)")
    s.add_argument("--inner-only", action="store_true",
                   help="leave channels joined by a residual addition alone (a ResNet's streams): only the blocks' "
                   "inner widths shrink")
    s.add_argument("--latency-batch", type=int, default=1, metavar="N",
                   help="with --latency-reduction: the batch size whose time counts (default 1)")
    s.add_argument("--latency-precision", choices=["fp32", "int8"], default="fp32",
                   help="with --latency-reduction: the time of the fp32 model, or of its int8 file as `cnnzip "
                   "quantize` writes it (default fp32)")
    s.add_argument("--latency-step", type=float, default=0.05, metavar="F",
                   help="with --latency-reduction: each step removes this share of the original time (default 0.05)")
    s.add_argument("--latency-candidates", type=int, default=8, metavar="K",
                   help="with --latency-reduction: per step, the K most promising layer cuts (importance removed per "
                   "millisecond; with --remove-blocks also the K thinnest blocks per millisecond) are scored on "
                   "validation images, and the best taken until they save the step (default 8)")
    s.add_argument("--latency-eval-images", type=int, default=1000, metavar="IMAGES",
                   help="with --latency-reduction: validation images each candidate is scored on, after "
                   "--recalibrate (default 1000; 0: rank by importance per millisecond alone, no evaluation)")
    s.add_argument("--remove-blocks", action="store_true",
                   help="with --latency-reduction: removing a whole residual block (identity shortcut) is a step "
                   "too, scored like a width cut; ONNX Runtime's int8 convs on large images take as long at half "
                   "their width, so thin early blocks save more time whole (fine-tune afterwards)")
    s.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="give up if finding and verifying the channels takes longer (before any fine-tuning)")
    s.add_argument("--finetune-epochs", type=int, default=0)
    add_distill_args(s, kinds=True)
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    s.add_argument("--no-augment", action="store_true", help="fine-tune without random crop and flip")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency-batches", default="1,256", help="batch sizes to time, comma-separated, or 'none'")
    s.add_argument("--latency-repeats", type=int, default=20)
    add_out_args(s, "runs/prune")
    s.add_argument("--no-progress", action="store_true")


FREE = ("latency_batches", "latency_repeats", "time_limit")
LATENCY_ONLY = ("latency_batch", "latency_precision", "latency_step", "latency_candidates", "latency_eval_images",
                "remove_blocks")  # they only mean something with --latency-reduction


@contextlib.contextmanager
def time_limit(seconds: float | None, message: str):
    """Raise ConfigError(message) if the block runs longer than `seconds` (main thread, POSIX; else no limit).
    The surgery lets the alarm's TimeoutError through rather than taking it for a failed group."""
    usable = seconds is not None and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return
    def alarm(signum, frame):
        raise TimeoutError(message)

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeoutError as e:
        raise ConfigError(str(e)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_DEFAULTS = {"latency_batch": 1, "latency_precision": "fp32", "latency_step": 0.05, "latency_candidates": 8,
             "latency_eval_images": 1000, "remove_blocks": False}


def _prune_to_latency(args, job, config: ChannelPruning, example: torch.Tensor, say: Progress):
    """NetAdapt-style pruning priced by a latency table of this model on this machine, candidates scored on
    validation images after BatchNorm recalibration."""
    from ..deploy import build_latency_table

    say(f"timing each layer in ONNX Runtime at a few widths ({args.latency_precision}, batch {args.latency_batch}; "
        "cached per model and machine)")
    table = build_latency_table(job.model, job.shape, args.latency_batch, round_to=config.round_to,
                                threads=args.threads, repeats=20 if args.latency_batch < 64 else 3,
                                precision=args.latency_precision)
    evaluate = None
    if args.latency_eval_images:
        val = some(job.require_val("--latency-eval-images scores candidates on validation images (0: importance "
                                   "alone)"), args.latency_eval_images, args.seed, "--latency-eval-images")
        scorer = job.evaluator(val, device="cpu")
        calibration = job.recalibration(args.recalibrate) if args.recalibrate else None

        def evaluate(model):  # a fresh copy of the candidate: recalibrating it changes nothing else
            if calibration is not None:
                recalibrate_batchnorm(model, calibration, args.recalibrate, device="cpu")
            return scorer.evaluate(model).accuracy

    return prune_to_latency(job.model.cpu(), config, example, args.latency_reduction, table.predict,
                            evaluate=evaluate, step=args.latency_step, candidates=args.latency_candidates,
                            remove_blocks=args.remove_blocks, say=say)


def run(args) -> int:
    nonnegative(args, "finetune_epochs", "recalibrate", "latency_eval_images")
    if args.latency_reduction is None:
        given = [f"--{n.replace('_', '-')}" for n in LATENCY_ONLY
                 if getattr(args, n) != _DEFAULTS[n]]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --latency-reduction")
    else:
        if not 0 < args.latency_reduction < 1:
            raise ConfigError(f"--latency-reduction is the fraction of time to remove, in (0, 1); got "
                              f"{args.latency_reduction}")
        if args.latency_batch < 1 or args.latency_candidates < 1:
            raise ConfigError("--latency-batch and --latency-candidates must be at least 1")
        if not 0 < args.latency_step <= args.latency_reduction:
            raise ConfigError(f"--latency-step must be in (0, --latency-reduction]; got {args.latency_step}")
        if args.remove_blocks and not args.latency_eval_images:
            raise ConfigError("--remove-blocks compares blocks with width cuts on validation images: give "
                              "--latency-eval-images more than 0")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("--latency-reduction times layers in ONNX Runtime: pip install 'cnnzip[onnx]'") from None
    if args.distill and args.finetune_epochs == 0:
        raise ConfigError("--distill changes how the model is fine-tuned; give --finetune-epochs too")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ConfigError("--time-limit must be a positive number of seconds")
    batches_latency = [] if args.latency_batches == "none" else int_list(args.latency_batches, "--latency-batches")
    round_to = args.round_to if args.round_to is not None else 8 if args.latency_reduction is not None else 1
    config = ChannelPruning(method=args.method, ratio=args.ratio, threshold=args.threshold, scope=args.scope,
                            min_channels=args.min_channels, skip=tuple(args.skip), seed=args.seed, round_to=round_to,
                            residual_stream=not args.inner_only, rounding=args.rounding)
    say = Progress(args.quiet)
    start_run(args, NAME, FREE, say=say)
    job = prepare(args, say)
    if args.latency_reduction is not None and args.latency_eval_images and job.val is None:
        raise ConfigError(("--remove-blocks compares blocks with width cuts on validation images" if args.remove_blocks
                           else "--latency-eval-images scores candidates on validation images (0: importance alone)")
                          + ": set --val-size above 0")
    if args.finetune_epochs > 0:
        job.distill_spec(), job.teacher()  # --distill's settings and --teacher, checked before the surgery
    test = job.evaluator(job.data.test, device="cpu")

    def measure(m, latency=True):
        return describe(m.cpu().eval(), job.shape, evaluator=test, latency_batches=batches_latency if latency else (),
                        repeats=args.latency_repeats)

    say("measuring the original model (test accuracy, latency)")
    before = measure(job.model)
    say("finding coupled channels, pruning and verifying the surgery")
    example = torch.zeros(1, *job.shape)
    with time_limit(args.time_limit, "--time-limit: finding and verifying the channels took longer than "
                    f"{args.time_limit} s; nothing was written. Raise the limit, or --skip the layers that are slow"):
        if args.macs_reduction is not None:
            result = prune_to_macs(job.model, config, example, args.macs_reduction)
        elif args.latency_reduction is not None:
            result = _prune_to_latency(args, job, config, example, say)
        else:
            result = prune_channels(job.model, config, example)
    blocks = result.notes.get("removed_blocks", [])
    if result.channels_removed == 0 and not blocks:
        raise ConfigError(f"nothing was removed: with --min-channels {args.min_channels} and these settings no "
                          "channel qualifies; lower --min-channels, or prune more")
    pruned = result.model
    if args.recalibrate:
        used = recalibrate_batchnorm(pruned, job.recalibration(args.recalibrate), args.recalibrate, device="cpu")
        say(f"removed {result.channels_removed} channels; BatchNorm statistics re-estimated on {used} training "
            "images; measuring the pruned model")
    else:
        say(f"removed {result.channels_removed} channels; measuring the pruned model")
    rows = {"original": before}
    if args.finetune_epochs > 0:
        rows["pruned"] = measure(pruned, latency=False)
        validate = job.evaluator(job.val, on_device=True) if job.val is not None else None
        finetune = job.distilling(job.finetuner({"finetune": args.finetune_epochs}, evaluator=validate,
                                                pruning=config.__dict__, removed=result.removed,
                                                **({"blocks": blocks} if blocks else {}),
                                                **job.distill_key()))
        say(f"fine-tuning for {args.finetune_epochs} epochs")
        finetune("finetune", pruned)
        say("measuring the fine-tuned model")
        rows["pruned+finetuned"] = measure(pruned)
    else:
        rows["pruned"] = measure(pruned)
    after = rows[list(rows)[-1]]
    settings = config.__dict__ | {"skip": list(config.skip)}
    save_model(args.out / "pruned.pt", pruned.cpu(), job.out_meta(pruned=settings, **{"from": str(args.model_path)}))
    report = {"config": settings, "macs_reduction_goal": args.macs_reduction,
              "latency_reduction_goal": args.latency_reduction, "recalibrated_images": args.recalibrate,
              "finetune_epochs": args.finetune_epochs, "rows": rows, "widths": result.widths,
              "excluded": result.excluded, "verification_max_error": result.max_error, "notes": result.notes}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(format_table(rows, ratio_row(before, after)))
    print(f"removed {result.channels_removed} channels from {sum(1 for v in result.removed.values() if v)} layers; "
          f"surgery verified (max relative difference {result.max_error:.1e} against the masked original)")
    if blocks:
        print(f"removed {len(blocks)} residual blocks after the surgery ({', '.join(blocks)}): the network computes "
              "something else now" + ("" if args.finetune_epochs else "; fine-tune it (--finetune-epochs)"))
    for name, why in result.excluded.items():
        print(f"left alone: {name}: {why}")
    if args.latency_reduction is not None:
        key = f"ort_ms_b{args.latency_batch}"
        if args.latency_precision == "int8":
            measured = " (int8: quantize both models with `cnnzip quantize` to measure it)"
        elif key in before and key in after:
            measured = f"; measured in ONNX Runtime: {1 - after[key] / before[key]:.1%} less"
        else:
            measured = " (add it to --latency-batches to measure it)"
        print(f"{args.latency_precision} time at batch {args.latency_batch}: predicted {result.notes['latency_reduction']:.1%} less "
              f"(goal {args.latency_reduction:.0%}){measured}")
    print(f"saved {args.out / 'pruned.pt'}")
    widths = {k: v for k, v in result.widths.items()}
    write_run_report(args, NAME, [
        Section("Before and after", f"{args.method} importance; the surgery was verified against the masked original "
                f"(max relative difference {result.max_error:.1e}). Accuracy is on the test split.",
                comparison_cells(rows, ratio_row(before, after))),
        Section("Channels per layer", "", [["layer", "before", "after"]] + [[k, a, b] for k, (a, b) in widths.items()]
                + [[k, "left alone", why] for k, why in result.excluded.items()],
                images=[("channels per layer, before and after", widths_plot(
                    {k: a for k, (a, _) in widths.items()}, {k: b for k, (_, b) in widths.items()}))])])
    return 0
