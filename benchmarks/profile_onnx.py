"""Where an ONNX file's time goes in ONNX Runtime: per operator type, and per conv with its shapes.

    python benchmarks/profile_onnx.py FILE.onnx [FILE2.onnx ...] --batch 256 --threads 1

ONNX Runtime's own profiler (node kernel times), after one warm-up run, averaged over --runs runs of random
inputs of the file's input shape. The BENCHMARKS figures that say "profiled" come from this: the int8 ResNet-56's
time share of QLinearConv and its per-stage conv times (files from `latency_pruning.py --stage report`, under
$CNNZIP_RUNS/bench-latency-resnet56-r0.3-b256/onnx/), and the decomposed ResNet-56's conv and reorder times.
Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np


def profile(path: str, batch: int, threads: int, runs: int) -> tuple[dict, dict, list]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = np.random.default_rng(0).random((batch, *spec.shape[1:]), dtype=np.float32)
    session.run(None, {spec.name: x})  # warm-up, dropped below
    for _ in range(runs):
        session.run(None, {spec.name: x})
    events = json.load(open(session.end_profiling()))
    per_op, count, convs = collections.defaultdict(float), collections.Counter(), collections.defaultdict(float)
    shapes = {}
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    first = len(nodes) // (runs + 1)  # the warm-up run's nodes come first
    for e in nodes[first:]:
        op = e["args"]["op_name"]
        per_op[op] += e["dur"] / runs / 1000
        count[op] += 1
        if op in ("Conv", "QLinearConv", "FusedConv", "NchwcConv"):
            convs[e["name"]] += e["dur"] / runs / 1000
            shapes[e["name"]] = (e["args"].get("input_type_shape"), e["args"].get("output_type_shape"))
    rows = [(ms, *(list(d.values())[0] for d in (shapes[n][0][:1] + shapes[n][1][:1]))) for n, ms in convs.items()]
    return per_op, {op: c // runs for op, c in count.items()}, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--convs", action="store_true", help="also print every conv's time, input and output shape")
    args = ap.parse_args()
    for path in args.files:
        per_op, count, convs = profile(path, args.batch, args.threads, args.runs)
        total = sum(per_op.values())
        print(f"{path}: {total:.1f} ms of node time at batch {args.batch}, {args.threads} thread(s)")
        for op, ms in sorted(per_op.items(), key=lambda t: -t[1]):
            print(f"  {op:28s} {ms:8.1f} ms  {ms / total:6.1%}  x{count[op]}")
        if args.convs:
            for ms, shape_in, shape_out in convs:
                print(f"  {ms:7.2f} ms  in {shape_in}  out {shape_out}")


if __name__ == "__main__":
    main()
