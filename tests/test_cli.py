
"""The command line as a user meets it: real subprocesses, real exit codes, no tracebacks for user mistakes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnzip.cli import main
from cnnzip.io import load_model
from cnnzip.measure import count_parameters
from cnnzip.models import create_model

REPO = Path(__file__).resolve().parents[1]


PROGRESS = re.compile(r"^\[ *\d+\.\ds\] ")


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "cnnzip.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_models_lists_the_zoo(capsys):
    assert main(["models", "resnet*"]) == 0
    out = capsys.readouterr().out.split()
    assert out == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


@pytest.mark.parametrize("args, message", [
    (["eval", "no/such/model.pt", "--model", "resnet20"], "no such model file"),
    (["train", "--data", "no/such/dir", "--epochs", "1"], "no/such/dir"),
    (["train", "--model", "resnet9000", "--epochs", "1"], "resnet9000"),
    (["train", "--epochs", "1", "--lr", "-1"], "lr"),
    (["info", "resnet20", "--input-shape", "3x32"], "--input-shape"),
    (["models", "nothing*"], "no model matches"),
])
def test_user_errors_get_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    lines = [ln for ln in err.strip().splitlines() if not PROGRESS.match(ln)]  # progress lines come first
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("cnnzip: error: ")


def test_raw_weights_without_architecture_are_explained(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, path)
    assert main(["eval", str(path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_demo_runs_the_main_job_and_reports_it(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # The before/after table: the compressed file is smaller and meets the target on the validation split.
    size = next(ln for ln in lines if ln.startswith("file bytes")).split()
    before, after = int(size[2].replace(",", "")), int(size[3].replace(",", ""))
    assert after == (out / "search" / "best.cnnz").stat().st_size and after < before / 3
    assert before == (out / "model.pt").stat().st_size
    val = next(ln for ln in lines if ln.startswith("validation accuracy")).split()
    assert float(val[4]) >= -1.0  # within the one point asked for
    test = next(ln for ln in lines if ln.startswith("test accuracy")).split()
    assert float(test[3].rstrip("%")) > 90.0
    assert "report" in lines[-1] and (out / "report.html").exists()
    assert "check 1:" in r.stderr  # progress, one line per accuracy check


def test_train_eval_info_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), "--no-progress", "--lr", "0.05"]) == 0
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    text = capsys.readouterr().out
    test_acc = float(text.split("test accuracy ")[1].split()[0])
    assert main(["eval", str(out / "model.pt")]) == 0
    assert f"test accuracy {test_acc:.4f}" in capsys.readouterr().out
    assert main(["eval", str(out / "model.pt"), "--target", "0.5"]) == 0
    assert ("PASS" if test_acc >= 0.5 else "FAIL") in capsys.readouterr().out
    assert main(["info", str(out / "model.pt"), "--batch-sizes", "1", "--repeats", "3"]) == 0
    assert "parameters" in capsys.readouterr().out


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    common = ["train", "--epochs", "5", "--no-progress", "--lr", "0.05", "--seed", "1"]
    ref = run_cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cnnzip.cli", *common, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "model.pt").exists()

    resumed = run_cli(*common, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prune_finetune_and_export(tmp_path, capsys, digits_model):
    pytest.importorskip("onnxruntime")
    model = digits_model(4)
    out = tmp_path / "pruned"
    args = ["prune", str(model), "--method", "fpgm", "--ratio", "0.5", "--finetune-epochs", "2", "--lr", "0.05",
            "--out", str(out), "--no-progress", "--latency-batches", "1,8", "--latency-repeats", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for word in ("params", "macs", "bytes", "accuracy", "eager_ms_b1", "ort_ms_b8", "surgery verified"):
        assert word in text
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["rows"]["pruned+finetuned"]["params"] < report["rows"]["original"]["params"]
    assert report["verification_max_error"] <= 1e-4
    # The saved pruned model evaluates to the reported accuracy, and exports to ONNX.
    assert main(["eval", str(out / "pruned.pt")]) == 0
    acc = report["rows"]["pruned+finetuned"]["accuracy"]
    assert f"test accuracy {acc:.4f}" in capsys.readouterr().out
    assert main(["export", str(out / "pruned.pt"), "--out", str(tmp_path / "p.onnx")]) == 0
    assert (tmp_path / "p.onnx").stat().st_size > 1000


def test_prune_to_a_latency_target(tmp_path, capsys, digits_model, monkeypatch):
    """NetAdapt-style pruning priced by a layer table, candidates scored on validation images; the report gives the
    goal, the prediction and the measured time. The table is made deterministic here (each layer's time its
    MACs): a measured table on a model this small is mostly noise. test_deploy times real tables."""
    pytest.importorskip("onnxruntime")
    import json as _json

    import cnnzip.deploy
    from cnnzip.deploy import LatencyTable, layer_configs

    def table(model, shape, batch_size=1, **kw):
        configs = layer_configs(model, tuple(shape))
        points, base = {}, 0.0
        for c in configs.values():
            grid = {(max(1, round(c.cin * f)), max(1, round(c.cout * g))) for f in (0.25, 0.5, 0.75, 1) for g in
                    (0.25, 0.5, 0.75, 1)}
            area = 1 if c.kind == "linear" else c.size[0] * c.size[1] * c.kernel[0] * c.kernel[1]
            points[c.key()] = {f"{a},{b}": a * b * area / 1e3 for a, b in grid}
            base += c.cin * c.cout * area / 1e3
        calls.append(kw.get("precision", "fp32"))
        rounding.append(kw.get("round_to"))
        return LatencyTable(batch_size, 1, base, {n: c.key() for n, c in configs.items()}, points)

    calls, rounding = [], []
    monkeypatch.setattr(cnnzip.deploy, "build_latency_table", table)
    model = digits_model(4)
    out = tmp_path / "fast"
    args = ["prune", str(model), "--latency-reduction", "0.3", "--latency-step", "0.1", "--latency-eval-images", "64",
            "--latency-candidates", "2", "--recalibrate", "64", "--latency-batches", "1", "--latency-repeats", "3",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fp32 time at batch 1: predicted" in text and "measured in ONNX Runtime" in text
    report = _json.loads((out / "report.json").read_text())
    assert report["latency_reduction_goal"] == 0.3 and calls == ["fp32"]
    assert rounding == [8]  # latency pruning rounds widths to 8 unless told otherwise
    notes = report["notes"]
    assert notes["latency_reduction"] >= 0.3 and notes["evaluations"] >= 1 and notes["log"]
    assert report["rows"]["pruned"]["params"] < report["rows"]["original"]["params"]
    for bad, says in ((["--ratio", "0.3", "--latency-step", "0.1"], "--latency-step only apply"),
                      (["--latency-reduction", "1.5"], "--latency-reduction is the fraction"),
                      (["--latency-reduction", "0.2", "--latency-step", "0.3"], "--latency-step must be in"),
                      (["--ratio", "0.3", "--remove-blocks"], "--remove-blocks only apply"),
                      (["--latency-reduction", "0.2", "--remove-blocks", "--latency-eval-images", "0"],
                       "--remove-blocks compares"),
                      (["--latency-reduction", "0.2", "--remove-blocks", "--val-size", "0"], "set --val-size above 0")):
        assert main(["prune", str(model), *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err


def test_prune_time_limit_stops_the_surgery_with_a_clear_error(tmp_path, capsys, digits_model, monkeypatch):
    """An alarm raised inside verification reaches the command (not taken for a failed group): one clear line,
    no pruned model written. --round-to keeps multiples."""
    import time

    from cnnzip.prune import graph

    model = digits_model(4)
    real = graph.run_float64

    def slow(*a, **k):
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(graph, "run_float64", slow)
    out = tmp_path / "slow"
    args = ["prune", str(model), "--ratio", "0.5", "--latency-batches", "none", "--no-progress"]
    assert main([*args, "--time-limit", "0.2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--time-limit" in err and "Traceback" not in err and not (out / "pruned.pt").exists()
    assert main([*args, "--time-limit", "-1", "--out", str(tmp_path / "neg")]) == 2
    monkeypatch.setattr(graph, "run_float64", real)
    assert main([*args, "--round-to", "4", "--out", str(tmp_path / "r4")]) == 0
    report = __import__("json").loads((tmp_path / "r4" / "report.json").read_text())
    assert all(after % 4 == 0 for before, after in report["widths"].values() if after != before)
    # --rounding up keeps floor(0.7 x channels) of each layer where the default removes floor(0.3 x channels).
    for rounding in ("down", "up"):
        assert main([*args[:2], "--ratio", "0.3", "--rounding", rounding, "--latency-batches", "none",
                     "--no-progress", "--out", str(tmp_path / rounding)]) == 0
        widths = __import__("json").loads((tmp_path / rounding / "report.json").read_text())["widths"].values()
        kept = (lambda n: n - int(0.3 * n)) if rounding == "down" else (lambda n: int(0.7 * n + 1e-9))
        assert all(after == kept(before) for before, after in widths) and len(widths) > 1


def test_train_with_sparsity_shrinks_gammas(tmp_path):
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    for out, extra in ((dense, []), (sparse, ["--sparsity", "0.2"])):
        assert main(["train", "--epochs", "2", "--lr", "0.05", "--out", str(out), "--no-progress", *extra]) == 0

    def gamma_sum(path):
        sd = torch.load(path / "model.pt", weights_only=True)["state_dict"]
        return sum(v.abs().sum() for k, v in sd.items() if k.endswith("weight") and v.dim() == 1)

    assert gamma_sum(sparse) < 0.8 * gamma_sum(dense)


def test_mismatched_model_and_data_and_bad_lists(tmp_path, capsys, digits_model):
    model = digits_model(1)
    capsys.readouterr()
    for args, message in [
        (["eval", str(model), "--data", "cifar10:" + str(tmp_path / "nope")], "nope"),
        (["prune", str(model), "--ratio", "0.5", "--latency-batches", "1,x"], "--latency-batches"),
        (["info", str(model), "--batch-sizes", "0"], "--batch-sizes"),
        (["train", "--device", "cuda:7", "--epochs", "1"], "cuda"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_resume_refuses_other_data_or_weights(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--lr", "0.05"]) == 0
    (out / "model.pt").unlink()
    # Same directory, other batch size: refused with a clear message, not resumed silently.
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--lr", "0.05",
                 "--batch-size", "64"]) == 2
    assert "other settings (--batch-size)" in capsys.readouterr().err


def test_a_folder_holding_another_run_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--epochs", "1", "--out", str(out), "--no-progress", "--quiet"]
    assert main(train) == 0
    model = out / "model.pt"
    before = model.read_bytes()
    capsys.readouterr()
    # Another command into the same folder: refused before any work, the run left as it was.
    assert main(["prune", str(model), "--ratio", "0.3", "--latency-batches", "none", "--out", str(out)]) == 2
    assert "holds a `cnnzip train` run" in capsys.readouterr().err and model.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "model.pt", "report.html",
                                                    "run.json"]
    # The same run resumes, and says so; --overwrite replaces another one.
    assert main(train[:-1]) == 0
    assert "resuming the run in" in capsys.readouterr().err
    assert main([*train, "--lr", "0.2", "--overwrite"]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["lr"] == 0.2
    # A run saved before an option existed resumes while the option keeps its default, not with another value.
    saved = json.loads((out / "run.json").read_text())
    del saved["settings"]["seed"]
    (out / "run.json").write_text(json.dumps(saved))
    assert main([*train, "--lr", "0.2", "--seed", "3"]) == 2
    assert "other settings (--seed)" in capsys.readouterr().err
    assert main([*train, "--lr", "0.2"]) == 0
    # A folder of files that are not a cnnzip run is refused, even with --overwrite.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*train[:3], "--out", str(tmp_path / "mine"), "--overwrite", "--quiet"]) == 2
    assert "not a cnnzip run" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_a_bad_out_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "run", "unwritable": tmp_path / "ro" / "run"}[where]
    (tmp_path / "ro").mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: deny it here, as the permission bits would for a user
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "ro" and real_access(p, mode))
    commands = [["train", "--epochs", "50"]] + ([["export", str(blocker), "--model", "resnet20"]]
                                                if where != "a file" else [])  # (export writes a file)
    for args in commands:
        started = time.perf_counter()
        assert main([*args, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and len(err.strip().splitlines()) == 1
        assert time.perf_counter() - started < 5  # before any training


def test_search_command_finds_and_resumes(tmp_path, capsys, digits_model):
    model = digits_model(5)
    args = ["search", str(model), "--drop", "0.03", "--step", "0.25", "--max-ratio", "0.75", "--margin", "1",
            "--conv-bits", "5", "--out", str(tmp_path / "s")]
    capsys.readouterr()
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "smallest passing" in first and "test accuracy (evaluated once)" in first
    assert not (tmp_path / "s" / "tmp").exists()  # the scratch candidate is gone
    assert main(args) == 0  # resumes from trials.jsonl: same answer, same recorded cost
    again = capsys.readouterr()
    assert first.splitlines()[1:3] == again.out.splitlines()[1:3]
    assert "resuming: " in again.err and "accuracy checks already recorded" in again.err
    again = again.out
    assert main(["search", str(model), "--target-acc", "0.999", "--out", str(tmp_path / "u")]) == 2
    assert "above the model's own" in capsys.readouterr().err

    # Stopped by a budget, resumed without it: the same winner; then fine-tuned, with a one-line report.
    cut = [a if a != str(tmp_path / "s") else str(tmp_path / "c") for a in args]
    assert main([*cut, "--max-checks", "2"]) == 0
    assert "stopped by the budget" in capsys.readouterr().out
    assert main(cut) == 0
    assert capsys.readouterr().out.splitlines()[2] == first.splitlines()[2]
    assert main([*cut, "--finetune-epochs", "1", "--centroid-epochs", "1", "--no-progress"]) == 0
    tuned = capsys.readouterr().out
    assert "after fine-tuning:" in tuned and tuned.splitlines()[2] == first.splitlines()[2]
    assert json.loads((tmp_path / "c" / "result.json").read_text())["finetuned"]
    # --val-images: every decision on the same 40 validation images.
    assert main([*args[:-1], str(tmp_path / "v"), "--val-images", "40"]) == 0
    trials = [json.loads(line) for line in (tmp_path / "v" / "trials.jsonl").read_text().splitlines()]
    trials = [t for t in trials if t.get("kind") != "size"]
    assert trials and max(t["images"] for t in trials) == 40
    # --recover-images: every candidate fine-tuned on 200 training images (distilled from MODEL) before its check;
    # the per-candidate checkpoints are gone when the search ends, and the winner is the recovered candidate.
    rec = [*args[:-1], str(tmp_path / "r"), "--recover-images", "200", "--recover-distill", "--no-progress"]
    assert main(rec) == 0
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["cost"]["recovery_seconds"] > 0 and not (tmp_path / "r" / "recovery").exists()
    assert saved["final_accuracy"] >= saved["target"]
    records = [json.loads(line) for line in (tmp_path / "r" / "trials.jsonl").read_text().splitlines()]
    assert all(r["recovery"]["distill"] and r["recovery"]["images"] == 200 for r in records)
    assert main([*rec[:-4], "--recover-images=-5"]) == 2
    assert "--recover-images" in capsys.readouterr().err
    # --structured pca: the structured step keeps each layer's PCA width, measured on --pca-images.
    assert main([*args[:-1], str(tmp_path / "p"), "--order", "ns", "--structured", "pca", "--pca-images", "300",
                 "--recalibrate", "128", "--no-progress"]) == 0
    records = [json.loads(line) for line in (tmp_path / "p" / "trials.jsonl").read_text().splitlines()]
    assert records and all("pca_images" in r for r in records if "ratios" in r)


def test_dynamic_prune_and_fuse_commands(tmp_path, capsys, monkeypatch):
    model = tmp_path / "r20" / "model.pt"
    assert main(["train", "--model", "resnet20", "--width", "0.5", "--epochs", "3", "--lr", "0.05", "--out",
                 str(tmp_path / "r20"), "--no-progress"]) == 0
    assert main(["dynamic-prune", str(model), "--drop", "0.05", "--iterations", "1", "--tolerance", "0.1",
                 "--out", str(tmp_path / "dyn"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "dyn" / "report.json").read_text())
    assert "fewer" in out and report["macs"]["after"] < report["macs"]["before"]
    assert report["validation"]["after"] >= report["validation"]["target"]
    assert main(["fuse", str(tmp_path / "dyn" / "pruned.pt"), "--every", "1", "--max-drop", "0.5", "--max-removals",
                 "1", "--out", str(tmp_path / "fuse"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 layers fused" in out and "test accuracy (once)" in out
    rows = json.loads((tmp_path / "fuse" / "report.json").read_text())["rows"]
    assert rows[-1]["depth"] == rows[0]["depth"] - 2 and rows[-1]["macs"] < rows[0]["macs"]
    assert main(["fuse", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")]) == 2
    assert main(["dynamic-prune", str(model), "--target-acc", "1.0", "--out", str(tmp_path / "y")]) == 2
    assert "above the model's own" in capsys.readouterr().err
    # CPU-sized feedback: trials on a subset, each iteration's winner recovered on everything.
    assert main(["dynamic-prune", str(model), "--drop", "0.05", "--iterations", "1", "--tolerance", "0.1",
                 "--trial-images", "300", "--recover-epochs", "1", "--out", str(tmp_path / "rec"),
                 "--no-progress"]) == 0
    assert "fine-tuned longer" in capsys.readouterr().out
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["trial_images"] == 300 and set(report["recovered"]) == {"0"}
    assert report["validation"]["after"] == report["recovered"]["0"]["accuracy"]
    # --distill: trials and recoveries learn from MODEL through the distillation hook; a run is one or the other.
    from cnnzip.distill import Distillation

    calls = []
    original = Distillation.loss
    monkeypatch.setattr(Distillation, "loss", lambda self, *a: calls.append(self.alpha) or original(self, *a))
    common = ["--drop", "0.05", "--iterations", "1", "--tolerance", "0.1", "--trial-images", "300",
              "--recover-epochs", "1", "--no-progress"]
    assert main(["dynamic-prune", str(model), *common, "--out", str(tmp_path / "rec"), "--distill"]) == 2
    assert "other settings" in capsys.readouterr().err and not calls
    assert main(["dynamic-prune", str(model), *common, "--out", str(tmp_path / "kd"), "--distill",
                 "--alpha", "0.5"]) == 0
    assert calls and set(calls) == {0.5}
    assert json.loads((tmp_path / "kd" / "state.json").read_text())["config"]["training"]["distill"] == \
        {"temperature": 4.0, "alpha": 0.5}
    assert main(["dynamic-prune", str(model), "--trial-images", "-1", "--out", str(tmp_path / "z")]) == 2
    assert "--trial-images" in capsys.readouterr().err
    assert main(["dynamic-prune", str(model), "--recover-epochs", "-1", "--out", str(tmp_path / "z")]) == 2
    assert "--recover-epochs" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "dyn" / "pruned.pt"), "--long-epochs", "-2", "--out", str(tmp_path / "z")]) == 2
    assert "--long-epochs" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "dyn" / "pruned.pt"), "--recalibrate", "-1", "--out", str(tmp_path / "z")]) == 2
    assert "--recalibrate" in capsys.readouterr().err
    assert main(["fuse", str(tmp_path / "dyn" / "pruned.pt"), "--every", "1", "--max-drop", "0.5", "--max-removals",
                 "1", "--no-short", "--long-epochs", "0", "--recalibrate", "64", "--out", str(tmp_path / "fuse-rc"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "fuse-rc" / "state.json").read_text())["config"]["recalibrate"] == 64


def test_misleading_or_silent_inputs_are_refused_with_the_options_name(tmp_path, capsys, monkeypatch):
    assert main(["train", "--epochs", "2", "--out", str(tmp_path / "t"), "--quiet", "--no-progress"]) == 0
    model = tmp_path / "t" / "model.pt"
    capsys.readouterr()
    out = ["--out", str(tmp_path / "o"), "--quiet"]
    for args, message in [
        (["prune", str(model), "--ratio", "0.3", "--finetune-epochs", "-1"], "--finetune-epochs must be 0"),
        (["deep-compress", str(model), "--centroid-epochs", "-2"], "--centroid-epochs must be 0"),
        (["prune", str(model), "--ratio", "0.3", "--min-channels", "1000", "--latency-batches", "none"],
         "nothing was removed: with --min-channels 1000"),
        (["prune", str(model), "--ratio", "0.3", "--skip", "layer[1"], "--skip 'layer[1' is not a valid regular"),
        (["eval", str(model), "--val-size", "-3"], "--val-size -3: give a count of images"),
        (["dynamic-prune", str(model), "--drop", "-1"], "the drop is an accuracy difference in [0, 1)"),
        (["fuse", str(model), "--every", "0"], "--every must be 1 or more"),
        (["fuse", str(model), "--max-drop", "2"], "--max-drop is an accuracy drop in [0, 1)"),
        (["train", "--threads", "0"], "--threads must be 1 or more"),
    ]:
        assert main([*args, *(out if args[0] != "eval" else ["--quiet"])]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)

    # Weights that do not fit name their file; raw weights are checked before any data is read.
    raw = tmp_path / "raw.pt"
    torch.save(create_model("resnet20").state_dict(), raw)
    assert main(["eval", str(raw), "--model", "vgg11", "--quiet"]) == 2
    assert str(raw) in capsys.readouterr().err
    import cnnzip.cli.options as options

    monkeypatch.setattr(options, "load_dataset", lambda spec: pytest.fail("the data was read first"))
    assert main(["eval", str(raw), "--data", "cifar10:/nowhere", "--quiet"]) == 2
    assert "--model NAME" in capsys.readouterr().err
    monkeypatch.undo()

    # Raw weights without --norm: the data's statistics, said out loud.
    torch.save(create_model("small_cnn", in_channels=1).state_dict(), raw)
    assert main(["eval", str(raw), "--model", "small_cnn", "--quiet"]) == 0
    assert "--norm imagenet" in capsys.readouterr().err
    # info reports a compressed file's own size, not that of an fp32 state dict.
    assert main(["deep-compress", str(model), "--sparsity", "0.5", "--out", str(tmp_path / "dc"), "--quiet"]) == 0
    capsys.readouterr()
    cnnz = tmp_path / "dc" / "model.cnnz"
    assert main(["info", str(cnnz), "--batch-sizes", "1", "--repeats", "2"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("file bytes"))
    assert f"{cnnz.stat().st_size:,}" in line


def test_prune_to_a_latency_target_by_removing_blocks(tmp_path, capsys, monkeypatch):
    """--remove-blocks: where the first stage's convs take as long at any width (as ONNX Runtime's int8 convs on
    large images nearly do), only removing its blocks saves time; they go, the file reloads, the report says so.
    The table is made deterministic (a stand-in, as in test_prune_to_a_latency_target)."""
    import cnnzip.deploy
    from cnnzip.data import load_digits
    from cnnzip.deploy import LatencyTable, layer_configs
    from cnnzip.io import ModelMeta, load_model, save_model
    from cnnzip.models import RemovedBlock, create_model

    def table(model, shape, batch_size=1, **kw):
        configs = layer_configs(model, tuple(shape))
        first = configs["layer1.0.conv1"].key()
        points = {}
        for c in configs.values():
            grid = {(max(1, round(c.cin * f)), max(1, round(c.cout * g))) for f in (0.25, 0.5, 1) for g in (0.25, 0.5, 1)}
            points[c.key()] = {f"{a},{b}": 100.0 if c.key() == first else a * b / 1e3 for a, b in grid}
        base = sum(points[c.key()][f"{c.cin},{c.cout}"] for c in configs.values())
        return LatencyTable(batch_size, 1, base, {n: c.key() for n, c in configs.items()}, points)

    monkeypatch.setattr(cnnzip.deploy, "build_latency_table", table)
    ds = load_digits()
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=ds.num_classes, in_channels=ds.in_channels, width=0.5).eval()
    path = save_model(tmp_path / "r20.pt", model, ModelMeta(ds.mean, ds.std, (ds.in_channels, *ds.image_size)))
    out = tmp_path / "blocks"
    assert main(["prune", str(path), "--latency-reduction", "0.3", "--remove-blocks", "--latency-eval-images", "64",
                 "--latency-candidates", "2", "--recalibrate", "64", "--latency-batches", "none", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert notes["removed_blocks"] and all(b.startswith("layer1.") for b in notes["removed_blocks"])
    assert "residual blocks after the surgery" in text
    pruned, _ = load_model(out / "pruned.pt")
    assert [n for n, m in pruned.named_modules() if isinstance(m, RemovedBlock)] == notes["removed_blocks"]
    assert pruned(torch.zeros(2, ds.in_channels, *ds.image_size)).shape == (2, ds.num_classes)


def test_prune_residual_streams_unless_inner_only(tmp_path, capsys):
    """A ResNet with zero-padding shortcuts: its streams narrow by default, and keep their width with --inner-only."""
    from cnnzip.data import load_digits
    from cnnzip.io import ModelMeta, load_model, save_model
    from cnnzip.models import create_model

    ds = load_digits()
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=ds.num_classes, in_channels=ds.in_channels, width=0.5).eval()
    path = save_model(tmp_path / "r20.pt", model, ModelMeta(ds.mean, ds.std, (ds.in_channels, *ds.image_size)))
    widths = {}
    for flag in ([], ["--inner-only"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["prune", str(path), "--method", "l1", "--ratio", "0.5", "--out", str(out), "--no-progress",
                     "--latency-batches", "none", *flag]) == 0
        pruned, _ = load_model(out / "pruned.pt")
        widths[bool(flag)] = (pruned.layer3[0].conv2.out_channels, pruned.layer3[0].conv1.out_channels)
    capsys.readouterr()
    assert widths == {False: (16, 16), True: (32, 16)}


def test_prune_recalibrates_batchnorm_unless_told_not_to(tmp_path, capsys, digits_model):
    from cnnzip.io import load_model

    path = digits_model(2)
    original, _ = load_model(path)
    stats = {}
    for images in (0, 300):
        out = tmp_path / f"r{images}"
        assert main(["prune", str(path), "--ratio", "0.5", "--recalibrate", str(images), "--out", str(out),
                     "--no-progress", "--latency-batches", "none"]) == 0
        pruned, _ = load_model(out / "pruned.pt")
        stats[images] = pruned.features[7].weight.shape[1], pruned.features[8].running_var
        assert json.loads((out / "report.json").read_text())["recalibrated_images"] == images
    capsys.readouterr()
    kept_in, raw = stats[0]
    assert len(raw) == 32 and kept_in == 16  # the last conv lost half its channels: both runs cut the same
    assert set(raw.tolist()) <= set(original.features[8].running_var.tolist())  # statistics kept as they were
    assert not torch.equal(stats[300][1], raw)  # re-estimated for the narrower inputs
    assert main(["prune", str(path), "--ratio", "0.5", "--recalibrate", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--recalibrate" in capsys.readouterr().err


def test_recalibration_batches_are_training_images_augmented_as_in_training():
    """BatchNorm statistics are re-estimated on what the model was trained on: a fixed subset of the training
    split, cropped and flipped as `train` does (unless --no-augment), the same batches every time."""
    import argparse
    from types import SimpleNamespace

    from cnnzip.cli.options import Prepared
    from cnnzip.data import Split

    gen = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(100) % 4)
    data = SimpleNamespace(image_size=(32, 32))

    def job(no_augment):
        return Prepared(argparse.Namespace(seed=0, no_augment=no_augment), torch.device("cpu"), data, train, None,
                        torch.nn.Identity(), None, (0.5,) * 3, (0.25,) * 3)

    clean = torch.cat(job(True).recalibration(40))
    augmented = torch.cat(job(False).recalibration(40))
    assert clean.shape == augmented.shape == (40, 3, 32, 32)
    assert torch.equal(augmented, torch.cat(job(False).recalibration(40)))  # seeded: the same every time
    # The same 40 images, in the same order, with crops and flips: never pixel-identical to the clean ones.
    assert not torch.equal(augmented, clean)
    # Flipped or shifted, each augmented image still comes from the clean image in its place.
    for a, c in zip(augmented, clean, strict=True):
        candidates = [c, c.flip(-1)]
        assert any(torch.equal(a[:, 8:24, 8:24], shifted) for x in candidates
                   for shifted in (x[:, 8 + dy:24 + dy, 8 + dx:24 + dx] for dy in range(-4, 5) for dx in range(-4, 5)))


def test_pca_prune_designs_trains_prunes_and_resumes(tmp_path, capsys, digits_model):
    path = digits_model(3)
    out = tmp_path / "pca"
    common = ["--variance", "0.99", "--train-epochs", "1", "--inherit", "--ratio", "0.3", "--finetune-epochs", "1",
              "--no-progress"]
    assert main(["pca-prune", str(path), *common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PCA width" in printed and "fewer parameters" in printed
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert stages["fpgm"]["params"] < stages["pca"]["params"] < stages["original"]["params"]
    assert [r["name"] for r in report["plan"]] == ["features.0", "features.3", "features.7"]
    model, _ = load_model(out / "pruned.pt")
    assert count_parameters(model) == stages["fpgm"]["params"]
    stamp = (out / "pca.pt").stat().st_mtime_ns
    assert main(["pca-prune", str(path), *common, "--out", str(out)]) == 0  # resumes: nothing to redo
    assert (out / "pca.pt").stat().st_mtime_ns == stamp
    capsys.readouterr()
    for bad, flag in ((["--variance", "0"], "variance"), (["--variance", "1.5"], "variance"),
                      (["--ratio", "1"], "ratio"), (["--train-epochs", "-1"], "--train-epochs"),
                      (["--pca-images", "5"], "more images")):
        assert main(["pca-prune", str(path), *bad, "--out", str(tmp_path / "bad")]) == 2
        assert flag in capsys.readouterr().err


def test_every_fine_tune_can_distill_from_a_teacher(tmp_path, capsys, digits_model):
    path = digits_model(3)
    from cnnzip.distill.relation import RelationDistillation

    seen = []
    original = RelationDistillation.loss

    def spy(self, *a, **k):
        seen.append((self.kind, tuple(self.pairs.items())))
        return original(self, *a, **k)

    RelationDistillation.loss = spy
    try:
        assert main(["prune", str(path), "--ratio", "0.5", "--finetune-epochs", "1", "--distill", "relation",
                     "--relation", "sp", "--distill-layers", "features.3", "--latency-batches", "none",
                     "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    finally:
        RelationDistillation.loss = original
    assert seen and set(seen) == {("sp", (("features.3", "features.3"),))}
    capsys.readouterr()
    base = ["prune", str(path), "--ratio", "0.5", "--finetune-epochs", "1", "--latency-batches", "none"]
    for bad, says in ((["--distill", "feature"], "needs the layers"),
                      (["--distill", "feature", "--distill-layers", "features.99"], "features.99"),
                      (["--distill", "--teacher", str(tmp_path / "none.pt")], "none.pt")):
        assert main([*base, *bad, "--out", str(tmp_path / "bad")]) == 2
        assert says in capsys.readouterr().err
    assert main(["prune", str(path), "--ratio", "0.5", "--distill", "--out", str(tmp_path / "nothing")]) == 2
    assert "give --finetune-epochs" in capsys.readouterr().err


def test_distill_trains_a_student_from_a_teacher_with_any_mix_of_losses(tmp_path, capsys, digits_model):
    teacher = digits_model(3)
    common = ["--student", "small_cnn", "--student-width", "0.5", "--epochs", "1", "--no-progress"]
    assert main(["distill", str(teacher), *common, "--losses", "response,feature,relation",
                 "--distill-layers", "features.3,features.7", "--out", str(tmp_path / "all")]) == 0
    assert "student" in capsys.readouterr().out
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert report["rows"]["student"]["params"] < report["rows"]["teacher"]["params"]
    model, meta = load_model(tmp_path / "all" / "model.pt")
    assert count_parameters(model) == report["rows"]["student"]["params"] and meta.notes["distilled_from"]
    checkpoint = torch.load(tmp_path / "all" / "checkpoint.pt", weights_only=True)
    assert checkpoint["identity"]["hooks"] == ["Distillation", "FeatureDistillation", "RelationDistillation"]
    assert len(checkpoint["hook_parameters"]) == 2  # one adapter per feature layer
    for bad, says in ((["--student", "nope"], "not in the zoo"), (["--losses", "feature"], "needs the layers"),
                      (["--losses", "response,response"], "at most once"),
                      (["--losses", "relation", "--distill-layers", "features.3:nope"], "'nope'")):
        args = ["distill", str(teacher), *common, *bad, "--out", str(tmp_path / "bad")]
        if "--student" in bad:
            args = ["distill", str(teacher), *bad, "--out", str(tmp_path / "bad")]
        assert main(args) == 2
        assert says in capsys.readouterr().err


def test_decompose_factors_fine_tunes_and_reloads(tmp_path, capsys, digits_model):
    path = digits_model(3)
    out = tmp_path / "lr"
    assert main(["decompose", str(path), "--macs-reduction", "0.4", "--finetune-epochs", "1", "--latency-batches",
                 "none", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "factored" in printed
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert rows["decomposed+finetuned"]["macs"] <= 0.6 * rows["original"]["macs"] and report["ranks"]
    model, meta = load_model(out / "decomposed.pt")
    assert count_parameters(model) == rows["decomposed+finetuned"]["params"] and meta.notes["decomposed"]
    for bad, says in ((["--energy", "1.5"], "energy"), (["--macs-reduction", "0.999"], "rank 1"),
                      (["--energy", "0.5", "--finetune-epochs", "1", "--distill", "feature"], "needs the layers")):
        assert main(["decompose", str(path), *bad, "--latency-batches", "none", "--out", str(tmp_path / "b")]) == 2
        assert says in capsys.readouterr().err


USER_NET = '''
import torch
from torch import nn


class MyNet(nn.Module):
    """A user's own architecture: not in cnnzip's zoo."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    return MyNet()


def broken():
    return "not a model"
'''


def test_a_users_own_model_from_a_python_file(tmp_path, capsys):
    """--model-py FILE.py:FACTORY: train, prune and deep-compress a model defined in the user's file; the files
    record the factory as text, refuse to load without it (naming it), and reload with it in a fresh process."""
    (tmp_path / "mynet.py").write_text(USER_NET)
    factory = str(tmp_path / "mynet.py") + ":build"
    assert main(["train", "--model-py", factory, "--epochs", "3", "--out", str(tmp_path / "t"), "--quiet",
                 "--no-progress"]) == 0
    trained = tmp_path / "t" / "model.pt"
    assert main(["prune", str(trained), "--model-py", factory, "--method", "l1", "--ratio", "0.5", "--out",
                 str(tmp_path / "p"), "--quiet", "--no-progress", "--latency-batches", "none"]) == 0
    assert main(["deep-compress", str(trained), "--model-py", factory, "--sparsity", "0.5", "--out",
                 str(tmp_path / "d"), "--quiet"]) == 0
    capsys.readouterr()
    pruned, cnnz = tmp_path / "p" / "pruned.pt", tmp_path / "d" / "model.cnnz"
    for path in (trained, pruned, cnnz):
        assert main(["eval", str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--model-py" in err and "mynet.py:build" in err and len(err.strip().splitlines()) == 1
    from cnnzip.io import load_any
    from cnnzip.models import build_user_model

    model, _ = load_any(pruned, model=build_user_model(factory))
    assert model.features[0].out_channels == 8  # pruned, and rebuilt at its pruned widths
    for path in (pruned, cnnz):  # in a fresh process, as a user would
        done = run_cli("eval", str(path), "--model-py", factory)
        assert done.returncode == 0, done.stderr
        assert main(["eval", str(path), "--model-py", factory]) == 0
        assert capsys.readouterr().out == done.stdout  # the same accuracy line in both processes
    bad = [(["--model-py", str(tmp_path / "mynet.py")], "FILE.py:FACTORY"),
           (["--model-py", str(tmp_path / "nowhere.py") + ":build"], "not found"),
           (["--model-py", str(tmp_path / "mynet.py") + ":missing"], "no function 'missing'"),
           (["--model-py", str(tmp_path / "mynet.py") + ":broken"], "not an nn.Module"),
           (["--model-py", factory, "--model", "resnet20"], "not both")]
    for extra, message in bad:
        assert main(["eval", str(trained), *extra]) == 2
        assert message in capsys.readouterr().err
