"""What several commands share: their options, and `prepare`, which turns them into data, a model and helpers.

Commands hold no library logic: they read options, call the API, and print. Everything that more than one
command needs to build (the splits, the model checked against the data, training batches, evaluators, the
fine-tuner with its resumable checkpoints) is built here, once.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Loader, load_dataset, train_val_split
from ..deploy import OnnxModel
from ..distill import DISTILL_KINDS, DistillSpec, distilling
from ..errors import ConfigError
from ..finetune import Finetuner
from ..io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelMeta,
    atomic_write_text,
    differences,
    is_model_file,
    load_any,
    needs_architecture,
    rebuild,
    sniff,
)
from ..measure import Evaluator
from ..models import build_user_model, list_models, read_checkpoint
from ..report import write_report
from ..train import TrainConfig, select_device

# ---------------------------------------------------------------- options


def add_model_args(s: argparse.ArgumentParser, help: str = "cnnzip model file or raw weights") -> None:
    s.add_argument("model_path", type=Path, metavar="MODEL", help=help)
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")
    add_model_py_arg(s)


def add_model_py_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model-py", default=None, metavar="FILE.py:FACTORY", help="your own architecture: a function "
                   "in a Python file that returns a fresh nn.Module; MODEL is then its weights, or a cnnzip file "
                   "saved from it (such files need the same --model-py to load)")


def user_model(args: argparse.Namespace) -> nn.Module | None:
    """A fresh instance of --model-py's architecture, or None; --model and --model-py together are refused."""
    spec = getattr(args, "model_py", None)
    if spec is None:
        return None
    if getattr(args, "model", None) is not None:
        raise ConfigError("give --model (a zoo architecture) or --model-py (your own), not both")
    return build_user_model(spec)


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
    add_out_args(s, out)
    s.add_argument("--no-progress", action="store_true")


def add_out_args(s: argparse.ArgumentParser, out: str) -> None:
    s.add_argument("--out", type=Path, default=Path(out), help=f"run directory (default {out}); rerunning the same "
                   "command resumes the run in it")
    s.add_argument("--overwrite", action="store_true", help="replace the run --out holds if it is another one")


def add_common_args(s: argparse.ArgumentParser) -> None:
    """Options every command takes."""
    s.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.add_argument("--sync-bn", action="store_true", help="under torchrun: BatchNorm layers normalise with the whole "
                   "global batch (as one process would), at the cost of an all-reduce per layer per step")


def add_distill_args(s: argparse.ArgumentParser, kinds: bool = False) -> None:
    """The distillation settings shared by the commands that distill; with `kinds`, also --distill KIND and what
    the feature and relation losses need (`Prepared.distilling` applies them)."""
    if kinds:
        s.add_argument("--distill", nargs="?", const="response", choices=list(DISTILL_KINDS), default=False,
                       help="fine-tune with knowledge distillation from MODEL (or --teacher): response (soft "
                       "targets, the default), feature (FitNets: the --distill-layers' feature maps through a "
                       "trained 1x1 adapter) or relation (--relation rkd or sp, on the --distill-layers)")
        s.add_argument("--teacher", type=Path, default=None, help="the teacher's cnnzip model file (default: MODEL)")
        s.add_argument("--distill-layers", default="", metavar="NAMES", help="comma-separated layers whose "
                       "features feature and relation distillation match (e.g. layer3)")
        s.add_argument("--relation", choices=["rkd", "sp"], default="rkd", help="the relation loss: RKD distances "
                       "and angles, or similarity-preserving")
        s.add_argument("--distill-weight", type=float, default=None, help="weight of the feature or relation term "
                       "(default: 1 for feature and rkd, 3000 for sp)")
    s.add_argument("--temperature", type=float, default=4.0)
    s.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")


# ---------------------------------------------------------------- progress and run directories


@dataclass
class Progress:
    """One line per stage on stderr, with the time since the command started; silent with --quiet."""

    quiet: bool = False
    started: float = field(default_factory=time.perf_counter)

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {text}", file=sys.stderr, flush=True)


RUN_FILE = "run.json"
# "out" is free: a run directory is the same run wherever it lies (moved, or a data-parallel rank's private copy).
_ALWAYS_FREE = frozenset({"func", "defaults", "no_progress", "quiet", "threads", "overwrite", "device", "fresh",
                          "out", "trains", "sync_bn"})


def _run_settings(args: argparse.Namespace, command: str, free: Iterable[str]) -> dict[str, Any]:
    skip = _ALWAYS_FREE | set(free)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items()) if k not in skip}
    return {"command": command, "settings": settings}


def _flag(name: str) -> str:
    if name == "recipe_resolved":  # (`compress`: its recipe, however it was spelled)
        return "the recipe"
    return "MODEL" if name == "model_path" else "--" + name.replace("_", "-")


def start_run(args: argparse.Namespace, command: str, free: Iterable[str] = (), say: Progress | None = None) -> Path:
    """Claim --out for this run before any work: a writable directory that is empty, or holds this same run
    (resumed), or another run that --overwrite replaces. Another run, or files that are no run, are refused."""
    out = Path(args.out)
    check_writable(out, "--out", directory=True)
    ours = _run_settings(args, command, free)
    files = [p for p in out.iterdir() if p.name != RUN_FILE] if out.is_dir() else []
    if files:
        try:
            saved = json.loads((out / RUN_FILE).read_text())
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict) or "settings" not in saved:
            raise ConfigError(f"--out {out} holds files that are not a cnnzip run; choose another directory")
        if saved.get("command") != command:
            what = f"a `cnnzip {saved.get('command')}` run"
        else:
            kept = {k: v for k, v in saved["settings"].items() if k not in _ALWAYS_FREE}
            diff = differences(kept, ours["settings"])
            defaults = getattr(args, "defaults", {})  # an option newer than the saved run, left at its default
            diff = [k for k in diff if k in kept or ours["settings"].get(k) != defaults.get(k, diff)]
            what = f"a run with other settings ({', '.join(_flag(k) for k in diff)})" if diff else None
        if what is None:
            if say is not None:
                say(f"resuming the run in {out}")
        elif getattr(args, "overwrite", False):
            shutil.rmtree(out)
            if say is not None:
                say(f"--overwrite: removed {what} from {out}")
        else:
            raise ConfigError(f"--out {out} holds {what}; rerun with its options to resume it, add --overwrite to "
                              "replace it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_FILE, json.dumps(ours, indent=2, default=str))
    return out


def check_writable(path: Path, option: str, directory: bool) -> None:
    """Fail before any work when `path` cannot be written: it (or a folder above it) is a file, or not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise ConfigError(f"{option} {path} is {'a file' if directory else 'a directory'}; give "
                          f"{'a directory' if directory else 'a file name'}")
    start = path if path.is_dir() else path.parent
    for parent in [start, *start.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, so nothing can be written under it")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {path}: {parent} is not writable; choose another place")
            return


def write_run_report(args: argparse.Namespace, command: str, sections: list) -> Path:
    """OUT/report.html for a command's run (see report.html), and one line that says where it is."""
    path = write_report(Path(args.out) / "report.html", f"cnnzip {command}", sections,
                        subtitle=f"MODEL {getattr(args, 'model_path', '-')}, data {getattr(args, 'data', '-')}.")
    print(f"report {path}")
    return path


def nonnegative(args: argparse.Namespace, *names: str) -> None:
    """Epoch and image counts: 0 means none; a negative count is a mistake, not 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ConfigError(f"{_flag(name)} must be 0 (none) or more; got {value}")


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
    say: Progress = field(default_factory=Progress)
    _teacher: nn.Module | None = None

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

    def recalibration(self, images: int, flag: str = "--recalibrate") -> list[torch.Tensor]:
        """Batches for BatchNorm recalibration: a fixed subset of the training images, augmented as the model was
        trained (`train.recalibrate_batchnorm` says why), in a fixed order, on the CPU."""
        loader = Loader(some(self.train, images, self.args.seed, flag), 64, shuffle=True,
                        augment=augment(self.args, self.data), mean=self.mean, std=self.std, seed=self.args.seed)
        return [x for x, _ in loader]

    def evaluator(self, split, batch_size: int = 500, device=None, on_device: bool = False):
        """An Evaluator of `split`; `on_device` puts the batches on the command's device."""
        loader = Loader(split, batch_size, mean=self.mean, std=self.std, device=self.device if on_device else "cpu")
        return Evaluator(loader, device=device)

    def distill_spec(self) -> DistillSpec | None:
        """The command's --distill settings, checked (None without --distill)."""
        if not getattr(self.args, "distill", None):
            return None
        layers = tuple(n.strip() for n in self.args.distill_layers.split(",") if n.strip())
        return DistillSpec(self.args.distill, layers, self.args.relation, self.args.temperature, self.args.alpha,
                           self.args.distill_weight)

    def teacher(self) -> nn.Module:
        """--teacher, checked against the data, or MODEL itself (a copy, taken now: MODEL may change later)."""
        if self._teacher is None:
            if getattr(self.args, "teacher", None) is None:
                self._teacher = copy.deepcopy(self.model).cpu().eval()
            else:
                check_model_file(self.args.teacher, None)
                teacher, meta = load_any(self.args.teacher)
                check_fits(teacher, meta, self.data, str(self.args.teacher))
                self._teacher = teacher.cpu().eval()
        return self._teacher

    def distilling(self, finetune):
        """`finetune`, distilling from the teacher as --distill says (unchanged without it). Call it before
        any long work: it checks the settings, the teacher and its layers."""
        spec = self.distill_spec()
        if spec is None:
            return finetune
        return distilling(finetune, spec, self.teacher(), torch.zeros(1, *self.shape))

    def distill_key(self) -> dict[str, Any]:
        """What the fine-tunes' checkpoints and run records must know of --distill."""
        spec = self.distill_spec()
        if spec is None:
            return {}
        teacher = getattr(self.args, "teacher", None)
        return {"distill": spec.as_dict() | ({"teacher": file_digest(teacher)} if teacher is not None else {})}

    def out_meta(self, **notes: Any):
        """The ModelMeta of what this command writes: its normalisation, input shape and classes."""
        return ModelMeta(self.mean, self.std, self.shape, self.data.classes, notes=notes)

    def finetuner(self, epochs: dict[str, int], batches=None, *, hooks=(), on_start=None, evaluator=None,
                  **fingerprint: Any) -> Finetuner:
        """The library's Finetuner with this command's settings; checkpoints in --out, keyed by the options."""
        return Finetuner(batches if batches is not None else self.batches(self.train), epochs,
                         TrainConfig(lr=self.args.lr, seed=self.args.seed), hooks=hooks, run_dir=self.args.out,
                         fingerprint=run_fingerprint(self.args, **fingerprint), device=self.device,
                         evaluator=evaluator, on_start=on_start,
                         progress=not (self.args.no_progress or getattr(self.args, "quiet", False)))


def prepare(args: argparse.Namespace, say: Progress | None = None, weights: bool = True) -> Prepared:
    """Device, dataset and splits, the model from MODEL (checked against the data), and its normalisation.

    The model file is checked before the data is read, so a wrong file fails in a second, not after decoding.
    With `weights`, MODEL must hold PyTorch weights (an ONNX file only runs; `eval` takes one).
    """
    say = say or Progress(getattr(args, "quiet", False))
    device = select_device(args.device)
    user = user_model(args)
    check_model_file(args.model_path, args.model, user is not None)
    say(f"reading the data ({args.data})")
    ds, train, val = dataset(args)
    say(f"loading {args.model_path}")
    model, meta = load_any(args.model_path, args.model, model=user, **model_kwargs(args, ds))
    if weights and isinstance(model, OnnxModel):
        raise ConfigError(f"{args.model_path} is an ONNX file: ONNX Runtime runs it, but it holds no PyTorch weights "
                          "to change. Give the cnnzip model file it was made from (`cnnzip eval` and `cnnzip info` "
                          "take ONNX files)")
    check_fits(model, meta, ds, str(args.model_path))
    mean, std = norm(args.norm, meta, ds)
    return Prepared(args, device, ds, train, val, model, meta, mean, std, say)


def check_model_file(path: Path, model_name: str | None, user: bool = False) -> None:
    """MODEL exists, is a file cnnzip reads, and raw weights come with --model (or --model-py, `user`): all before
    any data is read."""
    if model_name is not None and model_name not in list_models():
        raise ConfigError(f"unknown --model {model_name!r}; see `cnnzip models`")
    fmt = sniff(path) if Path(path).is_file() else None
    if fmt is not None and fmt.name != "model file":
        return
    blob = read_checkpoint(path)  # a clear error for a missing, damaged or unsafe file
    if model_name is None and not user and not is_model_file(blob):
        raise needs_architecture(path)
    if is_model_file(blob) and blob.get("spec") is None and not user:  # before the data is read, not after
        rebuild(None, {}, None, path, user=blob.get("user") if isinstance(blob.get("user"), str) else None)


def dataset(args: argparse.Namespace):
    val_size = args.val_size
    if val_size is not None and (val_size < 0 or (val_size >= 1 and val_size != int(val_size))):
        raise ConfigError(f"--val-size {val_size:g}: give a count of images (1 or more), a fraction in (0, 1), or "
                          "0 for no validation split")
    ds = load_dataset(args.data)
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
    if getattr(args, "model_py", None):  # the architecture's code: an edited factory is another run
        path, _, factory = args.model_py.rpartition(":")
        fp["model_py"] = f"{file_digest(Path(path))}:{factory}"
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


def norm(choice: str | None, meta, ds, raw_weights: bool = True) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation: --norm, else the model file's, else the data's (with a note for raw weights)."""
    if choice is None:
        if meta is not None:
            return tuple(meta.mean), tuple(meta.std)
        if raw_weights:
            print("cnnzip: note: raw weights carry no input normalisation, so the data's own mean and std are used "
                  "(--norm dataset); weights trained elsewhere often need --norm imagenet (the ../shared ResNets do)",
                  file=sys.stderr)
        return ds.mean, ds.std
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
