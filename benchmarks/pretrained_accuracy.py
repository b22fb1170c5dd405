"""Full JPEG test-set accuracy of the ../shared ResNets: cnnzip's pipeline against an independent reference.

    python benchmarks/pretrained_accuracy.py

The reference (tests/_reference.py) decodes the archive with PIL and runs the network functionally from the raw
checkpoint tensors; cnnzip's loader, zoo and Evaluator must give the same predictions on all 10,000 images.
"""

import sys
import time

import torch

from _common import CIFAR_JPEG, REPO, RESNET20, RESNET56, require_shared, save

sys.path.insert(0, str(REPO / "tests"))
from _reference import read_test_images, reference_predictions  # noqa: E402
from cnnzip.data import Loader, load_image_folder  # noqa: E402
from cnnzip.io import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from cnnzip.measure import Evaluator  # noqa: E402
from cnnzip.models import create_model, load_weights  # noqa: E402


def main() -> None:
    require_shared()
    torch.manual_seed(0)
    ds = load_image_folder(CIFAR_JPEG)
    ref_x, ref_y, _ = read_test_images(CIFAR_JPEG)
    rows = []
    for name, path in [("resnet20", RESNET20), ("resnet56", RESNET56)]:
        model = load_weights(create_model(name), path).eval()
        started = time.perf_counter()
        ours = Evaluator(Loader(ds.test, 500, mean=IMAGENET_MEAN, std=IMAGENET_STD)).evaluate(model)
        seconds = time.perf_counter() - started
        ref_pred = reference_predictions(path, ref_x)
        ref_acc = float((ref_pred == ref_y).float().mean())
        rows.append({"model": name, "cnnzip_accuracy": ours.accuracy, "reference_accuracy": ref_acc,
                     "images": ours.total, "equal": ours.correct == int((ref_pred == ref_y).sum()),
                     "eval_seconds": seconds})
        print(f"{name}: cnnzip {ours.accuracy:.4f}  reference {ref_acc:.4f}  ({ours.total} images, "
              f"{seconds:.1f} s)")
    save("pretrained_accuracy", {"data": "shared cifar10-jpeg test split (10,000 images)",
                                 "normalisation": "imagenet mean/std", "rows": rows})
    if not all(r["equal"] for r in rows):
        sys.exit("MISMATCH between cnnzip and the reference")


if __name__ == "__main__":
    main()
