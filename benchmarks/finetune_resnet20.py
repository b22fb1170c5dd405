"""`cnnzip train` fine-tunes the ../shared ResNet-20 on the JPEG training images for one epoch.

    python benchmarks/finetune_resnet20.py [--epochs 1] [--lr 0.01]

Runs the real command line in a subprocess (45,000 training images, 5,000 held out as validation), then
records the time per epoch, the training images per second and the test accuracy (evaluated once, at the end).
"""

import argparse
import json
import subprocess
import sys
import time

from _common import CIFAR_JPEG, RESNET20, RUNS, require_shared, save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    require_shared()
    out = RUNS / "bench-finetune-resnet20"
    cmd = [sys.executable, "-m", "cnnzip.cli", "train", "--model", "resnet20", "--weights", str(RESNET20),
           "--norm", "imagenet", "--data", str(CIFAR_JPEG), "--epochs", str(args.epochs), "--lr", str(args.lr),
           "--seed", str(args.seed), "--out", str(out), "--fresh", "--no-progress"]
    print(" ".join(cmd))
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = metrics["epochs"]
    row = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed, "test_acc": metrics["test_acc"],
           "val_acc": epochs[-1].get("val_acc"),
           "seconds_per_epoch": sum(e["seconds"] for e in epochs) / len(epochs),
           "train_images_per_second": sum(e["images_per_second"] for e in epochs) / len(epochs),
           "command_wall_seconds": wall, "command": " ".join(cmd[2:])}
    print(json.dumps(row, indent=2))
    save("finetune_resnet20", row)


if __name__ == "__main__":
    main()
