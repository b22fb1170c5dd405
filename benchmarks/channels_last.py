"""Channels-last input batches against the default layout on the CPU: why `cnnzip.layout.InputLayout` exists.

    python benchmarks/channels_last.py --threads 1 --rounds 5

For ResNet-20, ResNet-56 and MobileNetV2 (CIFAR, 10 classes, new weights, seed 0): the seconds of one SGD step
(forward, cross-entropy, backward, update) on a batch of 128 random 32x32 images, and of one evaluation forward
pass on a batch of 500, with the images in NCHW (the default) and in NHWC (channels_last) layout; the weights keep
the default layout in both, as in `cnnzip.train.fit` and `Evaluator`. The two layouts alternate within
each round (rounds rotate which goes first) and each figure is the median over rounds of the mean of --steps
timed calls after one warm-up call; the ratio default / channels_last is what the layout saves.
Writes results/channels_last.json.
"""

import argparse
import statistics
import time

import torch

from _common import save
from cnnzip.models import create_model

ARCHS = ("resnet20", "resnet56", "mobilenetv2")


def timed(fn, steps: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def step_and_eval(arch: str, layout: torch.memory_format, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(arch)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (128,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    train = timed(train_step, steps)
    model.eval()
    batch = torch.randn(500, 3, 32, 32).contiguous(memory_format=layout)
    with torch.inference_mode():
        evaluate = timed(lambda: model(batch), steps)
    return train, evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layouts = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    seconds: dict = {a: {k: {"train": [], "eval": []} for k in layouts} for a in ARCHS}
    for r in range(args.rounds):
        for arch in ARCHS:
            names = list(layouts)[r % 2:] + list(layouts)[:r % 2]
            for name in names:
                train, evaluate = step_and_eval(arch, layouts[name], args.steps)
                seconds[arch][name]["train"].append(train)
                seconds[arch][name]["eval"].append(evaluate)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = {}
    lines = ["| model | train step, default (s) | channels_last (s) | ratio | eval batch 500, default (s) | "
             "channels_last (s) | ratio |", "|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        m = {k: {t: statistics.median(v) for t, v in d.items()} for k, d in seconds[arch].items()}
        rows[arch] = {"median_seconds": m, "train_ratio": m["default"]["train"] / m["channels_last"]["train"],
                      "eval_ratio": m["default"]["eval"] / m["channels_last"]["eval"]}
        lines.append(f"| {arch} | {m['default']['train']:.3f} | {m['channels_last']['train']:.3f} | "
                     f"{rows[arch]['train_ratio']:.2f}x | {m['default']['eval']:.3f} | "
                     f"{m['channels_last']['eval']:.3f} | {rows[arch]['eval_ratio']:.2f}x |")
    print("\n".join(lines))
    save("channels_last", {"args": vars(args), "rows": rows, "seconds": seconds, "table": "\n".join(lines),
                           "data": "random images (timing only), seed 0"})


if __name__ == "__main__":
    main()
