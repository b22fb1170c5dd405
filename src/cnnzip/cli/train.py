"""`cnnzip train`: train or fine-tune a zoo model, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import ModelMeta, load_any, save_model
from ..models import create_model
from ..prune import SparsityHook
from ..report import Section, history_plot
from ..train import TrainConfig, fit, select_device
from .options import (
    Prepared,
    Progress,
    add_data_args,
    add_model_py_arg,
    add_out_args,
    check_fits,
    check_model_file,
    dataset,
    model_kwargs,
    nonnegative,
    norm,
    run_fingerprint,
    start_run,
    user_model,
    write_run_report,
)

NAME = "train"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "train or fine-tune a model (resumable)"
DESCRIPTION = ("Train a zoo model from scratch, or fine-tune it from weights, with SGD and a cosine schedule. Writes "
               "OUT/checkpoint.pt every epoch, then OUT/model.pt (a cnnzip model file) and OUT/metrics.json, and "
               "reports the test accuracy once at the end.")
EPILOG = """examples:
  cnnzip train                                   # small CNN on scikit-learn digits, no download
  cnnzip train --model resnet20 --weights ../shared/models/resnet20-12fca82f.th --norm imagenet \\
      --data ../shared/datasets/cifar10-jpeg.tar.gz --epochs 1 --out runs/resnet20-ft
Rerunning the same command with the same --out resumes a killed run from its last finished epoch."""


def add_arguments(s) -> None:
    add_data_args(s)
    s.add_argument("--model", default=None, help="architecture (see `cnnzip models`); default: small_cnn")
    add_model_py_arg(s)
    s.add_argument("--width", type=float, default=None, help="width multiplier (VGG, ResNet, DenseNet, MobileNetV2)")
    s.add_argument("--weights", type=Path, default=None, help="start from these weights (cnnzip model file, "
                   "state dict, or checkpoint such as ../shared/models/resnet56-4bfd9763.th)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.1 from scratch, "
                   "0.01 when fine-tuning)")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--weight-decay", type=float, default=5e-4)
    s.add_argument("--momentum", type=float, default=0.9)
    s.add_argument("--warmup-epochs", type=float, default=0.0)
    s.add_argument("--no-augment", action="store_true", help="turn off random crop and flip (they are off "
                   "anyway for images smaller than 16 pixels, such as digits)")
    s.add_argument("--sparsity", type=float, default=0.0, metavar="LAMBDA", help="network slimming's sparsity "
                   "training: add LAMBDA * sign(gamma) to every BatchNorm scale's gradient (the paper: 1e-4)")
    s.add_argument("--seed", type=int, default=0)
    add_out_args(s, "runs/train")
    s.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out and start over")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    say = Progress(args.quiet)
    nonnegative(args, "epochs")
    torch.manual_seed(args.seed)  # a --model-py factory initialises its weights from the global generator
    user = user_model(args)
    name = args.model_py if user is not None else args.model or "small_cnn"
    if args.weights is not None:
        check_model_file(args.weights, None if user is not None else name, user is not None)
    device = select_device(args.device)
    start_run(args, NAME, say=say)
    say(f"reading the data ({args.data})")
    ds, train, val = dataset(args)
    kwargs = model_kwargs(args, ds)
    if args.weights is not None:
        model, meta = load_any(args.weights, None if user is not None else name, model=user, **kwargs)
        check_fits(model, meta, ds, str(args.weights))
    elif user is not None:  # built by the factory (its own initialisation)
        model, meta = user, None
        check_fits(model, meta, ds, args.model_py)
    else:
        torch.manual_seed(args.seed)
        model, meta = create_model(name, **kwargs), None
    mean, std = norm(args.norm, meta, ds, raw_weights=args.weights is not None)
    job = Prepared(args, device, ds, train, val, model, meta, mean, std, say)
    lr = args.lr if args.lr is not None else (0.01 if args.weights is not None else 0.1)
    config = TrainConfig(epochs=args.epochs, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                         warmup_epochs=args.warmup_epochs, seed=args.seed)
    out: Path = args.out
    checkpoint = out / "checkpoint.pt"
    if args.fresh and checkpoint.exists():
        checkpoint.unlink()
    if checkpoint.exists():
        say(f"resuming from {checkpoint}")
    say(f"training {name} for {args.epochs} epochs")
    evaluator = job.evaluator(val, on_device=True) if val is not None else None
    hooks = [SparsityHook(args.sparsity)] if args.sparsity else []
    fingerprint = run_fingerprint(args, model=name, width=args.width, sparsity=args.sparsity)
    result = fit(model, job.batches(train), config, hooks=hooks, evaluator=evaluator, checkpoint=checkpoint,
                 device=device, progress=not args.no_progress, fingerprint=fingerprint)
    say("evaluating on the test split")
    test = job.evaluator(ds.test, on_device=True).evaluate(model)
    meta = ModelMeta(mean, std, job.shape, ds.classes, notes={"trained_on": ds.name, "train_config": config.__dict__})
    save_model(out / "model.pt", model, meta)
    summary = {"model": name, "data": args.data, "sparsity": args.sparsity, "epochs": result.history,
               "test_acc": test.accuracy, "resumed_from_epoch": result.resumed_from_epoch, "config": config.__dict__}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    for h in result.history:
        val_txt = f"  val_acc {h['val_acc']:.4f}" if "val_acc" in h else ""
        print(f"epoch {h['epoch']:>3}  loss {h['loss']:.4f}  train_acc {h['train_acc']:.4f}{val_txt}  "
              f"{h['seconds']:.1f} s  {h['images_per_second']:.0f} img/s")
    print(f"test accuracy {test.accuracy:.4f} ({test.correct}/{test.total})")
    print(f"saved {out / 'model.pt'}")
    epochs = [["epoch", "loss", "train accuracy", "validation accuracy", "seconds"]] + [
        [h["epoch"], h["loss"], f"{h['train_acc']:.2%}", f"{h['val_acc']:.2%}" if "val_acc" in h else None,
         h["seconds"]] for h in result.history]
    write_run_report(args, NAME, [
        Section("Result", f"{name} on {ds.name}: test accuracy {test.accuracy:.2%} (evaluated once).", epochs,
                images=[("accuracy and loss per epoch", history_plot(result.history))])])
    return 0
