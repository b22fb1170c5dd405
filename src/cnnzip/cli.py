"""The `cnnzip` command: a thin layer over the Python API.

User mistakes (a wrong path, a checkpoint that does not fit, a bad setting) print one line that says what to do,
with no traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import CnnzipError, ConfigError

EPILOG_TRAIN = """examples:
  cnnzip train                                   # small CNN on scikit-learn digits, no download
  cnnzip train --model resnet20 --weights ../shared/models/resnet20-12fca82f.th --norm imagenet \\
      --data ../shared/datasets/cifar10-jpeg.tar.gz --epochs 1 --out runs/resnet20-ft
Rerunning the same command with the same --out resumes a killed run from its last finished epoch."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CnnzipError as exc:
        print(f"cnnzip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnzip: interrupted. Rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnzip", description="Shrink a trained CNN classifier to the smallest "
                                "model that still meets your accuracy target.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    s = sub.add_parser("models", help="list the architectures in the model zoo",
                       description="List the model zoo's architectures (names for --model).")
    s.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    s.add_argument("--details", action="store_true", help="also print parameters and MACs (10 classes, 32x32)")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("demo", help="train a small CNN on scikit-learn digits (no download) and report it",
                       description="The self-contained demo: trains a small CNN on scikit-learn's digits and "
                       "prints its accuracy and footprint. Needs no download and no data files.")
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="also save the model file here")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("train", help="train or fine-tune a model (resumable)", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a zoo model from scratch, or fine-tune it from weights, with SGD and a "
                       "cosine schedule. Writes OUT/checkpoint.pt every epoch, then OUT/model.pt (a cnnzip model "
                       "file) and OUT/metrics.json, and reports the test accuracy once at the end.")
    _add_data_args(s)
    s.add_argument("--model", default=None, help="architecture (see `cnnzip models`); default: small_cnn")
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
    s.add_argument("--out", type=Path, default=Path("runs/train"), help="run directory (default runs/train)")
    s.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out and start over")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("eval", help="accuracy of a model on a dataset split",
                       description="Accuracy of a model file or of raw weights (with --model) on a split. "
                       "With --target, also the pass/fail verdict, computed with the exact early exit.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="cnnzip model file or raw weights")
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")
    _add_data_args(s)
    s.add_argument("--split", choices=["test", "val", "train"], default="test")
    s.add_argument("--target", type=float, default=None, help="target accuracy in [0, 1]: stop as soon as the "
                   "verdict is certain and report it")
    s.add_argument("--batch-size", type=int, default=500)
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("prune", help="remove channels (structured pruning), verify, fine-tune, compare",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_PRUNE,
                       description="Remove whole channels from a model: choose them by importance, cut them "
                       "out of a copy, check the copy against the original with those channels zeroed, "
                       "optionally fine-tune, and print a before/after table (parameters, MACs, bytes, CPU "
                       "latency in eager PyTorch and ONNX Runtime, test accuracy). Writes OUT/pruned.pt and "
                       "OUT/report.json.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="cnnzip model file or raw weights")
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")
    _add_data_args(s)
    s.add_argument("--method", choices=["slimming", "l1", "l2", "fpgm", "random"], default="l1",
                   help="importance: slimming = |BatchNorm gamma|, l1/l2 = filter norm, fpgm = distance to the "
                   "geometric median, random = baseline")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of the prunable channels to remove")
    how.add_argument("--threshold", type=float, help="remove channels scoring below this (slimming: |gamma|)")
    how.add_argument("--macs-reduction", type=float, help="prune until MACs fall by this fraction (e.g. 0.4)")
    s.add_argument("--scope", choices=["auto", "global", "layer"], default="auto",
                   help="rank channels over all layers (global) or within each layer (default: global for "
                   "slimming and thresholds, per layer otherwise)")
    s.add_argument("--min-channels", type=int, default=1, help="channels every layer keeps (default 1)")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="leave layers matching this name or regex alone (repeatable)")
    s.add_argument("--finetune-epochs", type=int, default=0)
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    s.add_argument("--no-augment", action="store_true", help="fine-tune without random crop and flip")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency-batches", default="1,256", help="batch sizes to time, comma-separated, or 'none'")
    s.add_argument("--latency-repeats", type=int, default=20)
    s.add_argument("--out", type=Path, default=Path("runs/prune"))
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("deep-compress", help="magnitude pruning + weight sharing + Huffman coding into one file",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_DEEP,
                       description="Deep compression (Han et al. 2016): zero the smallest weights (masks fixed "
                       "while fine-tuning), cluster each layer's surviving weights into 2^bits shared values, "
                       "Huffman-code indices and positions, and write OUT/model.cnnz, the file you ship. Prints "
                       "the size at each stage beside the entropy bound, and the test accuracy, and checks that "
                       "the file loads back to the same model. `cnnzip eval` and `cnnzip info` read the file.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="cnnzip model file or raw weights")
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")
    _add_data_args(s)
    how = s.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, default=None, help="fraction of conv/linear weights to zero")
    how.add_argument("--std-multiplier", type=float, default=None,
                     help="the paper's rule: zero |w| < k * std(w) in each layer")
    s.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="one magnitude threshold for all layers, or the same sparsity in each")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="keep these weights dense and unshared (repeatable), e.g. conv1.weight")
    s.add_argument("--conv-bits", type=int, default=8, help="index bits for conv layers (2^bits clusters)")
    s.add_argument("--fc-bits", type=int, default=5, help="index bits for linear layers")
    s.add_argument("--finetune-epochs", type=int, default=0, help="epochs after pruning, masks fixed")
    s.add_argument("--centroid-epochs", type=int, default=0, help="epochs of centroid fine-tuning after sharing")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-layer", action="store_true", help="print the size of every layer")
    s.add_argument("--out", type=Path, default=Path("runs/deep"))
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_deep)

    s = sub.add_parser("search", help="find the smallest file that meets a target accuracy (slimming + deep "
                       "compression)", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SEARCH,
                       description="Search the ratios of network slimming and deep compression, in either order, "
                       "for the smallest compressed file whose validation accuracy meets the target. Every "
                       "accuracy check is recorded in OUT/trials.jsonl; rerun the same command to resume. The "
                       "winner is written to OUT/best.cnnz and evaluated once on the test split.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="cnnzip model file or raw weights (for "
                   "slimming, a model trained with --sparsity)")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    _add_data_args(s)
    goal = s.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-acc", type=float, help="validation accuracy to meet, e.g. 0.90")
    goal.add_argument("--drop", type=float, help="accepted drop below the baseline's validation accuracy, "
                      "e.g. 0.01 for one point")
    s.add_argument("--strategy", choices=["grid", "margin", "bisect"], default="bisect")
    s.add_argument("--order", choices=["ns-dc", "dc-ns", "ns", "dc"], default="ns-dc",
                   help="methods and their order: ns = network slimming, dc = deep compression")
    s.add_argument("--structured", choices=["slimming", "l1", "l2", "fpgm"], default="slimming")
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
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--out", type=Path, default=Path("runs/search"))
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("dynamic-prune", help="remove mostly-zero channels, threshold set by binary search on "
                       "fine-tuned accuracy", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EPILOG_DYNAMIC, description="Dynamic pruning (Electronics 2023, 12, 1208): measure "
                       "each channel's zero fraction on the validation split, remove the channels above a threshold, "
                       "fine-tune, and binary-search the threshold (from [0.5, 1.0] until the interval is below "
                       "--tolerance) so that the fine-tuned model meets the target; repeat --iterations times. "
                       "Rerun the same command to resume. Writes OUT/pruned.pt and OUT/report.json.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="cnnzip model file or raw weights")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    _add_data_args(s)
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
    s.add_argument("--distill", action="store_true", help="fine-tune trials and recoveries with knowledge "
                   "distillation from MODEL (--temperature, --alpha): faster recovery on short budgets; the paper "
                   "uses plain cross-entropy")
    _add_distill_args(s)
    s.add_argument("--lower", type=float, default=0.5, help="initial lower end of the threshold interval")
    s.add_argument("--upper", type=float, default=1.0)
    s.add_argument("--tolerance", type=float, default=0.03, help="stop when the interval is narrower")
    s.add_argument("--min-channels", type=int, default=1)
    s.add_argument("--residual-stream", action="store_true", help="also prune channels tied to residual "
                   "additions (default: only block inner widths, as the paper)")
    s.add_argument("--sparsity-images", type=int, default=None, help="validation images for the sparsity "
                   "measurement (default: all)")
    _add_finetune_args(s, "runs/dynamic")
    s.set_defaults(func=_cmd_dynamic)

    s = sub.add_parser("fuse", help="layer fusion: remove thin residual blocks with distillation",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_FUSE,
                       description="Layer fusion (Electronics 2023, 12, 1208): repeatedly remove the thinnest "
                       "residual block with an identity shortcut, fine-tune the block before it (the carrier) "
                       "with knowledge distillation from MODEL, and fine-tune the whole network every --every "
                       "removals; stop when validation accuracy falls more than --max-drop below MODEL's. Keeps "
                       "OUT/fused-<k>.pt after each long fine-tune and prints depth, fused layers, MACs and "
                       "accuracy. Rerun the same command to resume.")
    s.add_argument("model_path", type=Path, metavar="MODEL", help="the (pruned) model: also the teacher")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    _add_data_args(s)
    s.add_argument("--short-epochs", type=int, default=1, help="epochs of the carrier's fine-tune per removal")
    s.add_argument("--short-images", type=int, default=5000, help="training images of each short fine-tune's "
                   "epoch (a fixed random subset, sized for a CPU); 0: all of them")
    s.add_argument("--long-epochs", type=int, default=2, help="epochs of the whole network's fine-tune")
    s.add_argument("--every", type=int, default=4, help="long fine-tune after this many removals")
    s.add_argument("--max-drop", type=float, default=0.03)
    s.add_argument("--loss", choices=["kd", "ce"], default="kd", help="kd: distillation from MODEL (T, alpha); "
                   "ce: plain cross-entropy (ablation)")
    _add_distill_args(s)
    s.add_argument("--no-short", action="store_true", help="skip the short fine-tunes (ablation)")
    s.add_argument("--max-width", type=int, default=None, help="only blocks at most this many channels wide")
    s.add_argument("--max-removals", type=int, default=None)
    s.add_argument("--scratch-epochs", type=int, default=0, help="ablation: also train the final architecture "
                   "from new weights for this many epochs and report its accuracy")
    _add_finetune_args(s, "runs/fuse")
    s.set_defaults(func=_cmd_fuse)

    s = sub.add_parser("export", help="write a model as an ONNX file (checked against PyTorch)",
                       description="Export a model file or raw weights to ONNX with a dynamic batch size. The "
                       "file is checked with onnx.checker and its outputs compared with PyTorch's before it is "
                       "written.")
    s.add_argument("model_path", type=Path, metavar="MODEL")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--input-shape", default=None, help="C,H,W (default: the model file's, else 3,32,32)")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("info", help="parameters, MACs, size and CPU latency of a model",
                       description="Footprint of a zoo architecture (by name) or of a model file: parameters, "
                       "nonzero parameters, MACs, bytes, and latency at the given batch sizes.")
    s.add_argument("target", metavar="MODEL", help="zoo name (e.g. resnet56) or path to a model file/weights")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--width", type=float, default=None)
    s.add_argument("--input-shape", default=None, help="C,H,W (default 3,32,32 or the model file's)")
    s.add_argument("--batch-sizes", default="1,256", help="latency batch sizes, comma-separated (default 1,256)")
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=_cmd_info)
    return p


EPILOG_PRUNE = """examples:
  cnnzip prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --method fpgm --macs-reduction 0.4 --finetune-epochs 3 --out runs/r56-fpgm
  cnnzip prune runs/vgg-sparse/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --method slimming --ratio 0.6 --finetune-epochs 5 --out runs/vgg-slim60
Channels whose coupling cnnzip cannot verify (such as the zero-padded shortcut of CIFAR ResNets) are left
alone and listed."""


EPILOG_DEEP = """examples:
  cnnzip deep-compress runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --sparsity 0.8 --finetune-epochs 1 --conv-bits 5 --fc-bits 5 --out runs/r56-dc
  cnnzip eval runs/r56-dc/model.cnnz --data ../shared/datasets/cifar10-jpeg.tar.gz"""


EPILOG_DYNAMIC = """examples:
  # CPU-sized (the defaults): each trial fine-tuned on 10,000 images and judged 4 points below the start;
  # each iteration's winner then trained 2 epochs on everything
  cnnzip dynamic-prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --iterations 3 --out runs/r56-dynamic
  # the paper's recipe (a GPU): every trial fine-tuned on all images, target slightly below the start
  cnnzip dynamic-prune runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --drop 0.005 --epochs 30 --trial-images 0 --recover-epochs 0 --out runs/r56-dynamic-gpu
"""

EPILOG_FUSE = """examples:
  cnnzip fuse runs/r56-dynamic/pruned.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --short-epochs 1 --long-epochs 2 --every 4 --out runs/r56-fuse
  cnnzip fuse runs/r56-dynamic/pruned.pt --data ... --loss ce --out runs/r56-fuse-ce     # ablation
"""

EPILOG_SEARCH = """examples:
  cnnzip search runs/vgg-sparse/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --drop 0.01 --strategy bisect --out runs/vgg-search
  cnnzip search runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --target-acc 0.88 --strategy margin --margin 5 --step 0.05 --out runs/r56-margin
Decisions use the validation split (held out from the training images); the test split is used once, at the
end, for the winner."""


def _add_finetune_args(s: argparse.ArgumentParser, out: str) -> None:
    s.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (cosine schedule)")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=Path(out))
    s.add_argument("--no-progress", action="store_true")


def _add_data_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", default="digits", help="digits (default, bundled), cifar10:ROOT, cifar100:ROOT, or "
                   "an image-folder tree / .tar.gz such as ../shared/datasets/cifar10-jpeg.tar.gz")
    s.add_argument("--norm", default=None, help="input normalisation: 'dataset' (mean/std of the training images, "
                   "the default for new models), 'imagenet' (what the ../shared ResNets were trained with), or "
                   "'m1,m2,m3:s1,s2,s3'. A cnnzip model file carries its own.")
    s.add_argument("--val-size", type=float, default=None, help="training images held out for validation: a "
                   "count or a fraction (default 5000, or 10%% for small datasets)")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")


# ---------------------------------------------------------------- commands

def _cmd_models(args) -> int:
    from .measure import count_macs, count_parameters
    from .models import create_model, list_models

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; run `cnnzip models` to see them all")
    for name in names:
        if args.details:
            m = create_model(name, num_classes=10)
            shape = (1, 8, 8) if name == "small_cnn" else (3, 32, 32)
            if name == "small_cnn":
                m = create_model(name, num_classes=10, in_channels=1)
            print(f"{name:<18} {count_parameters(m) / 1e6:8.3f}M params {count_macs(m, shape) / 1e6:9.1f}M MACs")
        else:
            print(name)
    return 0


def _cmd_demo(args) -> int:
    from .data import Loader, load_digits, train_val_split
    from .measure import Evaluator, footprint, measure_latency
    from .modelfile import ModelMeta, save_model
    from .models import create_model
    from .train import TrainConfig, fit

    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.1, seed=args.seed)
    torch_seed(args.seed)
    model = create_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels)
    config = TrainConfig(epochs=args.epochs, lr=0.05, weight_decay=5e-4, seed=args.seed)
    batches = Loader(train, 64, shuffle=True, augment=False, mean=ds.mean, std=ds.std, seed=args.seed)
    started = time.perf_counter()
    fit(model, batches, config, progress=False, device="cpu")
    seconds = time.perf_counter() - started
    val_acc = Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std)).evaluate(model).accuracy
    test_acc = Evaluator(Loader(ds.test, 500, mean=ds.mean, std=ds.std)).evaluate(model).accuracy
    fp = footprint(model, (ds.in_channels, *ds.image_size))
    lat = measure_latency(model, (ds.in_channels, *ds.image_size), 1, repeats=50)
    print(f"small_cnn on scikit-learn digits ({len(train)} train / {len(val)} val / {len(ds.test)} test images), "
          f"{args.epochs} epochs in {seconds:.1f} s")
    print(f"  validation accuracy {val_acc:.2%}   test accuracy {test_acc:.2%}")
    print(f"  parameters {fp.parameters:,}   MACs {fp.macs:,}   fp32 file {fp.saved_bytes:,} bytes   "
          f"latency (batch 1, CPU) {lat.median_ms:.2f} ms")
    if args.out:
        save_model(args.out, model, ModelMeta(ds.mean, ds.std, (ds.in_channels, *ds.image_size), ds.classes))
        print(f"  saved {args.out}")
    return 0


def _cmd_train(args) -> int:
    from .data import Loader
    from .measure import Evaluator
    from .modelfile import ModelMeta, load_any, save_model
    from .models import create_model
    from .train import TrainConfig, fit, select_device

    device = select_device(args.device)
    ds, train, val = _dataset(args)
    name = args.model or "small_cnn"
    kwargs = _model_kwargs(args, ds)
    if args.weights is not None:
        model, meta = load_any(args.weights, name, **kwargs)
        _check_fits(model, meta, ds, str(args.weights))
    else:
        torch_seed(args.seed)
        model, meta = create_model(name, **kwargs), None
    mean, std = _norm(args.norm, meta, ds)
    lr = args.lr if args.lr is not None else (0.01 if args.weights is not None else 0.1)
    config = TrainConfig(epochs=args.epochs, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                         warmup_epochs=args.warmup_epochs, seed=args.seed)
    out: Path = args.out
    checkpoint = out / "checkpoint.pt"
    if args.fresh and checkpoint.exists():
        checkpoint.unlink()
    if checkpoint.exists():
        print(f"resuming from {checkpoint}", file=sys.stderr)
    batches = Loader(train, args.batch_size, shuffle=True, augment=_augment(args, ds), mean=mean, std=std,
                     seed=args.seed, drop_last=False, device=device)
    evaluator = Evaluator(Loader(val, 500, mean=mean, std=std, device=device)) if val is not None else None
    hooks = []
    if args.sparsity:
        from .prune import SparsityHook

        hooks.append(SparsityHook(args.sparsity))
    fingerprint = _fingerprint(args, model=name, width=args.width, sparsity=args.sparsity)
    result = fit(model, batches, config, hooks=hooks, evaluator=evaluator, checkpoint=checkpoint, device=device,
                 progress=not args.no_progress, fingerprint=fingerprint)
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std, device=device)).evaluate(model)
    meta = ModelMeta(mean, std, (ds.in_channels, *ds.image_size), ds.classes,
                     notes={"trained_on": ds.name, "train_config": config.__dict__})
    save_model(out / "model.pt", model, meta)
    summary = {"model": name, "data": args.data, "sparsity": args.sparsity, "epochs": result.history,
               "test_acc": test.accuracy,
               "resumed_from_epoch": result.resumed_from_epoch, "config": config.__dict__}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    for h in result.history:
        val_txt = f"  val_acc {h['val_acc']:.4f}" if "val_acc" in h else ""
        print(f"epoch {h['epoch']:>3}  loss {h['loss']:.4f}  train_acc {h['train_acc']:.4f}{val_txt}  "
              f"{h['seconds']:.1f} s  {h['images_per_second']:.0f} img/s")
    print(f"test accuracy {test.accuracy:.4f} ({test.correct}/{test.total})")
    print(f"saved {out / 'model.pt'}")
    return 0


def _cmd_eval(args) -> int:
    from .data import Loader
    from .measure import Evaluator

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    split = {"test": ds.test, "train": train, "val": val}[args.split]
    if split is None:
        raise ConfigError("--split val needs a validation split: set --val-size above 0")
    evaluator = Evaluator(Loader(split, args.batch_size, mean=mean, std=std), device=device)
    model.to(device)
    if args.target is None:
        r = evaluator.evaluate(model)
        print(f"{args.split} accuracy {r.accuracy:.4f} ({r.correct}/{r.total})")
    else:
        if not 0 <= args.target <= 1:
            raise ConfigError(f"--target is an accuracy in [0, 1], got {args.target}")
        r = evaluator.check(model, args.target)
        verdict = "PASS" if r.passed else "FAIL"
        print(f"{verdict}: accuracy >= {args.target} is {bool(r.passed)} on {args.split}, decided after "
              f"{r.evaluated}/{r.total} images ({r.correct} correct so far)")
    return 0


def _cmd_prune(args) -> int:
    import torch

    from .data import Loader
    from .measure import Evaluator
    from .modelfile import ModelMeta, save_model
    from .prune import ChannelPruning, prune_channels, prune_to_macs
    from .report import describe, format_table, ratio_row
    from .train import TrainConfig, fit

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    shape = (ds.in_channels, *ds.image_size)
    batches_latency = [] if args.latency_batches == "none" else _int_list(args.latency_batches, "--latency-batches")
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std), device="cpu")

    def measure(m, latency=True):
        return describe(m.cpu().eval(), shape, evaluator=test, latency_batches=batches_latency if latency else (),
                        repeats=args.latency_repeats)

    before = measure(model)
    config = ChannelPruning(method=args.method, ratio=args.ratio, threshold=args.threshold, scope=args.scope,
                            min_channels=args.min_channels, skip=tuple(args.skip), seed=args.seed)
    example = torch.zeros(1, *shape)
    if args.macs_reduction is not None:
        result = prune_to_macs(model, config, example, args.macs_reduction)
    else:
        result = prune_channels(model, config, example)
    pruned = result.model
    rows = {"original": before}
    if args.finetune_epochs > 0:
        rows["pruned"] = measure(pruned, latency=False)
        batches = Loader(train, args.batch_size, shuffle=True, augment=_augment(args, ds), mean=mean, std=std,
                         seed=args.seed, device=device)
        evaluator = Evaluator(Loader(val, 500, mean=mean, std=std, device=device)) if val is not None else None
        cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=args.seed)
        # The checkpoint is keyed by what was pruned from which weights: other settings start a fresh fine-tune.
        fingerprint = _fingerprint(args, pruning=config.__dict__, removed=result.removed)
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
        fit(pruned, batches, cfg, evaluator=evaluator, checkpoint=args.out / f"finetune-{key}.pt",
            device=device, progress=not args.no_progress, fingerprint=fingerprint)
        rows["pruned+finetuned"] = measure(pruned)
    else:
        rows["pruned"] = measure(pruned)
    after = rows[list(rows)[-1]]
    out_meta = ModelMeta(mean, std, shape, ds.classes, notes={"pruned": config.__dict__ | {"skip": list(config.skip)},
                                                              "from": str(args.model_path)})
    save_model(args.out / "pruned.pt", pruned.cpu(), out_meta)
    report = {"config": config.__dict__ | {"skip": list(config.skip)}, "macs_reduction_goal": args.macs_reduction,
              "finetune_epochs": args.finetune_epochs, "rows": rows, "widths": result.widths,
              "excluded": result.excluded, "verification_max_error": result.max_error, "notes": result.notes}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(format_table(rows, ratio_row(before, after)))
    print(f"removed {result.channels_removed} channels from {sum(1 for v in result.removed.values() if v)} layers; "
          f"surgery verified (max relative difference {result.max_error:.1e} against the masked original)")
    for name, why in result.excluded.items():
        print(f"left alone: {name}: {why}")
    print(f"saved {args.out / 'pruned.pt'}")
    return 0


def _cmd_deep(args) -> int:
    from .data import Loader
    from .deep import (
        MagnitudePruning,
        WeightSharing,
        deep_compress,
        load_compressed,
        save_compressed,
        sparsity,
    )
    from .measure import Evaluator
    from .modelfile import ModelMeta

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    shape = (ds.in_channels, *ds.image_size)
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std), device="cpu")
    pruning = None
    if args.sparsity is not None or args.std_multiplier is not None:
        pruning = MagnitudePruning(ratio=args.sparsity, std_multiplier=args.std_multiplier, scope=args.scope,
                                   skip=tuple(args.skip))
    sharing = WeightSharing(conv_bits=args.conv_bits, fc_bits=args.fc_bits, skip=tuple(args.skip))
    batches = Loader(train, args.batch_size, shuffle=True, augment=_augment(args, ds), mean=mean, std=std,
                     seed=args.seed, device=device)
    accuracy = {"original": test.evaluate(model).accuracy}
    run = _stage_trainer(args, batches, device, {"pruned": args.finetune_epochs, "shared": args.centroid_epochs},
                         on_start=lambda stage, m: accuracy.update({f"{stage} (before fine-tune)":
                                                                    test.evaluate(m).accuracy}),
                         sparsity=args.sparsity, std=args.std_multiplier, scope=args.scope, skip=args.skip,
                         bits=[args.conv_bits, args.fc_bits])
    shared, books = deep_compress(model, pruning, sharing, finetune=functools.partial(run, "pruned"),
                                  centroid_finetune=functools.partial(run, "shared"))
    accuracy["compressed"] = test.evaluate(shared).accuracy
    out_meta = ModelMeta(mean, std, shape, ds.classes, notes={"from": str(args.model_path)})
    path = args.out / "model.cnnz"
    report = save_compressed(path, shared, books, out_meta)
    loaded, _ = load_compressed(path)
    reloaded = test.evaluate(loaded).accuracy
    if reloaded != accuracy["compressed"]:
        raise RuntimeError("internal error: the file does not reload to the compressed model; please report it")
    totals = report.totals()
    (args.out / "report.json").write_text(json.dumps({"sizes": report.as_dict(), "accuracy": accuracy,
                                                       "sparsity": sparsity(shared, args.skip)}, indent=2))
    if args.per_layer:
        print(f"{'layer':<28}{'layout':>7}{'fp32':>11}{'pruned':>11}{'shared':>11}{'huffman':>11}{'entropy':>11}")
        for layer in report.layers:
            print(f"{layer.name:<28}{layer.layout:>7}{layer.dense_fp32:>11,}{layer.pruned_sparse:>11,}"
                  f"{layer.shared:>11,}{layer.huffman:>11,}{layer.entropy:>11,.0f}")
    print(f"weights: fp32 {totals['dense_fp32']:,.0f} B -> pruned {totals['pruned_sparse']:,.0f} -> shared "
          f"{totals['shared']:,.0f} -> Huffman {totals['huffman']:,.0f} (entropy bound {totals['entropy']:,.0f})")
    print(f"file {path}: {totals['file']:,.0f} bytes (raw tensors {totals['raw']:,.0f}, header "
          f"{totals['header']:,.0f}); fp32 state dict {totals['dense_state_dict']:,.0f} bytes: "
          f"{totals['ratio']:.1f}x smaller")
    print(f"sparsity {sparsity(shared, args.skip):.1%}; " + "; ".join(f"{k} {v:.2%}" for k, v in accuracy.items())
          + " (test accuracy; the file reloads to the same accuracy)")
    return 0


def _cmd_search(args) -> int:
    from .data import Loader
    from .measure import Evaluator
    from .modelfile import ModelMeta, load
    from .search import Pipeline, SearchConfig, search

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    if val is None:
        raise ConfigError("a search decides on a validation split: set --val-size above 0")
    meta = ModelMeta(mean, std, (ds.in_channels, *ds.image_size), ds.classes)
    config = SearchConfig(
        pipeline=Pipeline(order=args.order, structured=args.structured, conv_bits=args.conv_bits,
                          fc_bits=args.fc_bits),
        strategy=args.strategy, target=args.target_acc, drop=args.drop, step=args.step, max_ratio=args.max_ratio,
        margin=args.margin, max_checks=args.max_checks, time_budget=args.time_budget)
    evaluator = Evaluator(Loader(val, args.batch_size, mean=mean, std=std))
    epochs = {"structured": args.structured_epochs, "final": args.finetune_epochs, "shared": args.centroid_epochs}
    finetune = None
    if any(epochs.values()):
        batches = Loader(train, args.train_batch_size, shuffle=True, augment=_augment(args, ds), mean=mean,
                         std=std, seed=args.seed, device=device)
        finetune = _stage_trainer(args, batches, device, epochs, train_batch_size=args.train_batch_size,
                                  search=config.as_dict())
    result = search(model.cpu().eval(), evaluator, meta, config, args.out, finetune=finetune)
    cost = result.cost
    print(f"baseline validation accuracy {result.baseline_accuracy:.2%}; target {result.target:.2%}")
    print(f"{cost['checks']:.0f} accuracy checks, {cost['images']:,.0f} images evaluated, {cost['seconds']:.0f} s"
          + ("" if result.complete else " (stopped by the budget: rerun without it to finish)"))
    if result.best is None:
        print("no candidate met the target, even the smallest ratios; the model itself may be below it")
        return 1
    best = result.best
    winner, _ = load(result.path)
    test = Evaluator(Loader(ds.test, args.batch_size, mean=mean, std=std)).evaluate(winner).accuracy
    names = dict(zip(config.pipeline.axes, best.ratios, strict=True))
    print(f"smallest passing: {', '.join(f'{k} ratio {v:.2f}' for k, v in names.items())}: {best.size:,} bytes, "
          f"validation accuracy {best.accuracy:.2%}{'' if best.complete else ' (early exit)'}")
    if result.finetuned:
        print(f"after fine-tuning: {result.final_size:,} bytes, validation accuracy {result.final_accuracy:.2%}")
    print(f"test accuracy (evaluated once) {test:.2%}; file {result.path}")
    summary = result.as_dict() | {"test_accuracy": test}
    (args.out / "result.json").write_text(json.dumps(summary, indent=2))
    return 0


def _cmd_dynamic(args) -> int:
    from dataclasses import asdict

    from .data import Loader
    from .distill import Distillation
    from .measure import Evaluator, count_macs, count_parameters
    from .modelfile import ModelMeta
    from .prune.dynamic import DynamicPruning, dynamic_prune

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    if val is None:
        raise ConfigError("dynamic pruning measures sparsity and judges trials on a validation split: set "
                          "--val-size above 0")
    shape = (ds.in_channels, *ds.image_size)
    config = DynamicPruning(target=args.target_acc, drop=None if args.target_acc is not None else
                            (args.drop if args.drop is not None else 0.04), lower=args.lower, upper=args.upper,
                            tolerance=args.tolerance, iterations=args.iterations, min_channels=args.min_channels,
                            residual_stream=args.residual_stream, max_images=args.sparsity_images)
    out_meta = ModelMeta(mean, std, shape, ds.classes, notes={"from": str(args.model_path), "dynamic": True})
    def batches(split):
        return Loader(split, args.batch_size, shuffle=True, augment=_augment(args, ds), mean=mean, std=std,
                      seed=args.seed, device=device)

    if args.recover_epochs < 0 or args.epochs < 1:
        raise ConfigError("--epochs must be at least 1 and --recover-epochs 0 (no recovery) or more")
    # More --iterations extend a run: the fine-tunes' checkpoints do not depend on them.
    key = str({k: v for k, v in asdict(config).items() if k != "iterations"})
    # (recorded only when given: runs from before the option still resume)
    distill = {"distill": {"temperature": args.temperature, "alpha": args.alpha}} if args.distill else {}
    hooks = [Distillation(model, **distill["distill"])] if distill else []
    run = _stage_trainer(args, batches(_some(train, args.trial_images, args.seed, "--trial-images")), device,
                         {"trial": args.epochs}, config=key, trial_images=args.trial_images, **distill)
    recover = None
    if args.recover_epochs > 0:
        run_recover = _stage_trainer(args, batches(train), device, {"recover": args.recover_epochs}, config=key,
                                     **distill)
        recover = lambda tag, m: run_recover("recover", m, hooks, tag=tag)  # noqa: E731
    evaluator = Evaluator(Loader(val, 500, mean=mean, std=std))
    training = {"epochs": args.epochs, "trial_images": args.trial_images, "recover_epochs": args.recover_epochs,
                "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "augment": not args.no_augment,
                **distill}
    result = dynamic_prune(model.cpu().eval(), evaluator, lambda tag, m: run("trial", m, hooks, tag=tag), config,
                           out_meta, args.out, recover=recover, training=training, device=device)
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std))
    accuracy = {"original": test.evaluate(model.cpu()).accuracy, "pruned": test.evaluate(result.model).accuracy}
    print(f"{'iter':>4} {'threshold':>9} {'removed':>8} {'MACs':>13} {'val acc':>8}  verdict")
    for t in result.trials:
        print(f"{t['iteration']:>4} {t['threshold']:>9.4f} {t['removed']:>8} {t['macs']:>13,} {t['accuracy']:>8.2%}  "
              + ("meets" if t["passed"] else "misses") + f" {result.target:.2%}")
    before, after = result.macs
    print(f"MACs {before:,} -> {after:,} ({1 - after / before:.1%} fewer); parameters {count_parameters(model):,} -> "
          f"{count_parameters(result.model):,}")
    print(f"validation accuracy {result.baseline_accuracy:.2%} -> {result.accuracy:.2%}; test accuracy (once) "
          f"{accuracy['original']:.2%} -> {accuracy['pruned']:.2%}")
    for it, r in sorted(result.recovered.items(), key=lambda kv: int(kv[0])):
        kept = "" if r["after"] >= r["before"] else f" (worse: kept its weights before, {r['accuracy']:.2%})"
        print(f"iteration {it}: the winner {r['from']} fine-tuned longer, {r['before']:.2%} -> {r['after']:.2%}{kept}")
    report = {"config": config.__dict__ | {"skip": list(config.skip)}, "epochs": args.epochs,
              "trial_images": args.trial_images, "recover_epochs": args.recover_epochs,
              "recovered": result.recovered,
              "macs": {"before": before, "after": after, "reduction": 1 - after / before},
              "params": {"before": count_parameters(model), "after": count_parameters(result.model)},
              "validation": {"before": result.baseline_accuracy, "after": result.accuracy, "target": result.target},
              "test": accuracy, "trials": result.trials, "macs_check": count_macs(result.model, shape)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"saved {result.path}")
    return 0


def _cmd_fuse(args) -> int:
    from .data import Loader
    from .measure import Evaluator
    from .modelfile import ModelMeta, save_model
    from .prune.fusion import LayerFusion, fresh_copy, fuse_layers
    from .train import TrainConfig, fit

    device, ds, train, val, model, meta, mean, std = _prepare(args)
    if val is None:
        raise ConfigError("layer fusion judges every step on a validation split: set --val-size above 0")
    if min(args.short_epochs, args.long_epochs, args.scratch_epochs) < 0:
        raise ConfigError("--short-epochs, --long-epochs and --scratch-epochs must be 0 (none) or more")
    shape = (ds.in_channels, *ds.image_size)
    config = LayerFusion(loss=args.loss, temperature=args.temperature, alpha=args.alpha, short=not args.no_short,
                         long_every=args.every, max_drop=args.max_drop, max_width=args.max_width,
                         max_removals=args.max_removals)
    out_meta = ModelMeta(mean, std, shape, ds.classes, notes={"from": str(args.model_path), "fused": True})

    def loader(split):
        return Loader(split, args.batch_size, shuffle=True, augment=_augment(args, ds), mean=mean, std=std,
                      seed=args.seed, device=device)

    batches = loader(train)
    run = _stage_trainer(args, batches, device, {"long": args.long_epochs}, config=str(config))
    run_short = _stage_trainer(args, loader(_some(train, args.short_images, args.seed, "--short-images")), device,
                               {"short": args.short_epochs}, config=str(config), short_images=args.short_images)

    def short(tag, m, params, hooks):
        run_short("short", m, hooks, tag=tag, parameters=params)

    evaluator = Evaluator(Loader(val, 500, mean=mean, std=std))
    training = {"short_epochs": args.short_epochs, "short_images": args.short_images, "long_epochs": args.long_epochs,
                "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "augment": not args.no_augment}
    result = fuse_layers(model.cpu().eval(), evaluator, short, lambda tag, m, hooks: run("long", m, hooks, tag=tag),
                         config, out_meta, args.out, training=training)
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std))
    print(f"{'removed':>7} {'depth':>5} {'fused layers':>12} {'MACs':>13} {'val acc':>8}")
    for r in result.rows:
        print(f"{r['removed']:>7} {r['depth']:>5} {r['fused_layers']:>12} {r['macs']:>13,} {r['accuracy']:>8.2%}"
              + ("  below the floor: stopped" if r.get("below_floor") else ""))
    report = {"config": config.__dict__, "rows": result.rows, "reference_val_accuracy": result.reference_accuracy,
              "test": {"pruned": test.evaluate(model.cpu()).accuracy, "fused": test.evaluate(result.model).accuracy}}
    if args.scratch_epochs > 0:
        scratch = fresh_copy(result.model, seed=args.seed)
        fit(scratch, batches, TrainConfig(epochs=args.scratch_epochs, lr=0.1, seed=args.seed), device=device,
            checkpoint=args.out / "scratch.pt", progress=not args.no_progress,
            fingerprint=_fingerprint(args, scratch=str(result.path)))
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
    return 0


def _cmd_export(args) -> int:
    from .deploy import export_onnx
    from .modelfile import load_any

    model, meta = load_any(args.model_path, args.model, num_classes=args.num_classes)
    shape = _parse_shape(args.input_shape) if args.input_shape else (meta.input_shape if meta else (3, 32, 32))
    path = export_onnx(model, args.out, shape, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size:,} bytes), outputs checked against PyTorch")
    return 0


def _cmd_info(args) -> int:
    from .measure import footprint, measure_latency
    from .modelfile import load_any
    from .models import create_model, list_models
    from .train import select_device

    kwargs = {"num_classes": args.num_classes}
    if args.width is not None:
        kwargs["width"] = args.width
    meta = None
    if args.target in list_models() and not Path(args.target).exists():
        model = create_model(args.target, **kwargs)
    else:
        model, meta = load_any(args.target, args.model, **kwargs)
    shape = _parse_shape(args.input_shape) if args.input_shape else (meta.input_shape if meta else (3, 32, 32))
    model.to(select_device(args.device)).eval()
    fp = footprint(model, shape)
    lat = [measure_latency(model, shape, b, repeats=args.repeats) for b in _int_list(args.batch_sizes, "--batch-sizes")]
    info = {"model": args.target, "input_shape": list(shape), **fp.as_dict(),
            "latency": [{"batch_size": x.batch_size, "median_ms": x.median_ms,
                         "images_per_second": x.images_per_second} for x in lat]}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model          {args.target}  (input {tuple(shape)})")
    print(f"parameters     {fp.parameters:,}  ({fp.nonzero:,} nonzero)")
    print(f"MACs           {fp.macs:,}  ({fp.macs / 1e6:.1f}M)")
    print(f"dense bytes    {fp.dense_bytes:,}")
    print(f"saved bytes    {fp.saved_bytes:,}  (torch.save of the fp32 state dict)")
    for x in lat:
        print(f"latency b={x.batch_size:<4} {x.median_ms:9.3f} ms median  {x.images_per_second:10.1f} img/s "
              f"({args.device}, eager)")
    return 0


# ---------------------------------------------------------------- helpers

def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _prepare(args):
    """Device, dataset and splits, the model from MODEL (checked against the data), and its normalisation."""
    from .modelfile import load_any
    from .train import select_device

    device = select_device(args.device)
    ds, train, val = _dataset(args)
    model, meta = load_any(args.model_path, args.model, **_model_kwargs(args, ds))
    _check_fits(model, meta, ds, str(args.model_path))
    mean, std = _norm(args.norm, meta, ds)
    return device, ds, train, val, model, meta, mean, std


def _dataset(args):
    from .data import load_dataset, train_val_split

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


def _file_digest(path: Path) -> str:
    """Content hash of a file, so that a rerun on changed weights does not resume the old run's checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _fingerprint(args, **extra) -> dict:
    """What a resumed fine-tune must share with the run it resumes, besides the training config."""
    fp = {"data": args.data, "val_size": args.val_size, "batch_size": args.batch_size, "norm": args.norm,
          "augment": not args.no_augment}
    weights = getattr(args, "weights", None) or getattr(args, "model_path", None)
    if weights is not None:
        fp["weights"] = _file_digest(Path(weights))
    return {**fp, **extra}


def _add_distill_args(s) -> None:
    """The distillation settings (Hinton et al. 2015) shared by the commands that distill."""
    s.add_argument("--temperature", type=float, default=4.0)
    s.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")


def _stage_trainer(args, batches, device, epochs: dict[str, int], on_start=None, **fingerprint):
    """`run(stage, model, hooks)`: fine-tune `model` in place for `epochs[stage]` epochs (none: return at once).

    Each stage checkpoints to OUT/<stage>-<hash>.pt, the hash covering everything that shapes the run, so a
    killed run resumes its fine-tune and a changed one starts afresh.
    """
    from .train import TrainConfig, fit

    def run(stage: str, model, hooks, tag: str | None = None, parameters=None) -> None:
        n = epochs.get(stage, 0)
        if n <= 0:
            return
        if on_start is not None:
            on_start(stage, model)
        from .measure import run_digest

        # The starting weights are part of the key: another model reaching this stage never resumes this one.
        fp = _fingerprint(args, stage=stage, tag=tag, start=run_digest(model), **fingerprint)
        key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
        fit(model, batches, TrainConfig(epochs=n, lr=args.lr, seed=args.seed), hooks=hooks, device=device,
            checkpoint=args.out / f"{tag or stage}-{key}.pt", progress=not args.no_progress, fingerprint=fp,
            parameters=parameters)
        model.cpu()
    return run


def _some(split, count: int, seed: int, flag: str):
    """A fixed random subset of `count` images (0, or more than there are: all of them)."""
    import torch

    if count < 0:
        raise ConfigError(f"{flag} must be 0 (all images) or a positive count; got {count}")
    if count == 0 or count >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count])


def _check_fits(model, meta, ds, what) -> None:
    """A model file and a dataset must agree on input shape and class count before anything runs."""
    shape = (ds.in_channels, *ds.image_size)
    if meta is not None and tuple(meta.input_shape) != shape:
        raise ConfigError(f"{what} takes inputs of shape {tuple(meta.input_shape)}, but the data has images of "
                          f"shape {shape}; use the dataset it was made for")
    outputs = _output_count(model, shape)
    if outputs is not None and outputs != ds.num_classes:
        raise ConfigError(f"{what} predicts {outputs} classes, but the data has {ds.num_classes}")


def _output_count(model, shape) -> int | None:
    import torch

    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            return int(model.eval()(torch.zeros(1, *shape, device=device)).shape[-1])
    except Exception:  # noqa: BLE001 - a shape mismatch shows up here; reported by the caller's check
        return None


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: give positive integers separated by commas, e.g. 1,256")
    return values


def _augment(args, ds) -> bool:
    """CIFAR-style crop (4-pixel padding) and flip: right for 32x32 photos, destructive for 8x8 digits."""
    return not args.no_augment and min(ds.image_size) >= 16


def _model_kwargs(args, ds) -> dict:
    kwargs = {"num_classes": ds.num_classes}
    if ds.in_channels != 3:
        kwargs["in_channels"] = ds.in_channels
    if getattr(args, "width", None) is not None:
        kwargs["width"] = args.width
    return kwargs


def _norm(choice: str | None, meta, ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from .modelfile import IMAGENET_MEAN, IMAGENET_STD

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


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--input-shape {text!r}: use C,H,W such as 3,32,32") from exc
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: use C,H,W such as 3,32,32")
    return shape


if __name__ == "__main__":
    sys.exit(main())
