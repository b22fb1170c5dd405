"""The JPEG-fine-tuned ResNet-56 that the compression benchmarks start from.

    python benchmarks/baseline_resnet56.py [--epochs 2]

The ../shared ResNet-56 was trained on the original CIFAR-10 images; on the JPEG re-encoding it scores 83.20%.
This fine-tunes it with `cnnzip train` (lr 0.01, cosine, batch 128, 5,000 training images held out for
validation) into runs/resnet56-ft/model.pt. Resumable: rerun after a kill. Does nothing if the model exists.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from _common import CIFAR_JPEG, RESNET20, RESNET56, RUNS, require_shared, save

WEIGHTS = {"resnet20": RESNET20, "resnet56": RESNET56}


def model_file(arch: str) -> Path:
    """Where `ensure(arch=arch)` leaves the fine-tuned model."""
    return RUNS / f"{arch}-ft" / "model.pt"


MODEL = model_file("resnet56")


def ensure(epochs: int = 2, arch: str = "resnet56") -> dict:
    """Fine-tune the ../shared `arch` (resnet20 or resnet56) into runs/<arch>-ft/model.pt, unless it is there."""
    require_shared()
    out = model_file(arch).parent
    if not model_file(arch).exists():
        cmd = [sys.executable, "-m", "cnnzip.cli", "train", "--model", arch, "--weights", str(WEIGHTS[arch]),
               "--norm", "imagenet", "--data", str(CIFAR_JPEG), "--epochs", str(epochs), "--lr", "0.01",
               "--seed", "0", "--out", str(out), "--no-progress"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((out / "metrics.json").read_text())


def quantization_setup(arch: str, calibration_images: int = 512):
    """What the int8 benchmarks share: the fine-tuned baseline and its meta, the data, evaluators on the two
    stratified halves of the JPEG test split (val, test; seed 0), and calibration batches of training images."""
    from cnnzip.data import Loader, load_image_folder, train_val_split
    from cnnzip.io import load_model
    from cnnzip.measure import Evaluator

    ensure(arch=arch)
    model, meta = load_model(model_file(arch))
    ds = load_image_folder(CIFAR_JPEG)
    test, val = train_val_split(ds.test, 5000, seed=0)
    validator = Evaluator(Loader(val, 500, mean=meta.mean, std=meta.std))
    tester = Evaluator(Loader(test, 500, mean=meta.mean, std=meta.std))
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    calibration = [x.numpy() for x, _ in Loader(ds.train.subset(order[:calibration_images]), 32, mean=meta.mean,
                                                  std=meta.std)]
    return model, meta, ds, validator, tester, calibration


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", choices=sorted(WEIGHTS), default="resnet56")
    args = ap.parse_args()
    metrics = ensure(args.epochs, args.arch)
    print(f"{args.arch} fine-tuned: test accuracy {metrics['test_acc']:.4f}")
    save("baseline_resnet56" if args.arch == "resnet56" else f"baseline_{args.arch}",
         {"test_acc": metrics["test_acc"], "epochs": metrics["epochs"], "config": metrics["config"]})


if __name__ == "__main__":
    main()
