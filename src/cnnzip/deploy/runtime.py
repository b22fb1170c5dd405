"""An ONNX file as a model: ONNX Runtime behind an `nn.Module`, so `cnnzip eval`, `info` and the Evaluator check
exactly the file a user ships (an int8 file included), and `cnnzip.load` reads it like any other.

cnnzip stamps its ModelMeta (normalisation, input shape, classes) into the ONNX file's metadata, so the file
carries how to feed it. onnx and onnxruntime are imported only when a file is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..io import ModelMeta, atomic_write_bytes, register_format

__all__ = ["OnnxModel", "stamp_meta", "read_meta", "load_onnx", "META_KEY"]

META_KEY = "cnnzip.meta"


class OnnxModel(nn.Module):
    """Runs an ONNX file in ONNX Runtime on CPU tensors: `model(x)` returns the logits as a torch tensor.

    It has no PyTorch parameters: commands that change weights (prune, deep-compress...) refuse it.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        from .onnx import onnx_session

        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out))

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModel:  # a session cannot be copied; open another
        return OnnxModel(self.path)


def stamp_meta(path: str | Path, meta: ModelMeta) -> None:
    """Write `meta` into the ONNX file's metadata (rewritten atomically)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta.as_dict())
    atomic_write_bytes(path, model.SerializeToString())


def read_meta(path: str | Path) -> ModelMeta | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a damaged protobuf fails in many ways
        raise ModelError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from exc
    for entry in model.metadata_props:
        if entry.key == META_KEY:
            try:
                return ModelMeta.from_dict(json.loads(entry.value))
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{path} has damaged cnnzip metadata ({exc})") from exc
    return None


def load_onnx(path: str | Path, model: nn.Module | None = None) -> tuple[OnnxModel, ModelMeta]:
    """An ONNX file written by cnnzip (export or quantize): (OnnxModel, its ModelMeta)."""
    path = Path(path)
    meta = read_meta(path)
    if meta is None:
        raise ModelError(f"{path} is an ONNX file that cnnzip did not write: it does not say how to normalise its "
                         "inputs; export it with `cnnzip export` or `cnnzip quantize`")
    return OnnxModel(path).eval(), meta


# A serialized ModelProto starts with its ir_version field: tag 0x08, then the version (3 to 12 today).
ONNX_FILE = register_format("ONNX model", tuple(bytes([8, v]) for v in range(3, 13)), load_onnx, ".onnx")
