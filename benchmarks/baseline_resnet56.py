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

from _common import CIFAR_JPEG, RESNET56, RUNS, require_shared, save

OUT = RUNS / "resnet56-ft"
MODEL = OUT / "model.pt"


def ensure(epochs: int = 2) -> dict:
    require_shared()
    if not MODEL.exists():
        cmd = [sys.executable, "-m", "cnnzip.cli", "train", "--model", "resnet56", "--weights", str(RESNET56),
               "--norm", "imagenet", "--data", str(CIFAR_JPEG), "--epochs", str(epochs), "--lr", "0.01",
               "--seed", "0", "--out", str(OUT), "--no-progress"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((OUT / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    metrics = ensure(ap.parse_args().epochs)
    print(f"ResNet-56 fine-tuned: test accuracy {metrics['test_acc']:.4f}")
    save("baseline_resnet56", {"test_acc": metrics["test_acc"], "epochs": metrics["epochs"],
                               "config": metrics["config"]})


if __name__ == "__main__":
    main()
