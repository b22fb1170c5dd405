"""The minimal-size search (issue 5): grid, the paper's margin heuristic and bisect, side by side.

    python benchmarks/search_minimal_size.py --model vgg19-sparse            # step 0.05, 2000 val images
    python benchmarks/search_minimal_size.py --model resnet56 --step 0.1     # ~8 s a check: a coarser grid

1. Brute force: for each pipeline (DC only, NS only, NS->DC, DC->NS) the whole grid is evaluated once, in full,
   at the loosest target. Candidates are deterministic, so these records answer every target exactly.
2. Margin (the paper's heuristic, full evaluations): replayed from the grid's records at each target, which gives
   exactly the checks, images and answer a real run would; one real margin run per pipeline (at the middle target)
   is checked against its replay.
3. Bisect (ours, with the exact early exit): a real run per pipeline and target.
4. The margin sweep (size against initial margin, the paper's Figures 6-10), replayed from the grid.

Each search is a run directory under $CNNZIP_RUNS/bench-search/ and resumes after a kill. Writes
results/search_<model>.json and the plots results/search_<model>_*.png.
"""

import argparse
import json
import shutil

import torch

from _common import CIFAR_JPEG, RESULTS, RUNS, save
from baseline_resnet56 import MODEL as RESNET56_FT
from baseline_resnet56 import ensure
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.io import ModelMeta, load_model
from cnnzip.measure import Evaluator
from cnnzip.search import Pipeline, SearchConfig, margin_sweep, plot_margin_sweep, replay, search
from cnnzip.search.plots import can_plot

SPARSE_VGG = RUNS / "bench-slimming-vgg19-w0.25-l0.001-e20" / "sparse.pt"
PIPELINES = ("ns-dc", "dc-ns")


def load_subject(name: str):
    if name == "resnet56":
        ensure()
        return load_model(RESNET56_FT)
    from cnnzip.models import create_model

    state = torch.load(SPARSE_VGG, map_location="cpu", weights_only=False)
    model = create_model("vgg19", width=0.25)
    model.load_state_dict(state["model"])
    ds = load_image_folder(CIFAR_JPEG)
    return model.eval(), ModelMeta(ds.mean, ds.std, (3, 32, 32), ds.classes)


def row(best, trials_cost) -> dict:
    return {"size": best.size if best else None, "ratios": list(best.ratios) if best else None,
            "accuracy": best.accuracy if best else None, "checks": trials_cost["checks"],
            "images": trials_cost["images"], "size_builds": trials_cost.get("size_builds", 0),
            "seconds": round(trials_cost["seconds"], 1)}


def markdown(results: dict) -> str:
    """The tables for BENCHMARKS.md: sizes (kB of the real file) per target, then costs."""
    kb = lambda r: f"{r['size'] / 1000:,.1f}" if r["size"] else "none"  # noqa: E731
    lines = ["| target (val) | DC only | NS only | NS->DC grid | NS->DC margin | NS->DC bisect | DC->NS grid | "
             "DC->NS margin | DC->NS bisect |", "|---" * 9 + "|"]
    for name, t in results["targets"].items():
        cells = [t[k] for k in ("dc grid", "ns grid", "ns-dc grid", "ns-dc margin", "ns-dc bisect", "dc-ns grid",
                                "dc-ns margin", "dc-ns bisect")]
        lines.append(f"| {name}: {t['target']:.2%} | " + " | ".join(kb(c) for c in cells) + " |")
    lines += ["", "| target | pipeline | grid checks / images | margin checks / images | bisect checks / images "
              "(+ size-only builds) | grid/margin | margin/bisect | grid/bisect (checks; images) |", "|---" * 8 + "|"]
    for name, t in results["targets"].items():
        for order in PIPELINES:
            g, m, b = (t[f"{order} {s}"] for s in ("grid", "margin", "bisect"))
            lines.append(f"| {name} | {order} | {g['checks']} / {g['images']:,} | {m['checks']} / {m['images']:,} | "
                         f"{b['checks']} / {b['images']:,} (+{b['size_builds']}) | {g['checks'] / m['checks']:.1f}x | "
                         f"{m['checks'] / b['checks']:.1f}x ({m['images'] / b['images']:.1f}x images) | "
                         f"{g['checks'] / b['checks']:.0f}x; {g['images'] / b['images']:.0f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["resnet56", "vgg19-sparse"], default="vgg19-sparse")
    ap.add_argument("--step", type=float, default=0.05)
    ap.add_argument("--margin", type=int, default=5)
    ap.add_argument("--sweep", type=int, default=None, help="largest margin of the sweep (default: all rows)")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--drops", default="0.01,0.03,0.08")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fine-step", type=float, default=None, help="also run margin and bisect (not the grid) at "
                    "this finer step, at the middle target: how their costs scale against the grid's n^2")
    ap.add_argument("--structured", default=None,
                    help="channel importance; default: slimming for the sparsity-trained VGG, l1 for ResNet-56 "
                         "(not sparsity-trained, so its |gamma| say little about a channel)")
    args = ap.parse_args()
    args.structured = args.structured or ("l1" if args.model == "resnet56" else "slimming")
    torch.set_num_threads(args.threads)
    model, meta = load_subject(args.model)
    ds = load_image_folder(CIFAR_JPEG)
    _, val = train_val_split(ds.train, val_size=5000, seed=0)
    val = val.take(args.val_images)
    evaluator = Evaluator(Loader(val, 500, mean=meta.mean, std=meta.std))
    root = RUNS / "bench-search" / f"{args.model}-{args.structured}-{args.val_images}-s{args.step}"
    drops = sorted(float(d) for d in args.drops.split(","))
    middle = drops[len(drops) // 2]

    def config(order, strategy, drop):
        return SearchConfig(pipeline=Pipeline(order=order, structured=args.structured, residual_stream=False), strategy=strategy,
                            drop=drop, step=args.step, margin=args.margin)

    grids = {}
    for order in ("dc", "ns", *PIPELINES):
        grids[order] = search(model, evaluator, meta, config(order, "grid", max(drops)), root / f"{order}-grid")
        print(f"grid {order}: {grids[order].cost}", flush=True)
    baseline = grids["ns-dc"].baseline_accuracy
    n = len(config("ns", "grid", 0.01).grid)
    results: dict = {"baseline_val_accuracy": baseline, "grid_points_per_axis": n, "targets": {}}
    checks: dict = {}
    for drop in drops:
        target = baseline - drop
        res = results["targets"][f"-{drop * 100:.0f} pt"] = {"target": target}
        for order in ("dc", "ns", *PIPELINES):
            g = grids[order]
            best, trials = replay("grid", g.trials, Pipeline(order=order).axes, n, target=target)
            res[f"{order} grid"] = row(best, trials.cost())
        for order in PIPELINES:
            g = grids[order]
            best, trials = replay("margin", g.trials, Pipeline(order=order).axes, n, target=target,
                                  margin=args.margin)
            res[f"{order} margin"] = row(best, trials.cost())
            if drop == middle:  # the replay is what a real run does: check it once per pipeline
                real = search(model, evaluator, meta, config(order, "margin", drop), root / f"{order}-margin-{drop}")
                same = (real.best.index if real.best else None) == (best.index if best else None)
                checks[order] = {"replay_equals_real_run": same and real.cost["checks"] == trials.cost()["checks"],
                                 "real": row(real.best, real.cost)}
                if can_plot():
                    shutil.copy(root / f"{order}-margin-{drop}" / "trajectory.png",
                                RESULTS / f"search_{args.model}_{order}_margin_trajectory.png")
            b = search(model, evaluator, meta, config(order, "bisect", drop), root / f"{order}-bisect-{drop}")
            res[f"{order} bisect"] = row(b.best, b.cost)
            if drop == middle and can_plot():
                shutil.copy(root / f"{order}-bisect-{drop}" / "trajectory.png",
                            RESULTS / f"search_{args.model}_{order}_bisect_trajectory.png")
            sweep = margin_sweep(g.trials, Pipeline(order=order).axes, n, range((args.sweep or n - 1) + 1),
                                 target=target)
            res[f"{order} margin sweep"] = [{k: r[k] for k in ("margin", "size", "checks")} for r in sweep]
            if drop == middle and can_plot():
                plot_margin_sweep(sweep, RESULTS / f"search_{args.model}_{order}_margin_sweep.png",
                                  f"{args.model}, {order}: margin sweep at target {target:.2%}")
        print(f"-{drop * 100:.0f} pt", json.dumps({k: v for k, v in res.items() if "sweep" not in k}), flush=True)
    results["margin_replay_check"] = checks
    if args.fine_step:
        fine = results["fine_step"] = {"step": args.fine_step, "target": baseline - middle}
        for order in PIPELINES:
            for strategy in ("margin", "bisect"):
                cfg = SearchConfig(pipeline=Pipeline(order=order, structured=args.structured, residual_stream=False), strategy=strategy,
                                   drop=middle, step=args.fine_step, margin=args.margin)
                r = search(model, evaluator, meta, cfg, root / f"{order}-{strategy}-{middle}-fine{args.fine_step}")
                fine[f"{order} {strategy}"] = row(r.best, r.cost)
            m = len(cfg.grid)
            fine[f"{order} grid (not run)"] = {"checks": m * m, "images": m * m * args.val_images,
                                               "note": "the exhaustive grid's cost at this step: every point, "
                                                       "evaluated in full"}
        print("fine step", json.dumps(fine), flush=True)
    print(markdown(results))
    save(f"search_{args.model}", {"args": vars(args), "results": results,
                                  "data": f"validation: {args.val_images} of the 5,000 held-out training images "
                                          "(seed 0)"})


if __name__ == "__main__":
    main()
