"""`cnnzip info`: parameters, MACs, bytes and CPU latency of a zoo architecture or a model file."""

from __future__ import annotations

import json
from pathlib import Path

from ..deploy import OnnxModel
from ..io import load_any
from ..measure import footprint, measure_latency
from ..models import create_model, list_models
from ..train import select_device
from .options import add_model_py_arg, int_list, parse_shape, user_model

NAME = "info"
HELP = "parameters, MACs, size and CPU latency of a model"
DESCRIPTION = ("Footprint of a zoo architecture (by name) or of a model file: parameters, nonzero parameters, MACs, "
               "bytes, and latency at the given batch sizes.")


def add_arguments(s) -> None:
    s.add_argument("target", metavar="MODEL", help="zoo name (e.g. resnet56) or path to a model file/weights")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    add_model_py_arg(s)
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--width", type=float, default=None)
    s.add_argument("--input-shape", default=None, help="C,H,W (default 3,32,32 or the model file's)")
    s.add_argument("--batch-sizes", default="1,256", help="latency batch sizes, comma-separated (default 1,256)")
    s.add_argument("--repeats", type=int, default=20)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--device", default="cpu")


def run(args) -> int:
    kwargs = {"num_classes": args.num_classes}
    if args.width is not None:
        kwargs["width"] = args.width
    meta = None
    if args.target in list_models() and not Path(args.target).exists():
        model = create_model(args.target, **kwargs)
    else:
        model, meta = load_any(args.target, args.model, model=user_model(args), **kwargs)
    shape = parse_shape(args.input_shape) if args.input_shape else (meta.input_shape if meta else (3, 32, 32))
    if isinstance(model, OnnxModel):
        return _onnx_info(args, model, tuple(shape))
    model.to(select_device(args.device)).eval()
    fp = footprint(model, shape)
    lat = [measure_latency(model, shape, b, repeats=args.repeats) for b in int_list(args.batch_sizes, "--batch-sizes")]
    info = {"model": args.target, "input_shape": list(shape), **fp.as_dict(),
            "file_bytes": Path(args.target).stat().st_size if Path(args.target).is_file() else None,
            "latency": _latency_json(lat)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model          {args.target}  (input {tuple(shape)})")
    print(f"parameters     {fp.parameters:,}  ({fp.nonzero:,} nonzero)")
    print(f"MACs           {fp.macs:,}  ({fp.macs / 1e6:.1f}M)")
    print(f"dense bytes    {fp.dense_bytes:,}")
    if meta is not None or Path(args.target).is_file():
        print(f"file bytes     {Path(args.target).stat().st_size:,}  ({args.target} as it is on disk)")
    print(f"fp32 bytes     {fp.saved_bytes:,}  (torch.save of the fp32 state dict)")
    _print_latency(lat, f"{args.device}, eager")
    return 0


def _onnx_info(args, model: OnnxModel, shape: tuple[int, ...]) -> int:
    """An ONNX file (an int8 one included) is measured where it runs: in ONNX Runtime."""
    from ..deploy import measure_onnx_latency
    from ..quantize import quantizable_nodes

    lat = [measure_onnx_latency(model.session, shape, b, repeats=args.repeats)
           for b in int_list(args.batch_sizes, "--batch-sizes")]
    nodes = quantizable_nodes(model.path)
    info = {"model": args.target, "input_shape": list(shape), "file_bytes": model.path.stat().st_size,
            "runtime": "onnxruntime", "conv_and_matmul_nodes": len(nodes), "latency": _latency_json(lat)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model          {args.target}  (input {tuple(shape)}, an ONNX file: measured in ONNX Runtime)")
    print(f"file bytes     {info['file_bytes']:,}")
    print(f"conv/matmul    {len(nodes)} nodes")
    _print_latency(lat, "cpu, ONNX Runtime")
    return 0


def _latency_json(lat) -> list[dict]:
    return [{"batch_size": x.batch_size, "median_ms": x.median_ms, "images_per_second": x.images_per_second}
            for x in lat]


def _print_latency(lat, where: str) -> None:
    for x in lat:
        print(f"latency b={x.batch_size:<4} {x.median_ms:9.3f} ms median  {x.images_per_second:10.1f} img/s ({where})")
