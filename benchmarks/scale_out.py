"""Scale-out on this machine (issue 19): torchrun data-parallel fine-tuning and a grid search on Ray workers.

    python benchmarks/scale_out.py                 # both parts, about 20 minutes on 2 idle cores
    python benchmarks/scale_out.py --part ddp      # or --part ray

Both parts run the `cnnzip` command as a user would, with nothing else running on the machine, and compare the
same total cores (2) used two ways:

- `ddp`: the shared ResNet-20 fine-tuned for one epoch on the JPEG CIFAR-10 (`cnnzip train --epochs 1 --lr 0.01`,
  seed 0, 45,000 training images, 5,000 held out for validation) in one process with 2 threads, then under
  `torchrun --nproc-per-node 2` with 1 thread per process, without and with `--sync-bn`. Reported: validation and test accuracy (test once
  per model), the epoch's seconds and the command's wall time (data reading and process start included).
- `ray`: `cnnzip search` with the grid strategy over NS x DC (ratios 0 to 0.8 in steps of 0.2: 25 checks) at
  -1 point, with 1 worker (in-process, 2 threads) and with 2 Ray workers (1 thread each). Reported: the winner and
  every trial's accuracy (they must be equal), and the wall times.

- `simulate`: how many rounds (waits for the workers) each strategy needs with 1-8 workers on a known landscape,
  and how many checks it computes: no model, a second.

`--rounds 2` repeats each pair in the opposite order (A B B A) and reports the median ratio. Writes
results/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _common import CIFAR_JPEG, REPO, RESNET20, RUNS, environment, require_shared, save

OUT = RUNS / "bench-scale-out"
COMMON = ["--model", "resnet20", "--norm", "imagenet", "--data", str(CIFAR_JPEG), "--quiet", "--no-progress"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO / "src")}


def _run(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def ddp(name: str) -> dict:
    out = OUT / f"train-{name}"
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--weights", str(RESNET20), *COMMON, "--epochs", "1", "--lr", "0.01", "--out", str(out)]
    if name.startswith("torchrun-2"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "cnnzip.cli", *args, "--threads", "1", *(["--sync-bn"] if name.endswith("sync-bn") else [])]
    else:
        cmd = [sys.executable, "-m", "cnnzip.cli", *args, "--threads", "2"]
    wall = _run(cmd)
    m = json.loads((out / "metrics.json").read_text())
    epoch = m["epochs"][-1]
    return {"wall_seconds": wall, "epoch_seconds": epoch["seconds"], "val_acc": epoch["val_acc"],
            "test_acc": m["test_acc"], "train_acc": epoch["train_acc"]}


def ray(name: str) -> dict:
    out = OUT / f"search-{name}"
    shutil.rmtree(out, ignore_errors=True)
    workers = 2 if name == "ray-2" else 1
    cmd = [sys.executable, "-m", "cnnzip.cli", "search", str(RESNET20), *COMMON, "--strategy", "grid", "--order",
           "ns-dc", "--step", "0.2", "--max-ratio", "0.8", "--drop", "0.01", "--workers", str(workers),
           "--threads", "2", "--out", str(out)]
    wall = _run(cmd)
    result = json.loads((out / "result.json").read_text())
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    checks = {str(t["index"]): t["accuracy"] for t in trials if t.get("kind") != "size"}
    return {"wall_seconds": wall, "best": result["best"], "checks": len(checks), "accuracies": checks,
            "cost": result["cost"]}


class Simulated:
    """The strategies' view of a search, on a known landscape (passes when i + 2j <= 24 on a 20 x 20 grid), with
    `width` workers: a round is one wait for the workers (a prefetched batch, or a check asked for alone)."""

    def __init__(self, width: int) -> None:
        from cnnzip.search.trials import Trial

        self.Trial, self.width, self.axes = Trial, width, ("ns", "dc")
        self.done, self.ahead, self.rounds = {}, {}, 0

    def _trial(self, index):
        i, j = index
        return self.Trial(index, index, i + 2 * j <= 24, 0.0, True, 0, 10_000 - 40 * i - 100 * j, 0.0)

    def check(self, index):
        if index not in self.done:
            self.rounds += index not in self.ahead
            self.done[index] = self.ahead.pop(index, None) or self._trial(index)
        return self.done[index]

    def outcome(self, index):
        t = self.done.get(index) or self.ahead.get(index)
        return None if t is None else t.passed

    def prefetch(self, indices):
        new = [i for i in dict.fromkeys(indices) if self.outcome(i) is None] if self.width > 1 else []
        self.rounds += bool(new)
        self.ahead.update({i: self._trial(i) for i in new})

    def size_at(self, index):
        return self._trial(index).size

    def best(self):
        passing = [t for t in self.done.values() if t.passed]
        return min(passing, key=lambda t: (t.size, t.index)) if passing else None


def simulate() -> dict:
    """Rounds (waits) and checks computed by each strategy with 1, 2, 4 and 8 workers; the winner must not move."""
    from cnnzip.search.strategies import STRATEGIES

    out = {}
    for name, strategy in STRATEGIES.items():
        rows = []
        for width in (1, 2, 4, 8):
            t = Simulated(width)
            best = strategy(t, 20) if name == "grid" else strategy(t, 20, 5)
            rows.append({"workers": width, "rounds": t.rounds, "checks": len(t.done) + len(t.ahead),
                         "winner": list(best.index)})
        if len({tuple(r["winner"]) for r in rows}) != 1:
            sys.exit(f"{name}: workers changed the winner: {rows}")
        out[name] = rows
        print(name, ", ".join(f"{r['workers']} workers: {r['rounds']} rounds, {r['checks']} checks" for r in rows))
    return out


def pair(run, names: tuple[str, str], rounds: int) -> dict:
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            print(f"{run.__name__}: {name} (round {r + 1})", flush=True)
            runs[name].append(run(name))
            print(f"  {runs[name][-1]['wall_seconds']:.0f} s", flush=True)
    ratios = [a["wall_seconds"] / b["wall_seconds"] for a, b in zip(runs[names[0]], runs[names[1]], strict=True)]
    return {"runs": runs, "wall_ratio_median": statistics.median(ratios), "wall_ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["ddp", "ray", "simulate", "all"], default="all")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    path = REPO / "benchmarks" / "results" / "scale_out.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.pop("environment", None)
    if args.part in ("simulate", "all"):
        results["simulated_rounds"] = {"environment": environment(), **simulate()}
    if args.part in ("ddp", "ray", "all"):
        require_shared()
    if args.part in ("ddp", "all"):
        d = pair(ddp, ("one-process", "torchrun-2"), args.rounds)
        d["runs"]["torchrun-2-sync-bn"] = [ddp("torchrun-2-sync-bn") for _ in range(args.rounds)]
        one = d["runs"]["one-process"][0]
        for name in ("torchrun-2", "torchrun-2-sync-bn"):
            two = d["runs"][name][0]
            d[name] = {"val_points": 100 * (two["val_acc"] - one["val_acc"]),
                       "test_points": 100 * (two["test_acc"] - one["test_acc"]),
                       "epoch_ratio": one["epoch_seconds"] / two["epoch_seconds"],
                       "wall_ratio": one["wall_seconds"] / two["wall_seconds"]}
            print(f"{name}: val {two['val_acc']:.2%}, test {two['test_acc']:.2%} vs {one['val_acc']:.2%}, "
                  f"{one['test_acc']:.2%} alone; epoch {d[name]['epoch_ratio']:.2f}x, wall {d[name]['wall_ratio']:.2f}x")
        results["ddp"] = {"environment": environment(), **d}
    if args.part in ("ray", "all"):
        r = pair(ray, ("workers-1", "ray-2"), args.rounds)
        one, two = r["runs"]["workers-1"][0], r["runs"]["ray-2"][0]
        r["same_winner"] = (one["best"] or {}).get("index") == (two["best"] or {}).get("index")
        r["same_accuracies"] = one["accuracies"] == two["accuracies"]
        results["ray"] = {"environment": environment(), **r}
        print(f"ray: same winner {r['same_winner']}, same accuracies {r['same_accuracies']}, wall "
              f"{r['wall_ratio_median']:.2f}x faster")
    save("scale_out", {"seed": 0, "data": str(CIFAR_JPEG.name), "model": RESNET20.name, **results})


if __name__ == "__main__":
    main()
