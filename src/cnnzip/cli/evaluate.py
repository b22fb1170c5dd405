"""`cnnzip eval`: accuracy of a model on a split, or the exact verdict against a target."""

from __future__ import annotations

from ..errors import ConfigError
from .options import add_data_args, add_model_args, prepare

NAME = "eval"
HELP = "accuracy of a model on a dataset split"
DESCRIPTION = ("Accuracy of a model file or of raw weights (with --model) on a split. With --target, also the "
               "pass/fail verdict, computed with the exact early exit.")


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    s.add_argument("--split", choices=["test", "val", "train"], default="test")
    s.add_argument("--target", type=float, default=None, help="target accuracy in [0, 1]: stop as soon as the "
                   "verdict is certain and report it")
    s.add_argument("--batch-size", type=int, default=500)


def run(args) -> int:
    job = prepare(args, weights=False)
    split = {"test": job.data.test, "train": job.train, "val": job.val}[args.split]
    if split is None:
        raise ConfigError("--split val needs a validation split: set --val-size above 0")
    evaluator = job.evaluator(split, args.batch_size, device=job.device)
    model = job.model.to(job.device)
    job.say(f"evaluating on {evaluator.total:,} {args.split} images")
    if args.target is None:
        r = evaluator.evaluate(model)
        print(f"{args.split} accuracy {r.accuracy:.4f} ({r.correct}/{r.total})")
    else:
        if not 0 <= args.target <= 1:
            raise ConfigError(f"--target is an accuracy in [0, 1], got {args.target}")
        r = evaluator.check(model, args.target)
        verdict = "PASS" if r.passed else "FAIL"
        print(f"{verdict}: accuracy >= {args.target} is {bool(r.passed)} on {args.split}, decided after "
              f"{r.evaluated}/{r.total} images ({r.correct} correct so far)")
    return 0
