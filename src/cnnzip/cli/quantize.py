"""`cnnzip quantize`: int8 post-training quantization that ONNX Runtime runs with int8 kernels."""

from __future__ import annotations

import json

import torch

from ..errors import ConfigError
from ..report import Section, comparison_cells, format_table, ratio_row
from .options import (
    Progress,
    add_data_args,
    add_model_args,
    add_out_args,
    int_list,
    nonnegative,
    prepare,
    some,
    start_run,
    write_run_report,
)

NAME = "quantize"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "int8 post-training quantization for ONNX Runtime (optionally to an accuracy target)"
DESCRIPTION = ("Export MODEL to ONNX, calibrate activation ranges on training images, and write OUT/model.int8.onnx "
               "in the QDQ format (per-channel symmetric int8 weights, 8-bit activations) that ONNX Runtime runs with "
               "integer kernels. The int8 file is checked against the fp32 file in ONNX Runtime; the report gives file "
               "bytes, validation accuracy (test accuracy once), top-1 agreement, and ONNX Runtime latency of both "
               "files measured side by side. With --drop or --target-acc, the layers int8 hurts most are kept in "
               "fp32, one at a time, until the target is met. MODEL may be any cnnzip file: a trained, pruned, fused "
               "or deep-compressed model.")
EPILOG = """examples:
  cnnzip quantize runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz --out runs/r56-int8
  cnnzip quantize runs/r56-fpgm/pruned.pt --data ../shared/datasets/cifar10-jpeg.tar.gz --drop 0.003 \\
      --calibration percentile --out runs/r56-fpgm-int8
  cnnzip eval runs/r56-int8/model.int8.onnx --data ../shared/datasets/cifar10-jpeg.tar.gz   # in ONNX Runtime"""

CALIBRATION_BATCH = 32


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    s.add_argument("--calibration", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="how activation ranges are set from the calibration images")
    s.add_argument("--calibration-images", type=int, default=512, help="training images to calibrate on "
                   f"(a fixed random subset; at least one batch of {CALIBRATION_BATCH})")
    goal = s.add_mutually_exclusive_group()
    goal.add_argument("--drop", type=float, default=None, help="accepted validation accuracy drop of the int8 "
                      "model below the fp32 one; layers go back to fp32 until it holds")
    goal.add_argument("--target-acc", type=float, default=None, help="validation accuracy the int8 model must meet")
    s.add_argument("--max-fp32-layers", type=int, default=None, help="return at most this many layers (each with "
                   "the layers that feed it) to fp32")
    s.add_argument("--keep-fp32", action="append", default=[], metavar="REGEX",
                   help="ONNX node names (or regexes) to leave in fp32, e.g. /conv1/Conv (repeatable)")
    s.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    s.add_argument("--activations", choices=["uint8", "int8"], default="uint8", help="8-bit activation type "
                   "(uint8: ONNX Runtime's fast U8S8 kernels on x86)")
    s.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training: fine-tune this many epochs "
                   "with fake-quantized weights and activations before writing the int8 file (0: post-training only)")
    s.add_argument("--weight-bits", type=int, default=8, help="QAT weight bits (8, or fewer: trained on that grid, "
                   "stored as int8)")
    s.add_argument("--lr", type=float, default=0.001, help="QAT learning rate")
    s.add_argument("--batch-size", type=int, default=128, help="QAT batch size")
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--latency-batches", default="1,256", help="batch sizes to time, comma-separated, or 'none'")
    s.add_argument("--latency-rounds", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    add_out_args(s, "runs/quantize")


FREE = ("latency_batches", "latency_rounds", "no_progress")


def run(args) -> int:
    from ..deploy import OnnxModel, compare_onnx_latency, export_onnx, stamp_meta
    from ..measure import target_accuracy
    from ..quantize import PostTraining, QuantizationAware, quantize_to_target, top1_agreement

    nonnegative(args, "max_fp32_layers", "latency_rounds", "qat_epochs")
    if args.weight_bits != 8 and not args.qat_epochs:
        raise ConfigError("--weight-bits below 8 needs quantization-aware training: give --qat-epochs 1 or more")
    qat_config = QuantizationAware(weight_bits=args.weight_bits)
    if args.calibration_images < CALIBRATION_BATCH:
        raise ConfigError(f"--calibration-images {args.calibration_images} is smaller than one calibration batch "
                          f"({CALIBRATION_BATCH}); give {CALIBRATION_BATCH} or more")
    latency_batches = [] if args.latency_batches == "none" else int_list(args.latency_batches, "--latency-batches")
    config = PostTraining(calibration=args.calibration, images=args.calibration_images,
                          per_channel=not args.per_tensor, activations=args.activations,
                          keep_fp32=tuple(args.keep_fp32))
    say = Progress(args.quiet)
    out = start_run(args, NAME, FREE, say=say)
    job = prepare(args, say)
    val = job.require_val("quantization is judged on a validation split")
    meta = job.out_meta(**{"from": str(args.model_path), "int8": True})

    say("exporting the fp32 model to ONNX (checked against PyTorch)")
    fp32 = export_onnx(job.model.cpu().eval(), out / "model.fp32.onnx", job.shape)
    stamp_meta(fp32, meta)
    calibration = [x.numpy() for x, _ in job.evaluator(some(job.train, args.calibration_images, args.seed,
                                                               "--calibration-images"), CALIBRATION_BATCH).batches]
    validate = job.evaluator(val)
    source, fake = fp32, None
    if args.qat_epochs:
        say(f"quantization-aware training: {args.qat_epochs} epochs, {args.weight_bits}-bit weights")
        fake, source = _qat(job, qat_config, calibration, out, meta)

    def accuracy_of(path):
        return validate.evaluate(OnnxModel(path)).accuracy

    say("evaluating the fp32 ONNX model on the validation split")
    fp32_accuracy = accuracy_of(fp32)
    target = None
    if args.drop is not None or args.target_acc is not None:
        if args.drop is not None and not 0 <= args.drop < 1:
            raise ConfigError(f"--drop is an accuracy drop in [0, 1), e.g. 0.003; got {args.drop}")
        target = target_accuracy(args.target_acc, args.drop, fp32_accuracy)
    say(f"calibrating ({args.calibration}, {len(calibration) * CALIBRATION_BATCH} training images) and quantizing")
    result = quantize_to_target(source, out / "model.int8.onnx", calibration, config, accuracy_of, target,
                                workdir=out / "work", max_fp32=args.max_fp32_layers, say=say)
    stamp_meta(result.path, meta)
    int8 = OnnxModel(result.path)
    reference = fake if fake is not None else OnnxModel(fp32)  # QAT: what the int8 file must compute
    agreement = top1_agreement(lambda x: reference(torch.from_numpy(x)).detach().numpy(),
                               lambda x: int8.session.run(None, {int8.input_name: x})[0],
                               [x.numpy() for x, _ in validate.batches])
    say("evaluating both files once on the test split")
    test = job.evaluator(job.data.test)
    rows = {name: {"file bytes": path.stat().st_size, "validation accuracy": accuracy,
                   "test accuracy": test.evaluate(OnnxModel(path)).accuracy}
            for name, path, accuracy in (("fp32", fp32, fp32_accuracy), ("int8", result.path, result.accuracy))}
    if latency_batches:
        say(f"timing both files in ONNX Runtime, side by side ({args.latency_rounds} rounds)")
        for name, times in compare_onnx_latency({"fp32": fp32, "int8": result.path}, job.shape, latency_batches,
                                                rounds=max(args.latency_rounds, 1)).items():
            rows[name].update(times)
    ratios = ratio_row(rows["fp32"], rows["int8"])
    print(format_table(rows, ratios))
    print(f"top-1 agreement of int8 with {'the fake-quantized model' if fake is not None else 'fp32'} on the "
          f"validation split: {agreement:.2%}")
    if result.kept_fp32:
        print(f"kept in fp32: {', '.join(result.kept_fp32)}")
    if result.not_quantized:
        print(f"left in fp32 by ONNX Runtime (it cannot quantize them): {', '.join(result.not_quantized)}")
    if target is not None:
        print(f"target {target:.2%}: " + ("met" if result.met else f"missed with {len(result.kept_fp32)} layers in "
                                           "fp32; allow more with --max-fp32-layers, or calibrate differently"))
    print(f"saved {result.path}")
    report = {"config": config.__dict__ | {"keep_fp32": list(config.keep_fp32)}, "rows": rows, "agreement": agreement,
              "qat": {"epochs": args.qat_epochs, "weight_bits": args.weight_bits} if args.qat_epochs else None,
              "target": target, "met": result.met, "all_int8_accuracy": result.all_int8_accuracy,
              "kept_fp32": result.kept_fp32, "not_quantized": result.not_quantized, "steps": result.steps,
              "sensitivity": result.sensitivity}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_run_report(args, NAME, [
        Section("fp32 and int8 in ONNX Runtime", f"Top-1 agreement on the validation split {agreement:.2%}; "
                "accuracy on the test split is measured once.", comparison_cells(rows, ratios)),
        Section("Layers kept in fp32", "", [["layer", "sensitivity", "accuracy after", "file bytes"]]
                + [[s["layer"], f"{s['sensitivity']:+.2%}", f"{s['accuracy']:.2%}", s["bytes"]]
                   for s in result.steps]
                + [[n, "by request", None, None] for n in config.keep_fp32]
                + [[n, "not quantizable", None, None] for n in result.not_quantized])])
    return 0 if result.met else 1


def _qat(job, config, calibration, out, meta):
    """Train a fake-quantized copy, set its ranges from the calibration images, export its weights: (model, file)."""
    from ..deploy import export_onnx, stamp_meta
    from ..quantize import calibrate_ranges, prepare_qat, strip_qat

    fake = prepare_qat(job.model.cpu().eval(), config)
    job.finetuner({"qat": job.args.qat_epochs}, weight_bits=config.weight_bits)("qat", fake)
    calibrate_ranges(fake, [torch.from_numpy(x) for x in calibration])
    path = export_onnx(strip_qat(fake).eval(), out / "model.qat-fp32.onnx", job.shape)
    stamp_meta(path, meta)
    return fake.eval(), path
