"""NNCF's post-training quantization of an ONNX file, run in NNCF's own environment (see quantize_resnet56.py).

    python _nncf_ptq.py FP32.onnx CALIBRATION.npz OUT.onnx
"""

import sys

import nncf
import numpy as np
import onnx


def main() -> None:
    fp32, data, out = sys.argv[1:4]
    model = onnx.load(fp32)
    name = model.graph.input[0].name
    arrays = np.load(data)
    batches = [arrays[k] for k in sorted(arrays.files, key=lambda k: int(k.split("_")[1]))]
    dataset = nncf.Dataset(batches, lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=sum(len(b) for b in batches))
    onnx.save(quantized, out)


if __name__ == "__main__":
    main()
