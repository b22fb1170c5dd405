"""`cnnzip distill`: train a smaller architecture from a trained teacher, with any mix of the distillation losses."""

from __future__ import annotations

import json

import torch

from ..distill import DISTILL_KINDS, DistillSpec, distillation_hooks
from ..errors import ConfigError
from ..io import save_model
from ..measure import count_macs, count_parameters
from ..models import create_model, list_models
from ..report import Section
from ..train import TrainConfig, fit
from .options import (
    Progress,
    add_data_args,
    add_model_args,
    add_out_args,
    nonnegative,
    prepare,
    run_fingerprint,
    start_run,
    write_run_report,
)

NAME = "distill"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "train a smaller architecture from a trained teacher (response, feature, relation distillation)"
DESCRIPTION = ("Knowledge distillation: train --student (a zoo architecture, new weights) on the training images "
               "with the labels and with what MODEL, the teacher, knows: its softened predictions (response), its "
               "feature maps through trained 1x1 adapters (feature, FitNets), or how it relates the images of a "
               "batch (relation: RKD or similarity-preserving), in any mix. Resumable. Writes OUT/model.pt and "
               "OUT/report.json.")
EPILOG = """examples:
  cnnzip distill runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --student resnet20 --losses response,relation --distill-layers layer3 --epochs 30 --out runs/r20-from-r56
  cnnzip distill runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --student mobilenetv2 --losses feature --distill-layers features.17:layer3 --epochs 30 --out runs/mbv2-kd
Layers are named as both networks name them, or student:teacher where they differ. --losses none trains the student
on the labels alone (the control)."""


def add_arguments(s) -> None:
    add_model_args(s, help="the teacher: a trained cnnzip model file")
    add_data_args(s)
    s.add_argument("--student", required=True, help="the student's architecture (see `cnnzip models`)")
    s.add_argument("--student-width", type=float, default=None, help="its width multiplier")
    s.add_argument("--losses", default="response", help="comma-separated: response, feature, relation; or none")
    s.add_argument("--distill-layers", default="", metavar="NAMES", help="layers feature and relation "
                   "distillation match, comma-separated (student:teacher where the names differ)")
    s.add_argument("--relation", choices=["rkd", "sp"], default="rkd")
    s.add_argument("--distill-weight", type=float, default=None, help="weight of the feature and relation terms")
    s.add_argument("--temperature", type=float, default=4.0)
    s.add_argument("--alpha", type=float, default=0.9, help="weight of the response term against the labels'")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--lr", type=float, default=0.1)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    add_out_args(s, "runs/distill")
    s.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    nonnegative(args, "epochs")
    if args.student not in list_models():
        raise ConfigError(f"--student {args.student!r} is not in the zoo; see `cnnzip models`")
    kinds = [k.strip() for k in args.losses.split(",") if k.strip() and k.strip() != "none"]
    if any(k not in DISTILL_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError(f"--losses takes each of {', '.join(DISTILL_KINDS)} at most once, or none; got "
                          f"{args.losses!r}")
    layers = tuple(n.strip() for n in args.distill_layers.split(",") if n.strip())
    specs = [DistillSpec(k, layers, args.relation, args.temperature, args.alpha, args.distill_weight) for k in kinds]
    say = Progress(args.quiet)
    start_run(args, NAME, say=say)
    job = prepare(args, say)
    teacher = job.model.cpu().eval()
    kwargs = {"num_classes": job.data.num_classes, "in_channels": job.data.in_channels}
    if args.student_width is not None:
        kwargs["width"] = args.student_width
    torch.manual_seed(args.seed)
    student = create_model(args.student, **kwargs)
    example = torch.zeros(1, *job.shape)
    hooks = [h for spec in specs for h in distillation_hooks(spec, teacher, student, example)]
    val = job.evaluator(job.val, on_device=True) if job.val is not None else None
    say(f"training {args.student} for {args.epochs} epochs from {args.model_path}"
        + (f" ({', '.join(kinds)} distillation)" if kinds else " (labels only)"))
    fit(student, job.batches(job.train), TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed), hooks=hooks,
        evaluator=val, checkpoint=args.out / "checkpoint.pt", device=job.device, progress=not args.no_progress,
        fingerprint=run_fingerprint(args, student=args.student, width=args.student_width,
                                    losses=[s.as_dict() | {"kind": s.kind} for s in specs]))
    student = student.cpu().eval()
    test = job.evaluator(job.data.test)
    rows = {name: {"params": count_parameters(m), "macs": count_macs(m, job.shape),
                   "test": test.evaluate(m).accuracy} for name, m in (("teacher", teacher), ("student", student))}
    save_model(args.out / "model.pt", student, job.out_meta(**{"distilled_from": str(args.model_path)}))
    report = {"student": args.student, "width": args.student_width, "losses": kinds, "layers": list(layers),
              "epochs": args.epochs, "rows": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for name, r in rows.items():
        print(f"{name:<8} {r['params']:>12,} parameters {r['macs']:>14,} MACs  test accuracy (once) {r['test']:.2%}")
    print(f"saved {args.out / 'model.pt'}")
    write_run_report(args, NAME, [Section("Teacher and student", "Test accuracy, evaluated once.",
                                          [["model", "parameters", "MACs", "test accuracy"]]
                                          + [[n, r["params"], r["macs"], f"{r['test']:.2%}"] for n, r in rows.items()])])
    return 0
