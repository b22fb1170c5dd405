"""Deployment: export to ONNX with verified outputs, and latency in ONNX Runtime next to eager PyTorch.

Needs the optional extra: `pip install 'cnnzip[onnx]'`. Importing this package works without it; the functions
raise CnnzipError with that hint when onnx or onnxruntime is missing.
"""

from .latency_table import LatencyTable, build_latency_table, layer_configs
from .onnx import compare_latency, compare_onnx_latency, export_onnx, measure_onnx_latency, onnx_session
from .runtime import OnnxModel, load_onnx, read_meta, stamp_meta

__all__ = ["compare_latency", "compare_onnx_latency", "export_onnx", "measure_onnx_latency", "onnx_session",
           "OnnxModel", "load_onnx", "read_meta", "stamp_meta", "LatencyTable", "build_latency_table",
           "layer_configs"]
