"""Structured pruning on the models people bring: cnnzip against Torch-Pruning used directly, on timm's zoo.

    /tmp/zoo-venv/bin/python benchmarks/zoo_prune.py [--models resnet50,convnext_tiny] [--jobs 2] [--timeout 600]

timm needs torchvision, which does not import beside this project's torch 2.13 CPU build; so this runs in a side
environment with torch 2.14.1 and torchvision 0.29.1 (the pair on this machine's disk), timm and torch-pruning
1.6.0 from PyPI, and cnnzip installed from the work tree:

    python3 -m venv /tmp/zoo-venv && /tmp/zoo-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/zoo-venv/bin/pip install timm torch-pruning==1.6.0 && /tmp/zoo-venv/bin/pip install --no-deps -e .

Each model (random weights, timm's default input size, batch 1) is pruned by both tools in its own process with
one thread: L1 filter norm, 30% of the channels of every prunable layer (`ChannelPruning(method="l1",
ratio=0.3, scope="layer")`; Torch-Pruning's `MetaPruner` with `MagnitudeImportance(p=1)`, `pruning_ratio=0.3`,
the classifier ignored). cnnzip runs a second time with `rounding="up"` (Torch-Pruning's channel counts: keep
floor(0.7 x channels), where cnnzip's default removes floor(0.3 x channels)) so the shares compare at equal counts;
the time column is the default's. All results are then checked the same way, independently of either tool: the pruned
model must compute what the original computes with the removed channels zeroed (float64, relative 1e-6), from
the channels each tool reports it removed. Verdicts: pass; error (a clear refusal or exception, no model);
broken (a model that fails at forward or computes something else); differs (a group holds a LayerNorm or
GroupNorm, which normalises over channels, so zeroing cannot say whether the cut is right); hang (no answer
within --timeout seconds). Seconds time the pruning call, after the tool is imported (a fixed cost, larger
for cnnzip). Writes results/zoo_prune.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODELS = [
    "resnet18", "resnet50", "resnext26ts", "seresnext26d_32x4d", "wide_resnet50_2", "densenet121",
    "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "mnasnet_100", "regnetx_002", "regnety_002",
    "ghostnet_100", "convnext_atto", "convnext_tiny", "cspresnet50", "cspdarknet53", "dla34", "vgg11_bn",
    "repvgg_a0", "rexnet_100", "lcnet_050", "mixnet_s", "skresnet18", "res2net50_26w_4s", "inception_v3",
    "hrnet_w18_small", "dpn68", "tinynet_a", "selecsls42b",
]
RATIO = 0.3
TOOLS = ("cnnzip", "cnnzip-up", "torch-pruning")  # cnnzip-up: `rounding="up"`, Torch-Pruning's channel counts
TOLERANCE = 1e-6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--jobs", type=int, default=2, help="models pruned side by side, one thread each")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--merge", action="store_true", help="replace only these models' rows in results/zoo_prune.json "
                    "(each row is still both tools side by side; the file lists when each row was rerun)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: model,tool in this process
    args = ap.parse_args()
    if args.one:
        name, tool = args.one.split(",")
        print(json.dumps(run_one(name, tool)))
        return
    names = args.models.split(",")

    def row_for(name: str) -> dict:
        row = {}
        for tool in TOOLS:
            started = time.perf_counter()
            try:
                out = subprocess.run([sys.executable, __file__, "--one", f"{name},{tool}"], capture_output=True,
                                     text=True, timeout=args.timeout)
                lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                row[tool] = json.loads(lines[-1]) if lines else {
                    "verdict": "error", "why": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
            except subprocess.TimeoutExpired:
                row[tool] = {"verdict": "hang", "seconds": time.perf_counter() - started}
        print(name, json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = dict(zip(names, pool.map(row_for, names), strict=True))
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import RESULTS, environment, save

    extra = {}
    if args.merge:
        old = json.loads((RESULTS / "zoo_prune.json").read_text())
        extra["rerun"] = {**old.get("rerun", {}), **{n: {"environment": environment(), "timeout": args.timeout,
                                                        "versions": versions()} for n in names}}
        rows = {**old["rows"], **rows}
        args.timeout, args.jobs, extra["environment_of_the_rest"] = old["timeout"], old["jobs"], old["environment"]
    print(table(rows))
    save("zoo_prune", {"ratio": RATIO, "timeout": args.timeout, "jobs": args.jobs, "rows": rows,
                       "versions": versions(), "table": table(rows), **extra})


def versions() -> dict:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "torchvision", "timm", "torch-pruning", "cnnzip")}


def run_one(name: str, tool: str) -> dict:
    import timm
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = timm.data.resolve_data_config({}, model=model)["input_size"]
    x = torch.randn(1, *size)
    before = sum(p.numel() for p in model.parameters())
    __import__("torch_pruning" if tool == "torch-pruning" else "cnnzip.prune")  # time the call, not the import
    started = time.perf_counter()
    try:
        pruned, cuts = prune_tp(model, x) if tool == "torch-pruning" else prune_cnnzip(
            model, x, "up" if tool == "cnnzip-up" else "down")
    except Exception as e:  # noqa: BLE001 - a tool's refusal or crash is its verdict
        return {"verdict": "error", "why": f"{type(e).__name__}: {str(e)[:200]}",
                "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    after = sum(p.numel() for p in pruned.parameters())
    verdict, error = check(model, pruned, cuts, x)
    return {"verdict": verdict, "error": error, "seconds": seconds, "params": before,
            "removed": 1 - after / before}


def prune_cnnzip(model, x, rounding: str = "down"):
    """cnnzip's verified surgery; the cuts it reports are read from its channel graph."""
    from cnnzip.prune import ChannelPruning, analyze, apply_plan, plan_channels

    graph = analyze(model, x)
    if not graph.groups:
        raise RuntimeError("no prunable group: " + "; ".join(f"{k}: {v}" for k, v in
                                                              list(graph.excluded.items())[:3]))
    result = apply_plan(graph, plan_channels(graph, ChannelPruning(method="l1", ratio=RATIO, scope="layer",
                                                                           rounding=rounding)))
    cuts = []
    for root, idxs in result.removed.items():
        cuts += [(layer, kind, mapped, type(module).__name__)
                 for layer, module, kind, mapped in graph.items(root, idxs)]
    return result.model, cuts


def prune_tp(model, x):
    """Torch-Pruning as its README shows, recording every group it prunes (interactive mode)."""
    import copy

    import torch_pruning as tp
    from torch import nn

    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=[head] if isinstance(head, nn.Module) else [])
    dg = pruner.DG
    cuts = []
    # Torch-Pruning prunes group after group, each in the numbering the earlier cuts left (behind a concatenation
    # a later group's indices are shifted): map them back to the original channels.
    alive: dict[tuple[str, str], list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            target = dep.target.module
            if target in names and any(True for _ in target.parameters(recurse=False)):
                kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                depthwise = isinstance(target, nn.modules.conv._ConvNd) and (
                    target.groups == target.in_channels == target.out_channels)
                key = (names[target], "both" if depthwise else kind)
                if key not in alive:
                    alive[key] = list(range(_channels(target, kind)))
                original = [alive[key][int(i)] for i in idxs]
                alive[key] = [c for c in alive[key] if c not in set(original)]
                cuts.append((names[target], kind, original, type(target).__name__))
        group.prune()
    return model, cuts


def _channels(module, kind: str) -> int:
    """How many channels `module` has on the side `kind` (out or in), before any cut."""
    for attr in (("out_channels", "out_features", "num_features", "num_channels") if kind == "out" else
                 ("in_channels", "in_features", "num_features", "num_channels")):
        if hasattr(module, attr):
            return getattr(module, attr)
    if hasattr(module, "normalized_shape"):
        return module.normalized_shape[0]
    weight = getattr(module, "weight", None)
    return weight.shape[0 if kind == "out" else 1]


def check(original, pruned, cuts, x) -> tuple[str, float | None]:
    """Compare the pruned model with the original whose removed channels are zeroed (both in float64)."""
    import copy

    import torch
    from torch import nn

    from cnnzip.prune.layers import rule_for

    masked = copy.deepcopy(original).double().eval()
    modules = dict(masked.named_modules())
    norm_across = False
    with torch.no_grad():
        for layer, kind, idxs, _cls in cuts:
            module = modules[layer]
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                norm_across = True
            rule = rule_for(module)
            if rule is not None:
                rule.zero(module, kind, idxs)
        try:
            y = pruned.double().eval()(x.double())
        except Exception:  # noqa: BLE001
            return "broken", None
        ref = masked(x.double())
    if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
        return "broken", None
    error = float((y - ref).abs().max() / (ref.abs().max() or 1.0))
    if error <= TOLERANCE:
        return "pass", error
    return ("differs" if norm_across else "broken"), error


def table(rows: dict) -> str:
    head = ("| model | params | cnnzip | removed | s | Torch-Pruning | removed | s | time ratio | cnnzip, rounding up |"
            "\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, row in rows.items():
        c, t = row["cnnzip"], row["torch-pruning"]
        up = row.get("cnnzip-up", {})
        up = f"{up['verdict']}, {_pct(up)}" if up else "-"
        params = c.get("params") or t.get("params")
        ratio = (f"{c['seconds'] / t['seconds']:.1f}x" if c.get("seconds") and t.get("seconds")
                 and t["verdict"] != "hang" else "-")
        lines.append(f"| {name} | {params / 1e6:.1f}M | {c['verdict']} | {_pct(c)} | {_s(c)} | {t['verdict']} | "
                     f"{_pct(t)} | {_s(t)} | {ratio} | {up} |" if params else
                     f"| {name} | - | {c['verdict']} | - | {_s(c)} | {t['verdict']} | - | {_s(t)} | {ratio} | {up} |")
    return "\n".join(lines)


def _pct(r: dict) -> str:
    return f"{r['removed']:.0%}" if "removed" in r else "-"


def _s(r: dict) -> str:
    return f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"


if __name__ == "__main__":
    main()
