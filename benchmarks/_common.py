"""What every benchmark records beside its numbers: machine, versions, seed, data, and the command."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = Path(__file__).resolve().parent / "results"
# Checkpoints and trained models live outside the work tree, so that a later session on the same machine can
# resume a long run: $CNNZIP_RUNS, by default ~/.cache/cnnzip/runs.
RUNS = Path(os.environ.get("CNNZIP_RUNS") or Path.home() / ".cache" / "cnnzip" / "runs")  # empty: the default
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "models" / "resnet20-12fca82f.th"
RESNET56 = SHARED / "models" / "resnet56-4bfd9763.th"


def environment() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit, "command": " ".join(sys.argv)}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2))
    print(f"wrote {path.relative_to(REPO)}")
    return path


def require_shared() -> None:
    if not CIFAR_JPEG.exists():
        sys.exit(f"this benchmark needs ../shared beside the repository (looked for {CIFAR_JPEG})")
