"""int8 post-training quantization of the JPEG-fine-tuned ResNet-56 (issue 14), side by side with its peers.

    python benchmarks/quantize_resnet56.py                 # cnnzip, ONNX Runtime directly, NNCF (if set up)
    python benchmarks/quantize_resnet56.py --pruned         # also: FPGM-pruned ResNet-56 (45% fewer MACs) + int8
    python benchmarks/quantize_resnet56.py --pruned --macs-reduction 0.4 --round-to 1,16 --finetune-epochs 2
    python benchmarks/quantize_resnet56.py --pruned --residual-stream --round-to 16 --finetune-epochs 3 --distill \
        --out-name quantize_resnet56_streams     # the residual streams pruned too (through the option-A shortcuts)

Everything runs on the same model, the same 512 calibration images (training images, seed 0) and the same
evaluation halves of the CIFAR-10 JPEG test split (stratified, seed 0): decisions and "val" on one half, "test"
on the other. (The 5,000 held-out training images are no use for judging: the ../shared weights were trained on
them.) Latencies are ONNX Runtime's, all files timed side by side in rotating order (--rounds), on --threads.

Peers:
- ONNX Runtime's `quantize_static` called directly on the exported fp32 file, with its defaults (QDQ, per-tensor
  weights, int8 activations, MinMax) and with per-channel weights.
- NNCF's PTQ (`nncf.quantize` on the ONNX model), run in its own virtual environment given by --nncf-python
  (NNCF's ONNX backend needs no PyTorch; see `_nncf_ptq.py`). Without it, that row is left out and said so.
Writes results/quantize_<arch>.json (--arch resnet56, the default, or resnet20).
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RUNS, save
from baseline_resnet56 import quantization_setup
from cnnzip.data import Loader
from cnnzip.deploy import OnnxModel, compare_onnx_latency, export_onnx, stamp_meta
from cnnzip.io import load_model
from cnnzip.measure import count_macs
from cnnzip.quantize import PostTraining, quantize_onnx, top1_agreement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["resnet20", "resnet56"], default="resnet56")
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pruned", action="store_true", help="also prune (FPGM, --macs-reduction, --finetune-epochs) "
                    "and quantize the pruned model")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--macs-reduction", type=float, default=0.45, help="the pruned model's MACs cut (with --pruned)")
    ap.add_argument("--round-to", default="1", help="comma-separated: one pruned model per multiple, each keeping "
                    "multiples of that many channels per layer (benchmarks/round_to.py measures which suits ORT)")
    ap.add_argument("--residual-stream", action="store_true", help="the pruned models also narrow the residual "
                    "streams (both sides of the zero-padding shortcuts); without it only the blocks' inner widths")
    ap.add_argument("--distill", action="store_true", help="fine-tune the pruned models with distillation from "
                    "the unpruned one (T=4, alpha=0.9)")
    ap.add_argument("--qat-epochs", type=int, default=0, help="also: 4-bit weights, post-training vs this many "
                    "epochs of quantization-aware training (fake-quantized accuracy, and the int8 file's)")
    ap.add_argument("--cnnz", action="store_true", help="also deep-compress the same model (70%% sparse, 6-bit conv, "
                    "5-bit fc, no fine-tune) for its file size beside the int8 files")
    ap.add_argument("--out-name", default=None, help="results/<name>.json (default quantize_<arch>)")
    ap.add_argument("--nncf-python", default="/tmp/nncf-venv/bin/python", help="a Python with nncf, onnx and "
                    "onnxruntime (NNCF's ONNX backend); a missing one skips NNCF")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, tester, calibration = quantization_setup(args.arch, args.calibration_images)
    work = RUNS / f"bench-quantize-{args.arch}"
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(meta.input_shape)

    def fp32_file(m, name):
        path = work / f"{name}.fp32.onnx"
        if not path.exists():
            export_onnx(m, path, shape)
            stamp_meta(path, meta)
        return path

    files = {"fp32": fp32_file(model, args.arch)}
    for name, config in {"cnnzip int8": PostTraining(),
                         "cnnzip int8 (per-tensor weights)": PostTraining(per_channel=False),
                         "cnnzip int8 (int8 activations)": PostTraining(activations="int8")}.items():
        tag = name.replace(" ", "-").replace("(", "").replace(")", "")
        files[name] = quantize_onnx(files["fp32"], work / f"{tag}.onnx", calibration, config,
                                    workdir=work / "cnnzip-work").path
    files.update(ort_direct(files["fp32"], work, calibration))
    nncf = nncf_ptq(args.nncf_python, files["fp32"], work, calibration)
    if isinstance(nncf, Path):
        files["NNCF int8"] = nncf
    macs = {name: count_macs(model, shape) for name in files}
    for multiple in ([int(m) for m in args.round_to.split(",")] if args.pruned else []):
        pruned = prune_fpgm(model, meta, ds, work, args.finetune_epochs, args.macs_reduction, multiple,
                            args.residual_stream, args.distill)
        tag = (f"pruned-m{args.macs_reduction * 100:.0f}-r{multiple}{'-s' if args.residual_stream else ''}"
               f"{'-kd' if args.distill else ''}-ft{args.finetune_epochs}")
        fp32, int8 = f"pruned fp32, round_to {multiple}", f"pruned + cnnzip int8, round_to {multiple}"
        files[fp32] = fp32_file(pruned, tag)
        files[int8] = quantize_onnx(files[fp32], work / f"{tag}.int8.onnx", calibration, PostTraining(),
                                    workdir=work / f"{tag}-work").path
        macs.update({fp32: count_macs(pruned, shape), int8: count_macs(pruned, shape)})

    rows = {}
    reference = OnnxModel(files["fp32"])
    batches = [x.numpy() for x, _ in validator.batches]
    for name, path in files.items():
        m = OnnxModel(path)
        rows[name] = {"file bytes": path.stat().st_size, "MACs": macs[name],
                      "val accuracy": validator.evaluate(m).accuracy, "test accuracy": tester.evaluate(m).accuracy,
                      "top-1 agreement with fp32": top1_agreement(
                          lambda x: reference.session.run(None, {reference.input_name: x})[0],
                          lambda x, m=m: m.session.run(None, {m.input_name: x})[0], batches)}
        print(name, rows[name], flush=True)
    if args.cnnz:
        rows.update(deep_compressed(model, meta, work, validator, tester, shape))
    qat = qat_4bit(model, meta, ds, work, calibration, validator, tester, args.qat_epochs) if args.qat_epochs else None
    times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds)
    for name in files:
        rows[name].update(times[name])
        for b in (1, 256):
            rows[name][f"speed-up b{b} vs ORT fp32"] = times["fp32"][f"ort_ms_b{b}"] / times[name][f"ort_ms_b{b}"]
    print(table(rows))
    if qat:
        print(json.dumps(qat, indent=2))
    save(args.out_name or f"quantize_{args.arch}", {"args": vars(args), "rows": rows, "qat_4bit": qat, "nncf": nncf if not isinstance(nncf, Path) else "ran",
                               "calibration_images": args.calibration_images, "rounds": args.rounds,
                               "threads": args.threads, "data": "CIFAR-10 JPEG; val/test = stratified halves "
                               "of the test split (seed 0); calibration = training images (seed 0)",
                               "table": table(rows)})


def qat_4bit(model, meta, ds, work: Path, calibration, validator, tester, epochs: int) -> dict:
    """4-bit weights, 8-bit activations: post-training (fake-quantized, calibrated) against `epochs` of QAT."""
    from cnnzip.finetune import Finetuner
    from cnnzip.quantize import QuantizationAware, calibrate_ranges, prepare_qat, strip_qat
    from cnnzip.train import TrainConfig

    calib = [torch.from_numpy(x) for x in calibration]
    fake = prepare_qat(model, QuantizationAware(weight_bits=4))
    calibrate_ranges(fake, calib)
    out = {"post-training 4-bit (fake-quantized)": {"val": validator.evaluate(fake).accuracy,
                                                    "test": tester.evaluate(fake).accuracy}}
    batches = Loader(ds.train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    Finetuner(batches, {"qat": epochs}, TrainConfig(lr=0.001), run_dir=work / "checkpoints")("qat", fake)
    calibrate_ranges(fake, calib)
    out[f"QAT 4-bit, {epochs} epoch(s) (fake-quantized)"] = {"val": validator.evaluate(fake).accuracy,
                                                              "test": tester.evaluate(fake).accuracy}
    path = work / "qat4.fp32.onnx"
    export_onnx(strip_qat(fake).eval(), path, tuple(meta.input_shape))
    int8 = OnnxModel(quantize_onnx(path, work / "qat4.int8.onnx", calibration, PostTraining(),
                                   workdir=work / "qat-work").path)
    fake.eval()
    out[f"QAT 4-bit, {epochs} epoch(s), int8 file in ORT"] = {
        "val": validator.evaluate(int8).accuracy, "test": tester.evaluate(int8).accuracy,
        "top-1 agreement with the fake-quantized model": top1_agreement(
            lambda x: fake(torch.from_numpy(x)).detach().numpy(),
            lambda x: int8.session.run(None, {int8.input_name: x})[0], [x.numpy() for x, _ in validator.batches])}
    return out


def deep_compressed(model, meta, work: Path, validator, tester, shape) -> dict:
    """Weight sharing's file beside quantization's: the .cnnz of the same model (decoded to fp32 to run)."""
    from cnnzip.deep import MagnitudePruning, WeightSharing, deep_compress, load_compressed, save_compressed

    path = work / "model.cnnz"
    shared, books = deep_compress(model, MagnitudePruning(ratio=0.7), WeightSharing(conv_bits=6, fc_bits=5))
    save_compressed(path, shared, books, meta)
    decoded, _ = load_compressed(path)
    return {"cnnzip .cnnz (70% sparse, 6/5-bit, no fine-tune)": {
        "file bytes": path.stat().st_size, "MACs": count_macs(decoded, shape),
        "val accuracy": validator.evaluate(decoded).accuracy, "test accuracy": tester.evaluate(decoded).accuracy}}


def ort_direct(fp32: Path, work: Path, calibration: list[np.ndarray]) -> dict[str, Path]:
    """ONNX Runtime's quantize_static on the same file and images: its defaults, and cnnzip's settings."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quant_pre_process, quantize_static

    class Reader:
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    pre = work / "ort-pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    out = {}
    for name, kwargs in {
        "ORT quantize_static (defaults)": {},
        "ORT quantize_static (per-channel)": {"per_channel": True},
    }.items():
        path = work / (name.split("(")[1].rstrip(")").replace(", ", "-").replace(" ", "-").replace(".", "") + ".onnx")
        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        calibrate_method=CalibrationMethod.MinMax, **kwargs)
        out[name] = path
    return out


def nncf_ptq(python: str, fp32: Path, work: Path, calibration: list[np.ndarray]) -> Path | str:
    if not Path(python).exists():
        return f"not run: no Python with NNCF at {python} (python3 -m venv /tmp/nncf-venv && /tmp/nncf-venv/bin/pip " \
               "install nncf onnx onnxruntime)"
    out = work / "nncf.int8.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "calibration.npz"
        np.savez(data, *calibration)
        script = Path(__file__).with_name("_nncf_ptq.py")
        r = subprocess.run([python, str(script), str(fp32), str(data), str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        return "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:300]
    return out


def prune_fpgm(model, meta, ds, work: Path, epochs: int, macs_reduction: float, round_to: int,
               residual_stream: bool = False, distill: bool = False):
    """FPGM channel pruning to `macs_reduction` fewer MACs, widths multiples of `round_to`, fine-tuned `epochs` on
    the training images (cnnzip prune's way), with distillation from `model` if `distill`."""
    from cnnzip.distill import Distillation
    from cnnzip.finetune import Finetuner
    from cnnzip.io import save_model
    from cnnzip.prune import ChannelPruning, prune_to_macs
    from cnnzip.train import TrainConfig

    variant = f"{'-s' if residual_stream else ''}{'-kd' if distill else ''}"
    path = work / f"pruned-fpgm{macs_reduction * 100:.0f}-r{round_to}{variant}-ft{epochs}.pt"
    if path.exists():
        return load_model(path)[0]
    result = prune_to_macs(model, ChannelPruning(method="fpgm", round_to=round_to, residual_stream=residual_stream),
                           torch.zeros(1, *meta.input_shape), macs_reduction)
    pruned = result.model
    batches = Loader(ds.train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    finetune = Finetuner(batches, {"finetune": epochs}, TrainConfig(lr=0.01), run_dir=work / f"checkpoints-{path.stem}",
                         hooks=[Distillation(model)] if distill else ())
    finetune("finetune", pruned)
    save_model(path, pruned.eval(), meta)
    return pruned


def table(rows: dict) -> str:
    keys = ["file bytes", "MACs", "val accuracy", "test accuracy", "top-1 agreement with fp32", "ort_ms_b1",
            "ort_ms_b256", "speed-up b1 vs ORT fp32", "speed-up b256 vs ORT fp32"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.2%}" if "accuracy" in k or
                         "agreement" in k else f"{v:.2f}x" if "speed-up" in k else f"{v:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
