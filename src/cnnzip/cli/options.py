"""What several commands share: their options, and `prepare`, which turns them into data, a model and helpers.

Commands hold no library logic: they read options, call the API, and print. Everything that more than one
command needs to build (the splits, the model checked against the data, training batches, evaluators, the
fine-tuner with its resumable checkpoints) is built here, once.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Loader, load_dataset, train_val_split
from ..errors import ConfigError
from ..finetune import Finetuner
from ..io import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, load_any
from ..measure import Evaluator
from ..train import TrainConfig, select_device

# ---------------------------------------------------------------- options


def add_model_args(s: argparse.ArgumentParser, help: str = "cnnzip model file or raw weights") -> None:
    s.add_argument("model_path", type=Path, metavar="MODEL", help=help)
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")


def add_data_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", default="digits", help="digits (default, bundled), cifar10:ROOT, cifar100:ROOT, or "
                   "an image-folder tree / .tar.gz such as ../shared/datasets/cifar10-jpeg.tar.gz")
    s.add_argument("--norm", default=None, help="input normalisation: 'dataset' (mean/std of the training images, "
                   "the default for new models), 'imagenet' (what the ../shared ResNets were trained with), or "
                   "'m1,m2,m3:s1,s2,s3'. A cnnzip model file carries its own.")
    s.add_argument("--val-size", type=float, default=None, help="training images held out for validation: a "
                   "count or a fraction (default 5000, or 10%% for small datasets)")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")


def add_finetune_args(s: argparse.ArgumentParser, out: str) -> None:
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine schedule)")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=Path(out))
    s.add_argument("--no-progress", action="store_true")


def add_distill_args(s: argparse.ArgumentParser) -> None:
    """The distillation settings (Hinton et al. 2015) shared by the commands that distill."""
    s.add_argument("--temperature", type=float, default=4.0)
    s.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")


# ---------------------------------------------------------------- what the options become


@dataclass
class Prepared:
    """A command's inputs, checked against each other: device, dataset and splits, model, normalisation."""

    args: argparse.Namespace
    device: torch.device
    data: Any  # cnnzip.data.Dataset
    train: Any  # the training split (without the validation images)
    val: Any | None  # the validation split, None with --val-size 0
    model: nn.Module
    meta: Any | None  # the model file's ModelMeta; None for raw weights
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.data.in_channels, *self.data.image_size)

    def require_val(self, why: str) -> Any:
        if self.val is None:
            raise ConfigError(f"{why}: set --val-size above 0")
        return self.val

    def batches(self, split, batch_size: int | None = None):
        """Training batches: shuffled and (unless --no-augment, or images under 16 pixels) augmented."""
        return Loader(split, batch_size or self.args.batch_size, shuffle=True, augment=augment(self.args, self.data),
                      mean=self.mean, std=self.std, seed=self.args.seed, device=self.device)

    def evaluator(self, split, batch_size: int = 500, device=None, on_device: bool = False):
        """An Evaluator of `split`; `on_device` puts the batches on the command's device."""
        loader = Loader(split, batch_size, mean=self.mean, std=self.std, device=self.device if on_device else "cpu")
        return Evaluator(loader, device=device)

    def out_meta(self, **notes: Any):
        """The ModelMeta of what this command writes: its normalisation, input shape and classes."""
        return ModelMeta(self.mean, self.std, self.shape, self.data.classes, notes=notes)

    def finetuner(self, epochs: dict[str, int], batches=None, *, hooks=(), on_start=None, evaluator=None,
                  **fingerprint: Any) -> Finetuner:
        """The library's Finetuner with this command's settings; checkpoints in --out, keyed by the options."""
        return Finetuner(batches if batches is not None else self.batches(self.train), epochs,
                         TrainConfig(lr=self.args.lr, seed=self.args.seed), hooks=hooks, run_dir=self.args.out,
                         fingerprint=run_fingerprint(self.args, **fingerprint), device=self.device,
                         evaluator=evaluator, progress=not self.args.no_progress, on_start=on_start)


def prepare(args: argparse.Namespace) -> Prepared:
    """Device, dataset and splits, the model from MODEL (checked against the data), and its normalisation."""
    device = select_device(args.device)
    ds, train, val = dataset(args)
    model, meta = load_any(args.model_path, args.model, **model_kwargs(args, ds))
    check_fits(model, meta, ds, str(args.model_path))
    mean, std = norm(args.norm, meta, ds)
    return Prepared(args, device, ds, train, val, model, meta, mean, std)


def dataset(args: argparse.Namespace):
    ds = load_dataset(args.data)
    val_size = args.val_size
    if val_size is None:
        val_size = 5000 if len(ds.train) >= 20000 else 0.1
    elif val_size >= 1:
        val_size = int(val_size)
    if val_size == 0:
        return ds, ds.train, None
    train, val = train_val_split(ds.train, val_size=val_size, seed=getattr(args, "seed", 0))
    return ds, train, val


def file_digest(path: Path) -> str:
    """Content hash of a file, so that a rerun on changed weights does not resume the old run's checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def run_fingerprint(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """What a resumed fine-tune must share with the run it resumes, besides the training config."""
    fp = {"data": args.data, "val_size": args.val_size, "batch_size": args.batch_size, "norm": args.norm,
          "augment": not args.no_augment}
    weights = getattr(args, "weights", None) or getattr(args, "model_path", None)
    if weights is not None:
        fp["weights"] = file_digest(Path(weights))
    return {**fp, **extra}


def some(split, count: int, seed: int, flag: str):
    """A fixed random subset of `count` images (0, or more than there are: all of them)."""
    if count < 0:
        raise ConfigError(f"{flag} must be 0 (all images) or a positive count; got {count}")
    if count == 0 or count >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count])


def check_fits(model: nn.Module, meta, ds, what: str) -> None:
    """A model file and a dataset must agree on input shape and class count before anything runs."""
    shape = (ds.in_channels, *ds.image_size)
    if meta is not None and tuple(meta.input_shape) != shape:
        raise ConfigError(f"{what} takes inputs of shape {tuple(meta.input_shape)}, but the data has images of "
                          f"shape {shape}; use the dataset it was made for")
    outputs = _output_count(model, shape)
    if outputs is not None and outputs != ds.num_classes:
        raise ConfigError(f"{what} predicts {outputs} classes, but the data has {ds.num_classes}")


def _output_count(model: nn.Module, shape) -> int | None:
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return int(model.eval()(torch.zeros(1, *shape, device=device)).shape[-1])
    except Exception:  # noqa: BLE001 - a shape mismatch shows up here; reported by the caller's check
        return None


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: give positive integers separated by commas, e.g. 1,256")
    return values


def augment(args: argparse.Namespace, ds) -> bool:
    """CIFAR-style crop (4-pixel padding) and flip: right for 32x32 photos, destructive for 8x8 digits."""
    return not args.no_augment and min(ds.image_size) >= 16


def model_kwargs(args: argparse.Namespace, ds) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": ds.num_classes}
    if ds.in_channels != 3:
        kwargs["in_channels"] = ds.in_channels
    if getattr(args, "width", None) is not None:
        kwargs["width"] = args.width
    return kwargs


def norm(choice: str | None, meta, ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if choice is None:
        return (tuple(meta.mean), tuple(meta.std)) if meta is not None else (ds.mean, ds.std)
    if choice == "dataset":
        return ds.mean, ds.std
    if choice == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        m, s = choice.split(":")
        mean, std = tuple(float(v) for v in m.split(",")), tuple(float(v) for v in s.split(","))
    except ValueError as exc:
        raise ConfigError(f"--norm {choice!r}: use dataset, imagenet, or 'm1,m2,m3:s1,s2,s3'") from exc
    if len(mean) != ds.in_channels or len(std) != ds.in_channels or min(std) <= 0:
        raise ConfigError(f"--norm needs {ds.in_channels} means and {ds.in_channels} positive stds")
    return mean, std


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--input-shape {text!r}: use C,H,W such as 3,32,32") from exc
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: use C,H,W such as 3,32,32")
    return shape
