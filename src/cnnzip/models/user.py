"""A user's own architecture on the command line: `--model-py path/to/file.py:factory`.

The factory is a function, defined in the user's file, that takes no arguments and returns a fresh `nn.Module`.
cnnzip imports that file only when the user names it on the command line: a model file records which factory
built it, as text, so that cnnzip can say what to pass, but never imports anything named inside a file it reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import ConfigError

__all__ = ["user_factory", "build_user_model", "USER_ATTRIBUTE"]

USER_ATTRIBUTE = "cnnzip_user"  # stamped on models a factory built: "file.py:factory", saved as text
USER_MODULE_PREFIX = "cnnzip_user_"  # the name under which a user's file is imported


def user_factory(spec: str) -> Callable[[], nn.Module]:
    """The function `spec` ("path/to/file.py:factory") names, imported from that file."""
    path_text, sep, name = str(spec).rpartition(":")
    if not sep or not path_text or not name.isidentifier():
        raise ConfigError(f"--model-py {spec!r}: give FILE.py:FACTORY, a Python file and the name of a function in "
                          "it that returns the model (e.g. mynet.py:build)")
    path = Path(path_text)
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"--model-py {spec!r}: {path} is not a Python file{'' if path.exists() else ' (not found)'}")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"{USER_MODULE_PREFIX}{path.stem}_{key}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # (dataclasses and pickling look classes up here)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: any error it raises is reported in one line
            del sys.modules[module_name]
            raise ConfigError(f"--model-py: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"--model-py {spec!r}: {path} has no function {name!r}")
    return factory


def build_user_model(spec: str) -> nn.Module:
    """A fresh model from the factory `spec` names, stamped with `spec` so that files saved from it say so."""
    factory = user_factory(spec)
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ConfigError(f"--model-py {spec!r}: calling {factory.__name__}() failed: {type(exc).__name__}: "
                          f"{exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-py {spec!r}: {factory.__name__}() returned {type(model).__name__}, not an "
                          "nn.Module")
    path, _, name = str(spec).rpartition(":")
    setattr(model, USER_ATTRIBUTE, f"{Path(path).name}:{name}")
    return model
