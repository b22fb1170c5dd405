"""`cnnzip compress`: one command for the main job, driven by a recipe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_text
from ..search.recipe import STEPS, Recipe, apply_overrides, default_recipe, recipe_from_file
from .options import add_data_args, add_model_py_arg, add_out_args
from .search import check_workers, execute

NAME = "compress"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "make a model as small or as fast as it can be while it keeps your accuracy (one command, a recipe)"
DESCRIPTION = ("Run a recipe: a list of compression steps whose strengths the search chooses so that the model "
               "meets your accuracy target, then fine-tune the winner and write the file to ship (OUT/best.cnnz, "
               "best.pt or best.int8.onnx), its report and every trial. Without --recipe, the recipe that wins in "
               "BENCHMARKS.md for --objective: size = prune (l1) then deep-compress; latency-b1/latency-b256 = prune "
               "(l1, widths in multiples of 8) then int8. Steps: " + "; ".join(f"{k}: {v.summary}"
                                                                          for k, v in STEPS.items()) + ".")
EPILOG = """examples:
  cnnzip compress model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz --drop 0.01 --out runs/c
  cnnzip compress model.pt --data ... --objective latency-b256 --drop 0.01 --out runs/fast
  cnnzip compress model.pt --data ... --recipe my.yaml --set finetune.final_epochs=2 --set prune.method=fpgm
  cnnzip compress --print-recipe --objective size          # the resolved recipe, as YAML, and nothing else
A recipe file (YAML or JSON):
  objective: size
  drop: 0.01
  steps: [{prune: {method: l1}}, {deep-compress: {conv_bits: 6, fc_bits: 5}}]
  search: {strategy: bisect, step: 0.05, recalibrate: 512}
  finetune: {final_epochs: 1, distill: response}
OUT/recipe.json keeps the recipe that ran: `--recipe OUT/recipe.json` repeats it exactly."""

FREE = ("max_checks", "time_budget", "workers", "ray_address", "train_batch_size", "no_augment")


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("model_path", type=Path, nargs="?", metavar="MODEL", help="cnnzip model file or raw weights "
                   "(may be left out with --print-recipe)")
    s.add_argument("--model", default=None, help="architecture for raw weights (see `cnnzip models`)")
    add_model_py_arg(s)
    add_data_args(s)
    s.add_argument("--recipe", default=None, help="a recipe file (YAML or JSON); default: the objective's")
    s.add_argument("--objective", default=None, choices=["size", "latency-b1", "latency-b256"],
                   help="what the winner minimises (default: the recipe's, else size)")
    goal = s.add_mutually_exclusive_group()
    goal.add_argument("--drop", type=float, default=None, help="accepted drop below the baseline's validation "
                      "accuracy (default: the recipe's, else 0.01)")
    goal.add_argument("--target-acc", type=float, default=None, help="validation accuracy to meet instead")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change one setting of the "
                   "recipe, e.g. search.step=0.1, finetune.final_epochs=2, prune.method=fpgm, steps=prune,quantize")
    s.add_argument("--print-recipe", action="store_true", help="print the resolved recipe (YAML) and stop")
    s.add_argument("--max-checks", type=int, default=None, help="stop the search after this many accuracy checks")
    s.add_argument("--time-budget", type=float, default=None, help="stop the search after this many seconds")
    s.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    s.add_argument("--train-batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-images", type=int, default=0, help="decide on this many images of the validation split "
                   "(0: all of it)")
    s.add_argument("--workers", type=int, default=1, help="accuracy checks on this many Ray workers at once")
    s.add_argument("--ray-address", default=None, help="a running Ray cluster for the checks")
    add_out_args(s, "runs/compress")
    s.add_argument("--no-progress", action="store_true")


def resolve(args) -> Recipe:
    """The recipe: --recipe (or the objective's default), then --objective, --drop / --target-acc and --set."""
    if args.recipe is not None:
        data = recipe_from_file(args.recipe)
        if not isinstance(data, dict):
            raise ConfigError(f"--recipe {args.recipe} holds {type(data).__name__}, not a recipe mapping")
    else:
        data = default_recipe(args.objective or "size").as_dict()
    overrides = list(args.set)
    if args.objective is not None:
        overrides.insert(0, f"objective={args.objective}")
    if args.drop is not None:
        overrides.append(f"drop={args.drop}")
    if args.target_acc is not None:
        overrides.append(f"target={args.target_acc}")
    return Recipe.from_dict(apply_overrides(data, overrides))


def run(args) -> int:
    recipe = resolve(args)
    if args.print_recipe:
        import yaml

        print(yaml.safe_dump(recipe.as_dict(), sort_keys=False), end="")
        return 0
    if args.model_path is None:
        raise ConfigError("give MODEL, the model to compress (or --print-recipe alone)")
    config = recipe.to_search(args.max_checks, args.time_budget)
    # The options `search` reads, from the recipe: one schema, so `compress` holds no settings of its own.
    prune, quant, tune = recipe.settings("prune"), recipe.settings("quantize"), recipe.finetune
    # The run's identity (run.json): the recipe without its fine-tune, which changes only the winner's training
    # (as for `search`, whose fine-tune options are free), so that a new fine-tune reuses the recorded trials.
    args.recipe_resolved = {k: v for k, v in recipe.as_dict().items() if k != "finetune"}
    for name, value in {
        "structured": config.pipeline.structured, "pca_images": 2048, "recalibrate": config.pipeline.recalibrate,
        "quantize": config.pipeline.quantize, "calibration_images": quant.calibration_images if quant else 512,
        "structured_epochs": tune.structured_epochs, "finetune_epochs": tune.final_epochs,
        "centroid_epochs": tune.centroid_epochs, "lr": tune.lr, "recover_images": 0, "recover_distill": False,
        "distill": tune.distill, "teacher": None, "distill_layers": "", "relation": "rkd", "distill_weight": None,
        "temperature": 4.0, "alpha": 0.9, "inner_only": bool(prune and prune.inner_only),
    }.items():
        setattr(args, name, value)
    if args.quantize:
        try:
            import onnxruntime  # noqa: F401 - checked before any work
        except ImportError as exc:
            raise ConfigError("this recipe quantizes to int8, which needs ONNX Runtime: pip install "
                              "'cnnzip[onnx]'") from exc
    check_workers(args)
    print(f"recipe: {' -> '.join(k for k, _ in recipe.steps)}, objective {recipe.objective}, "
          + (f"drop {recipe.drop:g}" if recipe.drop is not None else f"target {recipe.target:g}"), file=sys.stderr)
    status = execute(args, config, NAME, FREE + _INTERNAL)
    atomic_write_text(args.out / "recipe.json", json.dumps(recipe.as_dict(), indent=2))
    return status


# Options `compress` fills from the recipe: the recipe itself (recipe_resolved) is what identifies the run.
_INTERNAL = ("recipe", "objective", "drop", "target_acc", "set", "print_recipe", "structured", "pca_images",
             "recalibrate", "quantize", "calibration_images", "structured_epochs", "finetune_epochs",
             "centroid_epochs", "lr", "recover_images", "recover_distill", "distill", "teacher", "distill_layers",
             "relation", "distill_weight", "temperature", "alpha", "inner_only")
