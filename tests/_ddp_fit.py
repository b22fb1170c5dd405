"""`fit` on a tiny model under torchrun (or alone): what tests/test_distributed.py compares between 1 and 2 processes.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_ddp_fit.py OUT [--stop-at-step K]

Trains a small conv net with BatchNorm on the digits with a fixed weight mask (deep compression's MaskHook), a hook that learns a
parameter of its own, and a checkpoint; each rank then saves its weights and hook parameter to OUT/rank<r>.pt.
`--stop-at-step K` kills the run (SystemExit) at global step K, after the checkpoint of an earlier epoch.
"""

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from cnnzip.data import Loader, load_digits
from cnnzip.deep.magnitude import MagnitudePruning, MaskHook, prune_magnitude
from cnnzip.train import TrainConfig, TrainHook, fit


class LearnsABias(TrainHook):
    """An extra loss with a parameter of its own, as feature distillation's adapters are: its gradient differs
    between ranks and must be averaged by hand (DDP only averages the model's)."""

    def __init__(self, stop_at_step: int = 0) -> None:
        self.bias = nn.Parameter(torch.zeros(10))
        self.stop_at_step, self.steps = stop_at_step, 0  # a kill, without changing the run's identity

    def parameters(self):
        return [self.bias]

    def loss(self, model, inputs, logits, targets):
        return 0.1 * ((logits.detach() - self.bias) ** 2).mean()

    def after_step(self, model):
        self.steps += 1
        if self.steps == self.stop_at_step:
            raise SystemExit(3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--stop-at-step", type=int, default=0)
    p.add_argument("--unused-layer", action="store_true", help="add a layer the forward pass never uses")
    p.add_argument("--twice", action="store_true", help="each rank checkpoints in a folder of its own (as the CLI's "
                   "ranks do), then fits the same start again: every rank must resume (none may train alone)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = load_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    if args.unused_layer:
        model[0].unused = nn.Linear(3, 3)  # a Conv2d ignores it
    model, masks = prune_magnitude(model, MagnitudePruning(ratio=0.5))
    hooks = [MaskHook(masks), LearnsABias(args.stop_at_step)]
    # 1437 training images in batches of 64: the last batch (29) is split 15 + 14 between two ranks.
    batches = Loader(ds.train, 64, shuffle=True, augment=False, mean=ds.mean, std=ds.std, seed=0)
    rank = int(os.environ.get("RANK", 0))
    checkpoint = args.out / (f"rank{rank}" if args.twice else "") / "checkpoint.pt"
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, batches, TrainConfig(epochs=3, lr=0.05), hooks=hooks, checkpoint=checkpoint, device="cpu",
                 progress=False)
    if args.twice:
        model.load_state_dict(start)
        result = fit(model, batches, TrainConfig(epochs=3, lr=0.05), hooks=hooks, checkpoint=checkpoint,
                     device="cpu", progress=False)
    torch.save({"model": model.state_dict(), "bias": hooks[1].bias.detach(), "masks": masks,
                "history": result.history, "resumed_from_epoch": result.resumed_from_epoch},
               args.out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
