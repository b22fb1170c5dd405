"""Network slimming end to end on a CPU-sized VGG-19: sparsity training from scratch, prune by |gamma|, fine-tune.

    python benchmarks/slimming_vgg.py [--width 0.25] [--epochs 20] [--finetune-epochs 3] [--threads 1]

VGG-19 (BN, CIFAR head) at a width multiplier, trained from scratch on the JPEG training images (5,000 held out)
with the L1 penalty on BatchNorm scales (lambda 1e-4, as in the paper), lr 0.1, cosine, 1 warm-up epoch. Then,
for each ratio, slimming prunes that fraction of channels by a global |gamma| ranking, and the pruned model is
fine-tuned (lr 0.01). Test accuracy before and after fine-tuning goes to results/slimming_vgg_l<lambda>.json
and the plot results/slimming_vgg_l<lambda>.png. Resumable: training checkpoints every epoch; finished ratios are kept.
"""

import argparse
import json
import time

import torch

from _common import CIFAR_JPEG, RESULTS, RUNS, require_shared, save
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.measure import Evaluator, count_macs, count_parameters
from cnnzip.models import create_model
from cnnzip.prune import ChannelPruning, SparsityHook, prune_channels
from cnnzip.train import TrainConfig, fit

SHAPE = (3, 32, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=1e-4)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--ratios", default="0.3,0.4,0.5,0.6,0.7,0.8")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    require_shared()
    torch.set_num_threads(args.threads)
    ds = load_image_folder(CIFAR_JPEG)
    train, _ = train_val_split(ds.train, val_size=5000, seed=0)
    mean, std = ds.mean, ds.std
    batches = Loader(train, 128, shuffle=True, augment=True, mean=mean, std=std, seed=0)
    test = Evaluator(Loader(ds.test, 500, mean=mean, std=std))
    run = RUNS / f"bench-slimming-vgg19-w{args.width}-l{args.sparsity:g}-e{args.epochs}"
    partial = run / f"ratios-ft{args.finetune_epochs}.json"  # finished ratios, kept across a kill

    torch.manual_seed(0)
    model = create_model("vgg19", width=args.width)
    started = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, lr=0.1, warmup_epochs=1, seed=0)
    fit(model, batches, cfg, hooks=[SparsityHook(args.sparsity)], checkpoint=run / "sparse.pt", progress=False)
    train_minutes = (time.perf_counter() - started) / 60
    done = json.loads(partial.read_text()) if partial.exists() else {}
    if "unpruned" not in done:
        done["unpruned"] = {"ratio": 0.0, "accuracy": test.evaluate(model).accuracy,
                            "params": count_parameters(model), "macs": count_macs(model, SHAPE),
                            "train_minutes": train_minutes}
        partial.write_text(json.dumps(done, indent=2))
    print("unpruned", done["unpruned"], flush=True)
    example = torch.zeros(1, *SHAPE)
    for ratio in [float(r) for r in args.ratios.split(",")]:
        key = f"{ratio:.2f}"
        if key in done:
            continue
        result = prune_channels(model, ChannelPruning(method="slimming", ratio=ratio), example)
        pruned = result.model
        row = {"ratio": ratio, "accuracy_pruned": test.evaluate(pruned).accuracy,
               "params": count_parameters(pruned), "macs": count_macs(pruned, SHAPE),
               "verification_max_error": result.max_error}
        fit(pruned, batches, TrainConfig(epochs=args.finetune_epochs, lr=0.01, seed=0),
            checkpoint=run / f"finetune-{key}.pt", progress=False)
        row["accuracy"] = test.evaluate(pruned).accuracy
        done[key] = row
        partial.write_text(json.dumps(done, indent=2))
        print(key, row, flush=True)

    base = done["unpruned"]["accuracy"]
    rows = [done[k] for k in done if k != "unpruned"]
    print(f"{'ratio':>6} {'params':>10} {'MACs':>12} {'pruned acc':>10} {'fine-tuned':>10} {'vs unpruned':>12}")
    for r in rows:
        print(f"{r['ratio']:6.2f} {r['params']:10,} {r['macs']:12,} {r['accuracy_pruned']:10.2%} "
              f"{r['accuracy']:10.2%} {(r['accuracy'] - base) * 100:+11.2f}pt")
    _plot(done, args)
    save(f"slimming_vgg_l{args.sparsity:g}", {"model": f"vgg19 width {args.width}", "epochs": args.epochs, "sparsity": args.sparsity,
                          "finetune_epochs": args.finetune_epochs, "threads": args.threads, "results": done,
                          "data": "shared cifar10-jpeg: 45,000 train (5,000 held out), 10,000 test"})


def _plot(done: dict, args) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    rows = sorted((done[k] for k in done if k != "unpruned"), key=lambda r: r["ratio"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["ratio"] for r in rows], [100 * r["accuracy_pruned"] for r in rows], "o--", label="pruned")
    ax.plot([r["ratio"] for r in rows], [100 * r["accuracy"] for r in rows], "o-",
            label=f"pruned + {args.finetune_epochs} epochs fine-tune")
    ax.axhline(100 * done["unpruned"]["accuracy"], color="gray", ls=":", label="unpruned (sparsity-trained)")
    ax.set_xlabel("slimming ratio (fraction of channels removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Network slimming, VGG-19 width {args.width}, CIFAR-10 JPEG")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"slimming_vgg_l{args.sparsity:g}.png", dpi=100)


if __name__ == "__main__":
    main()
