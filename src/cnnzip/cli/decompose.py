"""`cnnzip decompose`: low-rank decomposition of conv and linear layers, an optional fine-tune, a before/after table."""

from __future__ import annotations

import json

import torch

from ..errors import ConfigError
from ..io import save_model
from ..lowrank import Decomposition, decompose
from ..report import Section, comparison_cells, describe, format_table, ratio_row
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_model_args,
    add_out_args,
    int_list,
    nonnegative,
    prepare,
    start_run,
    write_run_report,
)

NAME = "decompose"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "factor conv and linear layers into low-rank products (Tucker-2, SVD), fine-tune, compare"
DESCRIPTION = ("Low-rank decomposition: every k x k conv becomes a 1x1 reduce, a smaller k x k core and a 1x1 "
               "expand (Tucker-2), every 1x1 conv and linear layer two thinner ones (truncated SVD). Ranks keep "
               "--energy of each layer's singular-value energy, or are chosen to remove --macs-reduction of the "
               "MACs; a layer is factored only where that lowers its MACs. Then an optional fine-tune, and a "
               "before/after table (parameters, MACs, bytes, CPU latency in eager PyTorch and ONNX Runtime, test "
               "accuracy). Writes OUT/decomposed.pt and OUT/report.json.")
EPILOG = """examples:
  cnnzip decompose runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --macs-reduction 0.45 --finetune-epochs 3 --distill --out runs/r56-lowrank"""


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--energy", type=float, help="share of each layer's singular-value energy kept, in (0, 1]")
    how.add_argument("--macs-reduction", type=float, help="choose one energy for all layers that removes this "
                     "share of the MACs (e.g. 0.45)")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX", help="leave these layers alone "
                   "(repeatable), e.g. conv1 or linear")
    s.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="round each rank up to a multiple of N: ONNX Runtime's CPU convs work on blocks of 8 or 16 "
                   "channels, and odd ranks fall off them (default 1: no rounding)")
    s.add_argument("--finetune-epochs", type=int, default=0)
    add_distill_args(s, kinds=True)
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency-batches", default="1,256", help="batch sizes to time, comma-separated, or 'none'")
    s.add_argument("--latency-repeats", type=int, default=20)
    add_out_args(s, "runs/decompose")
    s.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    nonnegative(args, "finetune_epochs")
    if args.distill and args.finetune_epochs == 0:
        raise ConfigError("--distill changes how the model is fine-tuned; give --finetune-epochs too")
    latency = [] if args.latency_batches == "none" else int_list(args.latency_batches, "--latency-batches")
    config = Decomposition(energy=args.energy, macs_reduction=args.macs_reduction, skip=tuple(args.skip),
                           round_to=args.round_to)
    say = Progress(args.quiet)
    start_run(args, NAME, ("latency_batches", "latency_repeats"), say=say)
    job = prepare(args, say)
    if args.finetune_epochs > 0:
        job.distill_spec(), job.teacher()  # --distill's settings and --teacher, checked before the work
    test = job.evaluator(job.data.test, device="cpu")

    def measure(m, timed=True):
        return describe(m.cpu().eval(), job.shape, evaluator=test, latency_batches=latency if timed else (),
                        repeats=args.latency_repeats)

    say("measuring the original model (test accuracy, latency)")
    before = measure(job.model)
    say("decomposing the layers (SVD per layer)")
    result = decompose(job.model, config, torch.zeros(1, *job.shape))
    if not result.ranks:
        raise ConfigError("no layer was factored: at this energy no layer's factors have fewer MACs than the layer; "
                          "lower --energy or use --macs-reduction")
    model = result.model
    rows = {"original": before}
    if args.finetune_epochs > 0:
        rows["decomposed"] = measure(model, timed=False)
        validate = job.evaluator(job.val, on_device=True) if job.val is not None else None
        finetune = job.distilling(job.finetuner({"finetune": args.finetune_epochs}, evaluator=validate,
                                                ranks=result.ranks, **job.distill_key()))
        say(f"fine-tuning for {args.finetune_epochs} epochs")
        finetune("finetune", model)
        rows["decomposed+finetuned"] = measure(model)
    else:
        rows["decomposed"] = measure(model)
    after = rows[list(rows)[-1]]
    save_model(args.out / "decomposed.pt", model.cpu(), job.out_meta(**{"from": str(args.model_path),
                                                                        "decomposed": result.ranks}))
    report = {"energy": result.energy, "macs_reduction_goal": args.macs_reduction, "ranks": result.ranks,
              "left": result.left, "probe_error_before_finetune": result.error, "rows": rows,
              "finetune_epochs": args.finetune_epochs}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(format_table(rows, ratio_row(before, after)))
    print(f"factored {len(result.ranks)} layers at energy {result.energy:.4f} (relative output change before any "
          f"fine-tune: {result.error:.2e}); left {len(result.left)} as they were")
    print(f"saved {args.out / 'decomposed.pt'}")
    write_run_report(args, NAME, [
        Section("Before and after", "Accuracy is on the test split.", comparison_cells(rows, ratio_row(before, after))),
        Section("Ranks per layer", "", [["layer", "ranks"]] + [[k, str(v)] for k, v in result.ranks.items()])])
    return 0
