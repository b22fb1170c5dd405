"""Data-parallel training under torchrun: 2 gloo processes on the CPU give what one process gives.

The 2-process runs start real `torchrun` jobs (`python -m torch.distributed.run --standalone`), as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnzip import distributed
from cnnzip.data import Loader, load_digits
from cnnzip.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_ddp_fit.py")


def _env(tmp: Path) -> dict[str, str]:
    (tmp / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp / "tmp"), "OMP_NUM_THREADS": "1",
            "CNNZIP_SYNC_BN": "1"}  # (the CLI's --sync-bn: BatchNorm over the whole batch, as one process)


def _torchrun(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp), cwd=tmp, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _alone(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(tmp), cwd=tmp,
                          timeout=300, check=True)


def test_shards_split_every_batch_without_overlap():
    """Two shards see the same global batches as one loader (same order and augmentation), half each."""
    ds = load_digits()
    split = ds.train.subset(torch.arange(203))  # the last batch of 64 holds 11 images, split 6 + 5
    one = Loader(split, 64, shuffle=True, augment=True, padding=1, mean=ds.mean, std=ds.std, seed=3)
    shards = [one.shard(r, 2) for r in range(2)]
    for loader in (one, *shards):
        loader.set_epoch(2)
    whole = list(one)
    parts = [list(s) for s in shards]
    assert len(one) == len(shards[0]) == len(whole) == len(parts[1]) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    # A final batch with fewer images than processes is skipped by every rank; one process keeps it.
    odd = ds.train.subset(torch.arange(129))
    assert len(Loader(odd, 64, mean=ds.mean, std=ds.std)) == 3
    assert len(Loader(odd, 64, mean=ds.mean, std=ds.std).shard(1, 2)) == len(list(
        Loader(odd, 64, mean=ds.mean, std=ds.std).shard(1, 2))) == 2
    with pytest.raises(DataError, match="one image per process"):
        Loader(odd, 2, mean=ds.mean, std=ds.std).shard(0, 4)
    with pytest.raises(DataError, match="rank"):
        one.shard(2, 2)


def test_a_single_process_is_not_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.is_main()
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(Exception, match="torchrun"):
        distributed.world()


def test_two_processes_train_as_one_keep_masks_and_resume(tmp_path):
    """`fit` under torchrun: both ranks end with identical weights, the masks hold on both, the result equals one
    process's (to float rounding: BatchNorm statistics are those of the whole batch), and a run killed mid-epoch resumes
    to the same bits as an uninterrupted one."""
    one, two, killed = (tmp_path / n for n in ("one", "two", "killed"))
    for d in (one, two, killed):
        d.mkdir()
    _alone(tmp_path, str(SCRIPT), str(one))
    _torchrun(tmp_path, str(SCRIPT), str(two))
    a, b0, b1 = (torch.load(p, weights_only=True) for p in (one / "rank0.pt", two / "rank0.pt", two / "rank1.pt"))
    assert a["history"][-1]["train_acc"] > 0.8  # it learned: the comparison below is not between untouched weights
    for k in a["model"]:
        assert torch.equal(b0["model"][k], b1["model"][k]), k
        torch.testing.assert_close(b0["model"][k], a["model"][k], atol=1e-4, rtol=0)
    assert torch.equal(b0["bias"], b1["bias"])  # the hook's own parameter: averaged by hand, the same on both
    torch.testing.assert_close(b0["bias"], a["bias"], atol=1e-5, rtol=0)
    assert b0["history"][-1]["train_acc"] == pytest.approx(a["history"][-1]["train_acc"], abs=0.01)
    for k, mask in a["masks"].items():
        assert (mask == 0).any()
        assert not b0["model"][k][mask == 0].any() and not b1["model"][k][mask == 0].any()

    # Killed at step 30 (in the second epoch, after the first epoch's checkpoint), then rerun: it resumes.
    done = _torchrun(tmp_path, str(SCRIPT), str(killed), "--stop-at-step", "30", check=False)
    assert done.returncode != 0 and (killed / "checkpoint.pt").exists() and not (killed / "rank0.pt").exists()
    _torchrun(tmp_path, str(SCRIPT), str(killed))
    for r in (0, 1):
        c = torch.load(killed / f"rank{r}.pt", weights_only=True)
        assert c["resumed_from_epoch"] == 1
        assert all(torch.equal(c["model"][k], b0["model"][k]) for k in c["model"])

    # Every rank can resume what it trained (each CLI rank checkpoints into its own copy of --out).
    twice = tmp_path / "twice"
    twice.mkdir()
    _torchrun(tmp_path, str(SCRIPT), str(twice), "--twice")
    for r in (0, 1):
        assert torch.load(twice / f"rank{r}.pt", weights_only=True)["resumed_from_epoch"] == 3

    # A parameter that never takes part in the forward pass stalls DDP: a clear error says what to do.
    done = _torchrun(tmp_path, str(SCRIPT), str(tmp_path), "--unused-layer", check=False)
    assert done.returncode != 0 and "requires_grad=False" in done.stderr


def test_a_command_under_torchrun_writes_one_run_directory(tmp_path, digits_model):
    """`torchrun ... -m cnnzip deep-compress`: rank 0 writes the same files as one process, with the same masks;
    the other rank works in a private copy that is gone afterwards; a rerun resumes instead of refusing."""
    model = digits_model(2)
    args = ["deep-compress", str(model), "--sparsity", "0.6", "--finetune-epochs", "1", "--centroid-epochs", "1",
            "--quiet", "--no-progress", "--batch-size", "64"]
    _alone(tmp_path, "-m", "cnnzip.cli", *args, "--out", str(tmp_path / "one"))
    done = _torchrun(tmp_path, "-m", "cnnzip.cli", *args, "--out", str(tmp_path / "two"))

    def layout(run: Path) -> list[str]:  # checkpoint names end in a hash of their starting weights
        return sorted(re.sub(r"-[0-9a-f]{12}\.pt$", "-HASH.pt", str(p.relative_to(run))) for p in run.rglob("*"))

    assert layout(tmp_path / "one") == layout(tmp_path / "two")
    assert not list((tmp_path / "tmp").glob("cnnzip-rank*"))  # rank 1's private copy is removed
    assert done.stdout.count("saved") <= 1 and "test accuracy" in done.stdout  # rank 0 alone prints

    from cnnzip.io import load_any

    a, _ = load_any(tmp_path / "one" / "model.cnnz")
    b, _ = load_any(tmp_path / "two" / "model.cnnz")
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if p.dim() > 1:
            assert torch.equal(p == 0, q == 0), name
    again = _torchrun(tmp_path, "-m", "cnnzip.cli", *args, "--out", str(tmp_path / "two"))
    assert "holds" not in again.stderr
