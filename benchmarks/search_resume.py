"""A killed search resumes and finishes with the same answer (issue 5), through the real command line.

    python benchmarks/search_resume.py [--kill-after 8]

Runs `cnnzip search` (bisect, NS->DC, 3 points below the baseline) on the JPEG-fine-tuned ResNet-56 twice:
once uninterrupted, once killed with SIGKILL after --kill-after recorded lines of trials.jsonl and then rerun
with the same command. Compares winners and costs; writes results/search_resume.json.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from _common import CIFAR_JPEG, RUNS, save
from baseline_resnet56 import MODEL, ensure


def command(out):
    return [sys.executable, "-m", "cnnzip.cli", "search", str(MODEL), "--data", str(CIFAR_JPEG), "--val-size",
            "2000", "--drop", "0.03", "--strategy", "bisect", "--order", "ns-dc", "--structured", "l1", "--inner-only",
            "--step", "0.05", "--out", str(out)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kill-after", type=int, default=8, help="kill once trials.jsonl has this many lines")
    args = ap.parse_args()
    ensure()
    root = RUNS / "bench-search-resume"
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    started = time.perf_counter()
    subprocess.run(command(root / "full"), check=True, env=env)
    full_seconds = time.perf_counter() - started

    log = root / "killed" / "trials.jsonl"
    proc = subprocess.Popen(command(root / "killed"), env=env)
    while proc.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < args.kill_after):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines_at_kill = len(log.read_text().splitlines())
    subprocess.run(command(root / "killed"), check=True, env=env)
    full = json.loads((root / "full" / "result.json").read_text())
    resumed = json.loads((root / "killed" / "result.json").read_text())
    record = {
        "lines_recorded_before_kill": lines_at_kill,
        "lines_after_resume": len(log.read_text().splitlines()),
        "uninterrupted": {"best": full["best"], "cost": full["cost"], "test_accuracy": full["test_accuracy"]},
        "resumed": {"best": resumed["best"], "cost": resumed["cost"], "test_accuracy": resumed["test_accuracy"]},
        "same_winner": (full["best"]["index"], full["best"]["size"]) == (resumed["best"]["index"],
                                                                          resumed["best"]["size"]),
        "same_cost": full["cost"]["checks"] == resumed["cost"]["checks"],
        "uninterrupted_seconds": round(full_seconds, 1),
    }
    print(json.dumps(record, indent=2))
    save("search_resume", record)
    if not (record["same_winner"] and record["same_cost"]):
        sys.exit("the resumed search differs from the uninterrupted one")


if __name__ == "__main__":
    main()
