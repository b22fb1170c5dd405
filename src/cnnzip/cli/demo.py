"""`cnnzip demo`: the main job in about a minute, on data that ships with scikit-learn (no download).

Trains a small CNN on the digits, searches for the smallest compressed file whose validation accuracy is at
most --drop below it (network slimming by L1 norm, then deep compression), writes it, reloads it, and prints
the before/after table; the run directory also gets report.html.
"""

from __future__ import annotations

import json

import torch

from ..data import Loader, load_digits, train_val_split
from ..io import ModelMeta, load, save_model
from ..measure import Evaluator, measure_latency
from ..models import create_model
from ..report import Section, comparison_cells, format_table, ratio_row, size_accuracy_plot, write_report
from ..search import Pipeline, SearchConfig, search
from ..train import TrainConfig, fit
from .options import Progress, add_out_args, start_run

NAME = "demo"
HELP = "the main job on bundled data: train a small CNN, find its smallest file within a point, report"
DESCRIPTION = ("The self-contained demo (no download, about a minute): trains a small CNN on scikit-learn's digits, "
               "searches for the smallest compressed file whose validation accuracy is at most --drop below the "
               "trained model's (channel pruning, then magnitude pruning, weight sharing and Huffman coding), "
               "writes it, reloads it, and prints file bytes, accuracy and latency before and after. Writes "
               "OUT/model.pt, OUT/search/best.cnnz and OUT/report.html.")


def add_arguments(s) -> None:
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--drop", type=float, default=0.01, help="accepted validation accuracy drop (default one point)")
    s.add_argument("--seed", type=int, default=0)
    add_out_args(s, "runs/demo")


def run(args) -> int:
    say = Progress(args.quiet)
    out = start_run(args, NAME, say=say)
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.1, seed=args.seed)
    meta = ModelMeta(ds.mean, ds.std, (ds.in_channels, *ds.image_size), ds.classes)
    validate = Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std))
    test = Evaluator(Loader(ds.test, 500, mean=ds.mean, std=ds.std))

    say(f"training small_cnn on scikit-learn digits ({len(train)} images) for {args.epochs} epochs")
    torch.manual_seed(args.seed)
    model = create_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels)
    batches = Loader(train, 64, shuffle=True, augment=False, mean=ds.mean, std=ds.std, seed=args.seed)
    fit(model, batches, TrainConfig(epochs=args.epochs, lr=0.05, seed=args.seed), progress=False, device="cpu",
        checkpoint=out / "checkpoint.pt")
    model.eval()
    baseline = save_model(out / "model.pt", model, meta)

    config = SearchConfig(pipeline=Pipeline(order="ns-dc", structured="l1", conv_bits=5, fc_bits=5),
                          strategy="bisect", drop=args.drop)
    result = search(model, validate, meta, config, out / "search", say=say)
    if result.best is None:
        print("no compressed model met the target; try a larger --drop")
        return 1
    say(f"reloading {result.path} and measuring both models")
    small, _ = load(result.path)
    shape = meta.input_shape
    rows = {}
    for name, m, path in (("trained", model, baseline), ("compressed", small, result.path)):
        rows[name] = {"file bytes": path.stat().st_size, "validation accuracy": validate.evaluate(m).accuracy,
                      "test accuracy": test.evaluate(m).accuracy,
                      "latency ms (batch 1)": measure_latency(m, shape, 1, repeats=50).median_ms}
    before, after = rows["trained"], rows["compressed"]
    ratios = ratio_row(before, after)
    print(format_table(rows, ratios))
    ratio = ", ".join(f"{k} {v:.2f}" for k, v in zip(config.pipeline.axes, result.best.ratios, strict=True))
    print(f"{before['file bytes'] / after['file bytes']:.1f}x smaller, validation accuracy "
          f"{after['validation accuracy'] - before['validation accuracy']:+.2%} (target {result.target:.2%}), found "
          f"in {result.cost['checks']:.0f} accuracy checks; the winner prunes {ratio}")
    (out / "result.json").write_text(json.dumps({"rows": rows, "ratios": ratios, "search": result.as_dict()},
                                                indent=2, default=str))
    trajectory = out / "search" / "trajectory.png"  # (written by the search when matplotlib is there)
    points = [(t.size, t.accuracy, t.passed) for t in result.trials]
    report = write_report(out / "report.html", "cnnzip demo: the smallest file within a point", [
        Section("Before and after", f"The trained model and the smallest compressed file whose validation accuracy "
                f"meets {result.target:.2%}; test accuracy is measured once, at the end.",
                comparison_cells(rows, ratios)),
        Section("The search", f"{result.cost['checks']:.0f} accuracy checks ({config.strategy}, "
                f"{config.pipeline.order}); the winner prunes {ratio}.",
                [["check", *config.pipeline.axes, "bytes", "accuracy", "meets"]]
                + [[i + 1, *t.ratios, t.size, f"{t.accuracy:.2%}", t.passed] for i, t in enumerate(result.trials)],
                images=[("every accuracy check in order",
                         trajectory.read_bytes() if trajectory.exists() else None),
                        ("accuracy against file size", size_accuracy_plot(points, result.target, "file bytes"))]),
    ], subtitle=f"scikit-learn digits, seed {args.seed}.")
    print(f"run directory {out}: model.pt, search/best.cnnz, result.json; report {report}")
    return 0
