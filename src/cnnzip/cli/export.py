"""`cnnzip export`: an ONNX file, checked against PyTorch before it is written."""

from __future__ import annotations

from pathlib import Path

from ..io import load_any
from .options import add_model_py_arg, check_writable, parse_shape, user_model

NAME = "export"
HELP = "write a model as an ONNX file (checked against PyTorch)"
DESCRIPTION = ("Export a model file or raw weights to ONNX with a dynamic batch size. The file is checked with "
               "onnx.checker and its outputs compared with PyTorch's before it is written.")


def add_arguments(s) -> None:
    s.add_argument("model_path", type=Path, metavar="MODEL")
    s.add_argument("--model", default=None, help="architecture for raw weights")
    add_model_py_arg(s)
    s.add_argument("--num-classes", type=int, default=10)
    s.add_argument("--input-shape", default=None, help="C,H,W (default: the model file's, else 3,32,32)")
    s.add_argument("--opset", type=int, default=17)
    s.add_argument("--out", type=Path, required=True, help="the .onnx file to write")


def run(args) -> int:
    from ..deploy import export_onnx, stamp_meta  # onnx is an optional extra

    check_writable(args.out, "--out", directory=False)
    model, meta = load_any(args.model_path, args.model, num_classes=args.num_classes, model=user_model(args))
    shape = parse_shape(args.input_shape) if args.input_shape else (meta.input_shape if meta else (3, 32, 32))
    path = export_onnx(model, args.out, shape, opset=args.opset)
    if meta is not None:  # how to feed it, so that `cnnzip eval` and `cnnzip.load` read the file as it is
        stamp_meta(path, meta)
    print(f"wrote {path} ({path.stat().st_size:,} bytes), outputs checked against PyTorch")
    return 0
