"""Run a saved model in a new Python process: what a user who never ran the code that made it would get."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch


def outputs_in_a_fresh_process(path: Path, x: torch.Tensor, folder: Path) -> torch.Tensor:
    """The outputs on `x` of the model file at `path`, loaded with `cnnzip.io.load_model` in a fresh process."""
    torch.save(x, folder / "x.pt")
    script = (f"import torch; from cnnzip.io import load_model; m, _ = load_model(r'{path}'); "
              f"torch.save(m(torch.load(r'{folder / 'x.pt'}')).detach(), r'{folder / 'y.pt'}')")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=folder)
    return torch.load(folder / "y.pt")
