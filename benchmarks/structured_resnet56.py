"""Structured pruning of ResNet-56 at 40% fewer MACs: cnnzip's FPGM, L1 and random against Torch-Pruning's own.

    python benchmarks/structured_resnet56.py [--epochs 2] [--macs-reduction 0.4] [--threads 1]

Starts from the JPEG-fine-tuned ResNet-56 (benchmarks/baseline_resnet56.py). Each variant prunes, fine-tunes
`--epochs` epochs on the JPEG training images (lr 0.01, cosine), and is measured the same way: accuracy on the
10,000 test images, parameters, MACs, bytes of the saved state dict. Latency at batch 1 and 256, in eager
PyTorch and in ONNX Runtime, is measured at the end for all models together, in interleaved rounds, so that the
machine's load falls on every model alike. The zero-padded shortcuts couple the residual stream in a way no
tracer maps right, so all variants prune the blocks' inner channels (conv1 of each block); Torch-Pruning is
told to do the same by ignoring every other layer. Resumable: finished variants are kept in
benchmarks/results/structured_resnet56.partial.json, fine-tunes checkpoint every epoch.
"""

import argparse
import copy
import json
import time

import torch

from _common import CIFAR_JPEG, RESULTS, RUNS, save
from baseline_resnet56 import MODEL, ensure
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.io import load_model
from cnnzip.measure import Evaluator
from cnnzip.prune import ChannelPruning, prune_channels, prune_to_macs
from cnnzip.report import describe, format_table, latency_table
from cnnzip.train import TrainConfig, fit

PARTIAL = RESULTS / "structured_resnet56.partial.json"
SHAPE = (3, 32, 32)


def torch_pruning_l1(model: torch.nn.Module, ratio: float) -> torch.nn.Module:
    """Torch-Pruning's MetaPruner with its L1 group importance, on the same layers (block conv1 outputs)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    ignored = [m for n, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not n.endswith(".conv1")]
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, *SHAPE), importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False)
    pruner.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--macs-reduction", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = steadier timings on shared cores)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--repeats", type=int, default=10, help="timed passes per model, batch and round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure()
    base, meta = load_model(MODEL)
    ds = load_image_folder(CIFAR_JPEG)
    train, _ = train_val_split(ds.train, val_size=5000, seed=0)
    test = Evaluator(Loader(ds.test, 500, mean=meta.mean, std=meta.std))
    done = json.loads(PARTIAL.read_text()) if PARTIAL.exists() else {}
    example = torch.zeros(1, *SHAPE)

    variants = {}
    fpgm = prune_to_macs(base, ChannelPruning(method="fpgm", residual_stream=False), example, args.macs_reduction)
    ratio = fpgm.notes["ratio"]
    variants["cnnzip fpgm"] = fpgm
    variants["cnnzip l1"] = prune_channels(base, ChannelPruning(method="l1", ratio=ratio, residual_stream=False), example)
    variants["cnnzip random"] = prune_channels(base, ChannelPruning(method="random", ratio=ratio, seed=0, residual_stream=False), example)
    if "original" not in done:
        done["original"] = describe(base, SHAPE, evaluator=test, latency_batches=())
        PARTIAL.write_text(json.dumps(done, indent=2))
    models = {"original": base}
    for name in ["cnnzip fpgm", "cnnzip l1", "cnnzip random", "torch-pruning l1"]:
        started = time.perf_counter()
        model = variants[name].model if name in variants else torch_pruning_l1(base, ratio)
        pruned_acc = test.evaluate(model).accuracy if name not in done else done[name]["accuracy_before_finetune"]
        batches = Loader(train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
        ckpt = RUNS / "bench-structured" / f"{name.replace(' ', '-')}.pt"
        # A finished fine-tune is restored from its checkpoint without training again.
        fit(model, batches, TrainConfig(epochs=args.epochs, lr=args.lr, seed=0), checkpoint=ckpt, progress=False)
        models[name] = model.eval()
        if name in done:
            continue
        row = describe(model, SHAPE, evaluator=test, latency_batches=())
        row["accuracy_before_finetune"] = pruned_acc
        row["macs_reduction"] = 1 - row["macs"] / done["original"]["macs"]
        row["minutes"] = (time.perf_counter() - started) / 60
        done[name] = row
        PARTIAL.write_text(json.dumps(done, indent=2))
        print(f"{name}: {json.dumps(row)}", flush=True)

    latency = latency_table(models, SHAPE, (1, 256), rounds=args.rounds, repeats=args.repeats)
    for name, lat in latency.items():
        done[name] = {k: v for k, v in done[name].items() if "_ms_" not in k} | lat

    print(format_table(done))
    orig = done["original"]
    ratios = {}
    for name, row in done.items():
        if name == "original":
            continue
        ratios[name] = {
            "accuracy_drop_points": (orig["accuracy"] - row["accuracy"]) * 100,
            "macs_ratio": row["macs"] / orig["macs"],
            **{f"speedup_{k}": orig[k] / row[k] for k in row if "_ms_b" in k},
        }
        ratios[name]["ort_b1_speedup_over_macs_speedup"] = ratios[name]["speedup_ort_ms_b1"] * ratios[name]["macs_ratio"]
    print(json.dumps(ratios, indent=2))
    save("structured_resnet56", {"epochs": args.epochs, "lr": args.lr, "macs_reduction_goal": args.macs_reduction,
                                 "latency_rounds": args.rounds, "latency_repeats": args.repeats,
                                 "per_layer_ratio": ratio, "threads": args.threads, "rows": done, "ratios": ratios,
                                 "excluded": fpgm.excluded,
                                 "data": "shared cifar10-jpeg: 45,000 train (5,000 held out), 10,000 test"})
    PARTIAL.unlink()


if __name__ == "__main__":
    main()
