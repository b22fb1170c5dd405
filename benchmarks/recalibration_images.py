"""Which images should BatchNorm recalibration see? The unpruned ResNet-56, recalibrated on clean and on augmented
training images (issue 16).

    python benchmarks/recalibration_images.py --threads 2

Recalibrating a model that nothing was removed from should leave its accuracy where it was: its statistics were
right. The JPEG-fine-tuned ResNet-56 (`baseline_resnet56.py`) is recalibrated (`recalibrate_batchnorm`) on 512 and
2,048 training images (seed 0), clean or cropped and flipped as `cnnzip train` augments them, and evaluated on the
decision half of the JPEG test split ("val", stratified, seed 0). Writes results/recalibration_images.json.
"""

import argparse
import copy

import torch

from _common import save
from baseline_resnet56 import quantization_setup
from cnnzip.data import Loader
from cnnzip.train import recalibrate_batchnorm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="512,2048")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, _, _ = quantization_setup("resnet56", 32)
    rows = {"as trained (no recalibration)": validator.evaluate(model).accuracy}
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    for n in (int(i) for i in args.images.split(",")):
        for augment in (False, True):
            batches = [x for x, _ in Loader(ds.train.subset(order[:n]), 128, mean=meta.mean, std=meta.std,
                                            augment=augment, shuffle=augment, seed=0)]
            m = copy.deepcopy(model)
            recalibrate_batchnorm(m, batches, n)
            rows[f"{n} {'augmented' if augment else 'clean'} images"] = validator.evaluate(m).accuracy
    lines = ["| BatchNorm statistics | val accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.2%} |" for k, v in rows.items()]
    print("\n".join(lines))
    save("recalibration_images", {"args": vars(args), "rows": rows, "table": "\n".join(lines),
                                  "data": "CIFAR-10 JPEG; val = a stratified half of the test split (seed 0); "
                                          "recalibration on training images (seed 0)"})


if __name__ == "__main__":
    main()
