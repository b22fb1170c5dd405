"""`cnnzip models`: the model zoo's architectures."""

from __future__ import annotations

from ..errors import ConfigError
from ..measure import count_macs, count_parameters
from ..models import create_model, list_models

NAME = "models"
HELP = "list the architectures in the model zoo"
DESCRIPTION = "List the model zoo's architectures (names for --model)."


def add_arguments(s) -> None:
    s.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    s.add_argument("--details", action="store_true", help="also print parameters and MACs (10 classes, 32x32)")


def run(args) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; run `cnnzip models` to see them all")
    for name in names:
        if args.details:
            small = name == "small_cnn"
            m = create_model(name, num_classes=10, **({"in_channels": 1} if small else {}))
            shape = (1, 8, 8) if small else (3, 32, 32)
            print(f"{name:<18} {count_parameters(m) / 1e6:8.3f}M params {count_macs(m, shape) / 1e6:9.1f}M MACs",
                  flush=True)
        else:
            print(name)
    return 0
