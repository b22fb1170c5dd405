"""Throughput of cnnzip's Evaluator against a bare `model(x)` loop over the same tensors.

    python benchmarks/evaluator_overhead.py [--model resnet20] [--rounds 5]

Both run on the same pre-normalised batches (the JPEG test set, or random tensors if ../shared is absent),
alternating so that machine noise hits both alike; the ratio of medians is reported.
"""

import argparse
import statistics
import time

import torch

from _common import CIFAR_JPEG, save
from cnnzip.data import Loader, load_image_folder
from cnnzip.io import IMAGENET_MEAN, IMAGENET_STD
from cnnzip.measure import Evaluator
from cnnzip.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=5000)
    args = ap.parse_args()
    torch.manual_seed(0)
    if CIFAR_JPEG.exists():
        split = load_image_folder(CIFAR_JPEG).test
        split = split.subset(torch.arange(min(args.images, len(split))))
        batches = list(Loader(split, 500, mean=IMAGENET_MEAN, std=IMAGENET_STD))
        data = f"shared cifar10-jpeg test, first {len(split)} images"
    else:
        batches = [(torch.randn(500, 3, 32, 32), torch.randint(0, 10, (500,))) for _ in range(args.images // 500)]
        data = "random tensors"
    model = create_model(args.model).eval()
    evaluator = Evaluator(batches)

    @torch.no_grad()
    def bare():
        for x, _ in batches:
            model(x)

    def ours():
        evaluator.evaluate(model)

    bare(), ours()  # warm-up
    times = {"bare": [], "evaluator": []}
    for _ in range(args.rounds):
        for name, fn in (("bare", bare), ("evaluator", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    n = sum(len(y) for _, y in batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["bare"] / med["evaluator"]
    print(f"bare model(x): {n / med['bare']:.0f} img/s; Evaluator: {n / med['evaluator']:.0f} img/s; "
          f"Evaluator throughput = {ratio:.3f} x bare")
    save("evaluator_overhead", {"model": args.model, "data": data, "images": n, "rounds": args.rounds,
                                "median_seconds": med, "throughput_ratio": ratio})


if __name__ == "__main__":
    main()
