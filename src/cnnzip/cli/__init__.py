"""The `cnnzip` command: a thin layer over the Python API, one module per command.

Each command module has NAME, HELP, DESCRIPTION (and optionally EPILOG), `add_arguments(parser)` and
`run(args) -> int`; options that several commands share live in `options`. User mistakes (a wrong path, a
checkpoint that does not fit, a bad setting) print one line that says what to do, with no traceback, and exit
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from ..errors import CnnzipError, ConfigError
from . import (
    decompose,
    deep_compress,
    demo,
    distill,
    dynamic_prune,
    evaluate,
    export,
    fuse,
    info,
    models,
    pca_prune,
    prune,
    quantize,
    search,
    train,
)
from .options import add_common_args

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = (models, demo, train, evaluate, prune, deep_compress, search, dynamic_prune, fuse, pca_prune, decompose,
            distill, quantize, export, info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be 1 or more; got {args.threads}")
            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except CnnzipError as exc:
        print(f"cnnzip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnzip: interrupted. Rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnzip", description="Shrink a trained CNN classifier to the smallest "
                                "model that still meets your accuracy target.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        epilog = getattr(command, "EPILOG", None)
        s = sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter)
        command.add_arguments(s)
        add_common_args(s)
        # The defaults travel with the arguments: a run saved before an option existed resumes when the option
        # is left at its default (`options.start_run`).
        s.set_defaults(func=command.run, defaults={a.dest: a.default for a in s._actions})
    return p
