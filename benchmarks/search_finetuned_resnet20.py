"""The search against a single fine-tune epoch, as a new user meets them (issue 16's ResNet-20 aim).

    python benchmarks/search_finetuned_resnet20.py --threads 1

The subject is what a user brings: the ../shared ResNet-20 fine-tuned for one epoch on the JPEG training images
(`cnnzip train --epochs 1 --lr 0.01 --seed 0`, under $CNNZIP_RUNS/resnet20-ft1). Everything runs through the
command line, each command with its defaults except those named:

- `search MODEL --drop 0.01 --finetune-epochs 1`: the combined search (ns-dc, bisect) at -1 point, its winner
  fine-tuned one epoch, in three trial modes: raw (`--recalibrate 0`, the search before issue 16), recalibrated
  (the default, 512 augmented training images) and recovered (`--recover-images N --recover-distill`: each
  candidate first sees N training images, distilled from MODEL, then is recalibrated);
- mode recovered-epoch: `search MODEL --drop 0.01 --order dc --recover-images 45000 --recover-distill
  --finetune-epochs 0`: every trial recovers for one whole epoch, so the search decides on what one epoch makes
  of a candidate, and the winner's file is that recovered candidate (one epoch in all, as deep-compress's). Deep
  compression alone: the structured step failed at every ratio in the other modes on this model;
- `deep-compress MODEL --sparsity S --finetune-epochs 1` for S on a grid: what one fine-tune epoch gives without
  the search. A user picks the sparsest file whose validation accuracy meets the same target as the search.
  With --distilled-sparsities, the same with `--distill response` (from MODEL, T 4, alpha 0.9, as the recovered
  searches' trials learn): what distillation alone gives.

Every file is evaluated on the validation split (the search's 5,000 held-out training images,
seed 0; optimistic, the shared weights were trained on them) and once on the test split. Runs are kept under
$CNNZIP_RUNS/bench-search-finetuned/ and reused, so a killed run resumes at the command it was in.
Writes results/search_finetuned_resnet20.json.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import CIFAR_JPEG, RESNET20, RUNS, require_shared, save
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.io import load
from cnnzip.measure import Evaluator


def cli(*args: str, threads: int) -> str:
    cmd = [sys.executable, "-m", "cnnzip.cli", *args, "--threads", str(threads)]
    print("$ cnnzip " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


class Splits:
    """The search's validation split (5,000 held-out training images, seed 0, as `cnnzip` splits) and the test
    split, read once; any file cnnzip wrote is evaluated on both."""

    def __init__(self) -> None:
        self.data = load_image_folder(CIFAR_JPEG)
        self.val = train_val_split(self.data.train, val_size=5000, seed=0)[1]

    def accuracy(self, path: Path) -> dict:
        model, meta = load(path)
        return {name: Evaluator(Loader(split, 500, mean=meta.mean, std=meta.std)).evaluate(model).accuracy
                for name, split in (("val", self.val), ("test", self.data.test))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drop", type=float, default=0.01)
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--distilled-sparsities", default="0.6,0.65", help="deep-compress rows fine-tuned with "
                    "--distill response (as the recovered searches' trials are)")
    ap.add_argument("--recover-images", type=int, default=5000)
    ap.add_argument("--modes", default="raw,recalibrated,recovered,recovered-epoch")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    require_shared()
    root = RUNS / "bench-search-finetuned"
    start = RUNS / "resnet20-ft1"
    t = args.threads
    if not (start / "model.pt").exists():
        cli("train", "--model", "resnet20", "--weights", str(RESNET20), "--norm", "imagenet", "--data",
            str(CIFAR_JPEG), "--epochs", "1", "--lr", "0.01", "--seed", "0", "--out", str(start), "--no-progress",
            "--overwrite", threads=t)
    model = start / "model.pt"
    rows: dict = {}

    def measured(name: str, path, seconds: float, **extra) -> dict:
        row = {"bytes": path.stat().st_size, **splits.accuracy(path), "seconds": seconds, **extra}
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        return row

    torch.set_num_threads(t)
    splits = Splits()
    base = {"bytes": model.stat().st_size, **splits.accuracy(model)}
    target = base["val"] - args.drop
    print(f"start: {json.dumps(base)}; target {target:.2%}", flush=True)

    for mode in args.modes.split(","):
        out = root / (f"search-{mode}-d{args.drop}" + (f"-r{args.recover_images}" if mode == "recovered" else ""))
        extra = {"raw": ["--recalibrate", "0", "--finetune-epochs", "1"], "recalibrated": ["--finetune-epochs", "1"],
                 "recovered": ["--recover-images", str(args.recover_images), "--recover-distill", "--finetune-epochs",
                               "1"],
                 "recovered-epoch": ["--order", "dc", "--recover-images", "45000", "--recover-distill",
                                     "--finetune-epochs", "0"]}[mode]
        order = ("dc",) if mode == "recovered-epoch" else ("ns", "dc")
        started = time.perf_counter()
        if not (out / "result.json").exists():  # a killed search resumes from its trials.jsonl
            cli("search", str(model), "--data", str(CIFAR_JPEG), "--drop", str(args.drop), *extra, "--out", str(out),
                "--no-progress", threads=t)
        result = json.loads((out / "result.json").read_text())
        best = result["best"]
        measured(f"search {mode}", Path(result["path"]), time.perf_counter() - started,
                 ratios=dict(zip(order, best["ratios"], strict=True)), final_val=result["final_accuracy"],
                 trial_val=best["accuracy"], checks=result["cost"]["checks"],
                 search_seconds=result["cost"]["seconds"], recovery_seconds=result["cost"].get("recovery_seconds", 0))

    grid = [(float(x), False) for x in args.sparsities.split(",")] + \
        [(float(x), True) for x in args.distilled_sparsities.split(",") if x]
    for s, kd in grid:
        out = root / (f"deep-s{s}-ft1" + ("-kd" if kd else ""))
        started = time.perf_counter()
        if not (out / "report.json").exists():
            cli("deep-compress", str(model), "--data", str(CIFAR_JPEG), "--sparsity", str(s), "--finetune-epochs",
                "1", *(["--distill", "response"] if kd else []), "--out", str(out), "--overwrite", "--no-progress",
                "--quiet", threads=t)
        measured(f"deep-compress {s:g} +1 epoch" + (" KD" if kd else ""), out / "model.cnnz",
                 time.perf_counter() - started, sparsity=s, distill=kd)

    meeting = [(r["bytes"], n) for n, r in rows.items() if n.startswith("deep") and not r["distill"]
               and r["val"] >= target]
    best_deep = min(meeting)[1] if meeting else None
    lines = ["| model | file bytes | x smaller than fp32 | val | test (once) | passes target |",
             "|---|---|---|---|---|---|",
             f"| start (1 epoch fine-tuned) | {base['bytes']:,} | 1.0 | {base['val']:.2%} | {base['test']:.2%} | |"]
    for name, r in rows.items():
        mark = " (sparsest passing)" if name == best_deep else ""
        lines.append(f"| {name}{mark} | {r['bytes']:,} | {base['bytes'] / r['bytes']:.1f} | {r['val']:.2%} | "
                     f"{r['test']:.2%} | {'yes' if r['val'] >= target else 'no'} |")
    print("\n".join(lines))
    save("search_finetuned_resnet20", {
        "args": vars(args), "start": base, "target": target, "rows": rows, "sparsest_deep_passing": best_deep,
        "table": "\n".join(lines),
        "data": "val: the 5,000 held-out training images (seed 0; optimistic, the shared weights saw them); "
                "test: the 10,000 JPEG test images, once per file"})


if __name__ == "__main__":
    main()
