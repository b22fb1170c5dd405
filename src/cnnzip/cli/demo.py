"""`cnnzip demo`: the self-contained first run, on scikit-learn's digits (no download)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import Loader, load_digits, train_val_split
from ..io import ModelMeta, save_model
from ..measure import Evaluator, footprint, measure_latency
from ..models import create_model
from ..train import TrainConfig, fit

NAME = "demo"
HELP = "train a small CNN on scikit-learn digits (no download) and report it"
DESCRIPTION = ("The self-contained demo: trains a small CNN on scikit-learn's digits and prints its accuracy and "
               "footprint. Needs no download and no data files.")


def add_arguments(s) -> None:
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="also save the model file here")


def run(args) -> int:
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.1, seed=args.seed)
    torch.manual_seed(args.seed)
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
