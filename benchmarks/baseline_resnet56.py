"""The JPEG-fine-tuned ResNet-56 (and the VGG-19 trained here) that the compression benchmarks start from.

    python benchmarks/baseline_resnet56.py [--epochs 2] [--arch resnet56|resnet20|vgg19] [--threads N]

The ../shared ResNet-56 was trained on the original CIFAR-10 images; on the JPEG re-encoding it scores 83.20%.
This fine-tunes it with `cnnzip train` (lr 0.01, cosine, batch 128, 5,000 training images held out for
validation) into runs/resnet56-ft/model.pt. Resumable: rerun after a kill. Does nothing if the model exists.

`--arch vgg19`: no pretrained VGG-19 is in ../shared, so VGG-19 (BatchNorm, CIFAR head) at width 0.25 (1.26M
parameters, 25.2M MACs, the CPU-sized VGG of the slimming benchmark) is trained from scratch: 20 epochs at lr 0.1,
cosine, 1 warm-up epoch, the dataset's own normalisation, seed 0, into runs/vgg19-ft/model.pt.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from _common import CIFAR_JPEG, RESNET20, RESNET56, RUNS, require_shared, save

WEIGHTS = {"resnet20": RESNET20, "resnet56": RESNET56}
ARCHS = sorted([*WEIGHTS, "vgg19"])
VGG_EPOCHS = 20


def model_file(arch: str) -> Path:
    """Where `ensure(arch=arch)` leaves the fine-tuned model."""
    return RUNS / f"{arch}-ft" / "model.pt"


MODEL = model_file("resnet56")


def ensure(epochs: int = 2, arch: str = "resnet56", threads: int | None = None) -> dict:
    """Fine-tune the ../shared `arch` (resnet20 or resnet56) into runs/<arch>-ft/model.pt, unless it is there;
    for vgg19, train it from scratch (`VGG_EPOCHS` epochs; `epochs` is ignored)."""
    require_shared()
    out = model_file(arch).parent
    if not model_file(arch).exists():
        if arch == "vgg19":
            recipe = ["--model", "vgg19", "--width", "0.25", "--norm", "dataset", "--epochs", str(VGG_EPOCHS),
                      "--lr", "0.1", "--warmup-epochs", "1"]
        else:
            recipe = ["--model", arch, "--weights", str(WEIGHTS[arch]), "--norm", "imagenet", "--epochs",
                      str(epochs), "--lr", "0.01"]
        cmd = [sys.executable, "-m", "cnnzip.cli", "train", *recipe, "--data", str(CIFAR_JPEG), "--seed", "0",
               "--out", str(out), "--no-progress", *(["--threads", str(threads)] if threads else [])]
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
    ap.add_argument("--arch", choices=ARCHS, default="resnet56")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = ap.parse_args()
    metrics = ensure(args.epochs, args.arch, args.threads)
    print(f"{args.arch} trained: test accuracy {metrics['test_acc']:.4f}")
    save("baseline_resnet56" if args.arch == "resnet56" else f"baseline_{args.arch}",
         {"test_acc": metrics["test_acc"], "epochs": metrics["epochs"], "config": metrics["config"]})


if __name__ == "__main__":
    main()
