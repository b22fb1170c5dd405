"""`cnnzip pca-prune`: the mixed pruning of the third paper: a network designed by PCA, trained, then pruned by
the geometric median (FPGM) and fine-tuned."""

from __future__ import annotations

import json
from dataclasses import replace

from ..data import Loader
from ..prune.mixed import MixedPruning, mixed_prune
from ..prune.pca import PcaPruning
from ..report import Section
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

NAME = "pca-prune"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "design a smaller network by PCA of the activations, train it, prune it further by FPGM"
DESCRIPTION = ("Mixed pruning with PCA and the geometric median: PCA of each layer's activations on training images "
               "gives the number of components that explain --variance of their variance, which becomes the layer's "
               "width; along a plain chain of layers (a VGG stage) a layer that adds no dimensions over the one "
               "before it is removed. The new network is trained (from new weights, as the paper does, or "
               "--inherit the original's), then FPGM removes --ratio of each layer's channels and it is "
               "fine-tuned. Rerun the same command to resume. Writes OUT/pca.pt, OUT/pruned.pt, OUT/report.json.")
EPILOG = """examples:
  cnnzip pca-prune runs/vgg16/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --variance 0.999 --train-epochs 30 --ratio 0.3 --finetune-epochs 10 --out runs/vgg16-pca-fpgm
  cnnzip pca-prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --variance 0.99 --inherit --train-epochs 3 --ratio 0 --out runs/r56-pca      # PCA widths only
Residual networks: PCA narrows the blocks' inner layers (with --residual-stream also the streams) and removes no
layer; `cnnzip fuse` removes whole blocks."""


def add_arguments(s) -> None:
    add_model_args(s, help="the trained model to analyse")
    add_data_args(s)
    s.add_argument("--variance", type=float, default=0.999, help="share of each layer's activation variance the "
                   "kept components explain (default 0.999)")
    s.add_argument("--pca-images", type=int, default=2048, help="training images the activations are measured on")
    s.add_argument("--min-width", type=int, default=1, help="channels every layer keeps")
    s.add_argument("--no-depth", action="store_true", help="keep every layer (widths only)")
    s.add_argument("--residual-stream", action="store_true", help="also narrow channels tied to residual additions")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX", help="leave layers matching this alone")
    s.add_argument("--inherit", action="store_true", help="start the PCA network from the original's weights of "
                   "the channels it keeps (largest L1 norm) instead of new ones")
    s.add_argument("--train-epochs", type=int, default=10, help="epochs that train the PCA network")
    s.add_argument("--train-lr", type=float, default=None, help="its learning rate (default 0.1 from new weights, "
                   "--lr with --inherit)")
    s.add_argument("--ratio", type=float, default=0.3, help="FPGM: share of each layer's channels removed from the "
                   "trained PCA network (0: PCA only)")
    s.add_argument("--finetune-epochs", type=int, default=2, help="epochs that fine-tune the FPGM-pruned network")
    s.add_argument("--recalibrate", type=int, default=512, metavar="IMAGES", help="re-estimate BatchNorm "
                   "statistics on this many training images after the FPGM surgery (0: off)")
    add_distill_args(s, kinds=True)
    add_finetune_args(s, "runs/pca-prune")


def run(args) -> int:
    nonnegative(args, "train_epochs", "finetune_epochs", "recalibrate")
    config = MixedPruning(pca=PcaPruning(variance=args.variance, images=args.pca_images, min_width=args.min_width,
                                         depth=not args.no_depth, residual_stream=args.residual_stream,
                                         skip=tuple(args.skip)),
                          ratio=args.ratio, inherit=args.inherit, recalibrate=args.recalibrate)
    say = Progress(args.quiet)
    start_run(args, NAME, say=say)
    job = prepare(args, say)
    val = job.require_val("pca-prune measures every stage on a validation split")
    train_lr = args.train_lr if args.train_lr is not None else (args.lr if args.inherit else 0.1)
    tune = job.finetuner({"pca": args.train_epochs, "fpgm": args.finetune_epochs}, config=str(config),
                         train_lr=train_lr, **job.distill_key())
    train = replace(tune, config=replace(tune.config, lr=train_lr))

    def finetune(stage, model, hooks=(), *, tag=None, parameters=None):
        (train if stage == "pca" else tune)(stage, model, hooks, tag=tag, parameters=parameters)

    finetune = job.distilling(finetune)  # from MODEL (or --teacher) with --distill
    sample = Loader(some(job.train, args.pca_images, args.seed, "--pca-images"), 256, mean=job.mean, std=job.std)
    recalibration = job.recalibration(args.recalibrate) if args.recalibrate else None
    training = {"train_epochs": args.train_epochs, "train_lr": train_lr, "finetune_epochs": args.finetune_epochs,
                "lr": args.lr, "batch_size": args.batch_size, "augment": not args.no_augment, **job.distill_key()}
    model = job.model.cpu().eval()
    meta = job.out_meta(**{"from": str(args.model_path), "pca_prune": True})
    result = mixed_prune(model, config, sample, finetune, meta, args.out, evaluator=job.evaluator(val),
                         recalibration=recalibration, training=training, seed=args.seed, device=job.device, say=say)
    test = job.evaluator(job.data.test)
    accuracy = {"original": test.evaluate(model).accuracy, "final": test.evaluate(result.model).accuracy}
    rows = [["layer", "width", "PCA width", "variance kept", "depth"]] + [
        [r["name"], r["width"], r["pca_width"], f"{r['variance_kept']:.4%}",
         f"adds no dimensions over {r['reads']}" + (": removed" if r["name"] in result.dropped else "")
         if r["drop"] else ""] for r in result.plan]
    for row in rows:
        print(f"{row[0]:<28} {row[1]:>6} {row[2]:>9} {row[3]:>13}  {row[4]}")
    stages = [["model", "MACs", "parameters", "val accuracy"]] + [
        [name, f"{s['macs']:,}", f"{s['params']:,}", f"{s['accuracy']:.2%}"] for name, s in result.stages.items()]
    for row in stages:
        print(f"{row[0]:<10} {row[1]:>15} {row[2]:>12} {row[3]:>12}")
    first, last = result.stages["original"], list(result.stages.values())[-1]
    print(f"{first['macs'] / last['macs']:.2f}x fewer MACs, {first['params'] / last['params']:.2f}x fewer parameters; "
          f"test accuracy (once) {accuracy['original']:.2%} -> {accuracy['final']:.2%}")
    report = {"config": {"pca": config.pca.__dict__ | {"skip": list(config.pca.skip)}, "ratio": config.ratio,
                         "inherit": config.inherit, "recalibrate": config.recalibrate}, "training": training,
              "plan": result.plan, "dropped": result.dropped, "stages": result.stages, "test": accuracy}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"saved {result.path}")
    write_run_report(args, NAME, [
        Section("Result", f"{first['macs'] / last['macs']:.2f}x fewer MACs, {first['params'] / last['params']:.2f}x "
                f"fewer parameters; test accuracy (once) {accuracy['original']:.2%} -> {accuracy['final']:.2%}.",
                stages),
        Section("Widths chosen by PCA", f"Components explaining {args.variance} of each layer's activation variance "
                f"on {args.pca_images} training images.", rows)])
    return 0
