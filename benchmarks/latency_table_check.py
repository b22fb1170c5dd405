"""Does the latency table predict what pruning one ResNet-56 stage saves? (issue 21, exploratory)

    python benchmarks/latency_table_check.py 256      # batch size; 1 thread; nothing else on the machine

Random-weight ResNet-56 (only the architecture matters), each stage's inner widths cut to multiples of 8, some
of them not multiples of the NCHWc block (16 with AVX-512); measured whole-model ONNX Runtime time (5 rotating
rounds) against the table's prediction (round_to 8, the default grid of eighths). Prints; writes nothing.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

from cnnzip.deploy import build_latency_table, compare_onnx_latency, export_onnx
from cnnzip.models import create_model
from cnnzip.prune import analyze, apply_plan

torch.set_num_threads(1)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 256
m = create_model("resnet56").eval()
shape = (3, 32, 32)
g = analyze(m, torch.zeros(1, *shape))
inner = [x for x in g.groups if x.name not in g.residual_groups()]
print([ (x.name, x.size) for x in inner][:3], len(inner))
def cut(widths):
    """Each stage's inner width (16/32/64 wide stages), the first channels removed."""
    plan = {x.name: list(range(x.size - widths[x.size])) for x in inner if widths.get(x.size, x.size) < x.size}
    return apply_plan(g, plan).model
variants = {"full": m,
            "s1 8": cut({16: 8}),
            "s2 16": cut({32: 16}),
            "s2 24": cut({32: 24}),
            "s3 32": cut({64: 32}),
            "s3 40": cut({64: 40}),
            "s3 56": cut({64: 56}),
            "all half": cut({16: 8, 32: 16, 64: 32}),
            "8/24/40": cut({16: 8, 32: 24, 64: 40}),
            "16/24/48": cut({32: 24, 64: 48})}
t0 = time.time()
table = build_latency_table(m, shape, B, round_to=8, threads=1, repeats=20 if B == 1 else 3, cache_dir="/tmp/exp/tables")
print("table", time.time() - t0)
with tempfile.TemporaryDirectory() as tmp:
    files = {n: export_onnx(v, Path(tmp) / f"{i}.onnx", shape) for i, (n, v) in enumerate(variants.items())}
    meas = compare_onnx_latency(files, shape, (B,), rounds=5)
base = meas["full"][f"ort_ms_b{B}"]
for n, v in variants.items():
    ms = meas[n][f"ort_ms_b{B}"]
    p = table.predict(v)
    print(f"{n:10s} measured {ms:8.2f} saved {base-ms:7.2f}  predicted {p:8.2f} saved {table.base_ms-p:7.2f}  ratio {(table.base_ms-p)/max(base-ms,1e-9):.2f}")
