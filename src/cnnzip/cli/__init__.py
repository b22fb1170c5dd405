"""The `cnnzip` command: a thin layer over the Python API, one module per command.

Each command module has NAME, HELP, DESCRIPTION (and optionally EPILOG), `add_arguments(parser)` and
`run(args) -> int`; options that several commands share live in `options`. User mistakes (a wrong path, a
checkpoint that does not fit, a bad setting) print one line that says what to do, with no traceback, and exit
with status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import distributed
from ..errors import CnnzipError, ConfigError
from ..train import select_device
from . import (
    compress,
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

COMMANDS = (models, demo, compress, train, evaluate, prune, deep_compress, search, dynamic_prune, fuse, pca_prune, decompose,
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
        if distributed.world().distributed:
            return _run_on_every_rank(args)
        return int(args.func(args) or 0)
    except CnnzipError as exc:
        print(f"cnnzip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnzip: interrupted. Rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130


def _run_on_every_rank(args: argparse.Namespace) -> int:
    """Under torchrun: every rank runs the command (the same deterministic program; only training is split), and
    only rank 0 writes the run directory. The other ranks work in a private copy of it, taken before rank 0
    changes anything, so they resume from the same state and their writes never touch rank 0's files. A command
    that does not train runs on rank 0 alone."""
    w = distributed.world()
    if not args.trains:
        return int(args.func(args) or 0) if w.main else 0
    distributed.SYNC_BATCHNORM = distributed.SYNC_BATCHNORM or bool(getattr(args, "sync_bn", False))
    distributed.initialize(select_device(getattr(args, "device", "auto")))
    scratch = None
    if not w.main:
        args.quiet = args.no_progress = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process; rank 0 prints
        scratch = Path(tempfile.mkdtemp(prefix=f"cnnzip-rank{w.rank}-"))
        # torchrun stops the other ranks with SIGTERM when one fails: exit through `finally`, which removes the copy
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        out = Path(args.out)
        if out.exists():
            shutil.copytree(out, scratch / "out", symlinks=True)
        args.out = scratch / "out"
    distributed.barrier()
    try:
        return int(args.func(args) or 0)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        distributed.shutdown()


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
        s.set_defaults(func=command.run, defaults={a.dest: a.default for a in s._actions},
                       trains=getattr(command, "TRAINS", False))
    return p
