"""Students of the shared ResNet-56 with each distillation loss, at equal epochs (issue 18, part 3 and 4).

    python benchmarks/students.py --student resnet20 --epochs 15 --threads 1
    python benchmarks/students.py --student mobilenetv2 --width 0.5 --epochs 15 --threads 1
    python benchmarks/students.py --student shufflenetv2 --epochs 15 --threads 1 --losses none   # baseline only

Each student is trained from scratch by `cnnzip distill` (SGD, lr 0.1, cosine, batch 128, flips and crops, seed 0,
45,000 JPEG training images; 5,000 held out for validation) with the teacher = the JPEG-fine-tuned ResNet-56
(`baseline_resnet56.py`), once per loss set:
none (labels only: the lightweight baseline), response (soft targets, T = 4, alpha = 0.9), feature (FitNets, a 1x1
adapter on the student's feature map at 8 x 8), relation (RKD distance + angle on the same layer), and all three.
Layers: resnet20 layer3 : resnet56 layer3; mobilenetv2 layers.12 (96 channels at 8 x 8) : resnet56 layer3;
shufflenetv2 has no 8 x 8 stage output, so only none and response run for it.
Every run checkpoints per epoch under $CNNZIP_RUNS/bench-students/ and resumes. Test accuracy is evaluated once
per student (`report.json`); parameters and MACs from cnnzip.measure; all students and the teacher are then timed
side by side in ONNX Runtime (5 rotating rounds). Writes results/students_<student>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _common import CIFAR_JPEG, REPO, RESULTS, RUNS, require_shared, save
from baseline_resnet56 import ensure, model_file

LAYERS = {"resnet20": "layer3", "mobilenetv2": "layers.12:layer3", "shufflenetv2": None}
LOSSES = {"none": "none", "response": "response", "feature": "feature", "relation": "relation",
          "all": "response,feature,relation"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", choices=list(LAYERS), default="resnet20")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=float, default=1.0, help="the student's width multiplier (MobileNetV2 at 0.5 "
                    "has ResNet-20's MACs; at 1.0 an epoch takes 20-30 minutes on one thread here)")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    require_shared()
    ensure()
    teacher = model_file("resnet56")
    layer = LAYERS[args.student]
    wanted = [k.strip() for k in args.losses.split(",") if k.strip()]
    if layer is None:
        wanted = [k for k in wanted if k in ("none", "response")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    student = args.student + (f"-w{args.width:g}" if args.width != 1 else "")  # (runs and files are named so)
    rows = earlier_rows(RESULTS / f"students_{student}.json", args.epochs, wanted)
    for name in wanted:
        out = RUNS / "bench-students" / f"{student}-{name}-e{args.epochs}"
        cmd = [sys.executable, "-m", "cnnzip.cli", "distill", str(teacher), "--data", str(CIFAR_JPEG), "--student",
               args.student, "--losses", LOSSES[name], "--epochs", str(args.epochs), "--lr", "0.1", "--seed", "0",
               "--threads", str(args.threads), "--out", str(out), "--no-progress", "--quiet"]
        if name in ("feature", "relation", "all"):
            cmd += ["--distill-layers", layer]
        if args.width != 1:
            cmd += ["--student-width", str(args.width)]
        started = time.perf_counter()
        if (out / "report.json").exists():  # finished (the report is written last): its test read once, kept
            print(f"  {name}: finished in {out}", flush=True)
        else:
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        report = json.loads((out / "report.json").read_text())
        history = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["history"]
        rows[name] = {"losses": LOSSES[name], "wall_seconds_this_call": time.perf_counter() - started,
                      "train_seconds": sum(h["seconds"] for h in history),
                      "student": report["rows"]["student"], "teacher": report["rows"]["teacher"],
                      "model": str(out / "model.pt"), "history": history}
        print(f"  {name}: test {report['rows']['student']['test']:.2%}", flush=True)
    from cnnzip.deploy import compare_onnx_latency, export_onnx
    from cnnzip.io import load

    torch.set_num_threads(args.threads)
    root = RUNS / "bench-students"
    files = {"teacher resnet56": export_onnx(load(teacher)[0], root / "teacher.fp32.onnx", (3, 32, 32))}
    for name, row in rows.items():
        model, _ = load(row["model"])
        files[name] = export_onnx(model, root / f"{student}-{name}.fp32.onnx", (3, 32, 32))
        row["file_bytes"] = os.path.getsize(row["model"])
    times = compare_onnx_latency(files, (3, 32, 32), (1, 256), rounds=args.rounds)
    for name, row in rows.items():
        row |= times[name]
    table = markdown(student, rows, times["teacher resnet56"])
    print(table)
    save(f"students_{student}", {"student": args.student, "width": args.width, "epochs": args.epochs, "seed": 0,
                                 "data": CIFAR_JPEG.name, "teacher": str(teacher), "table": table,
                                 "teacher_latency": times["teacher resnet56"], "rows": rows})


def markdown(student: str, rows: dict, teacher_latency: dict) -> str:
    """The BENCHMARKS table: the teacher, then each loss set, its gain over the student from scratch."""
    teacher = next(iter(rows.values()))["teacher"]
    lines = ["| student | losses | test | vs from scratch | parameters | MACs | ORT ms, batch 1 | ORT ms, batch 256 |",
             "|---|---|---|---|---|---|---|---|",
             f"| ResNet-56 (teacher) | - | {teacher['test']:.2%} | | {teacher['params']:,} | "
             f"{teacher['macs'] / 1e6:.1f}M | {teacher_latency['ort_ms_b1']:.2f} | {teacher_latency['ort_ms_b256']:.1f} |"]
    scratch = rows.get("none", {}).get("student", {}).get("test")
    for name in LOSSES:
        if name not in rows:
            continue
        r, s = rows[name], rows[name]["student"]
        gain = f"{100 * (s['test'] - scratch):+.2f}" if scratch is not None and name != "none" else ""
        lines.append(f"| {student} | {name} | {s['test']:.2%} | {gain} | {s['params']:,} | {s['macs'] / 1e6:.1f}M | "
                     f"{r['ort_ms_b1']:.2f} | {r['ort_ms_b256']:.1f} |")
    return "\n".join(lines)


def earlier_rows(path, epochs: int, wanted: list[str]) -> dict:
    """Rows an earlier call measured at the same epochs whose model is still on disk: kept (and timed again beside
    the new ones), so that one loss per call does not drop the others from the results file."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("epochs") != epochs:
        return {}
    kept = {k: r for k, r in earlier["rows"].items() if k not in wanted and os.path.exists(r["model"])}
    for k, r in kept.items():
        r.setdefault("measured", earlier["environment"])
        print(f"  {k}: kept from {path.name} ({r['measured']['date']}, commit {r['measured']['commit']})", flush=True)
    return kept


if __name__ == "__main__":
    main()
