"""Quantization: int8 for ONNX Runtime, post-training (with an accuracy-aware fallback to fp32 per layer) or
quantization-aware (fake-quantized layers trained through `fit`, 8 or fewer weight bits).

    result = quantize_onnx("model.fp32.onnx", "model.int8.onnx", calibration_batches, PostTraining())
    OnnxModel("model.int8.onnx")(x)    # runs with int8 kernels in ONNX Runtime

Needs the optional extra: `pip install 'cnnzip[onnx]'`.
"""

from .ptq import CALIBRATIONS, Int8Result, PostTraining, quantizable_nodes, quantize_onnx, top1_agreement
from .qat import FakeQuantized, QuantizationAware, calibrate_ranges, prepare_qat, strip_qat
from .sensitivity import Fallback, quantize_to_target
from .step import QuantizeStep

__all__ = ["CALIBRATIONS", "Int8Result", "PostTraining", "quantizable_nodes", "quantize_onnx", "top1_agreement",
           "FakeQuantized", "QuantizationAware", "calibrate_ranges", "prepare_qat", "strip_qat",
           "Fallback", "quantize_to_target", "QuantizeStep"]
