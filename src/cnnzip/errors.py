"""Errors a user can fix. The CLI prints their message alone, without a traceback."""


class CnnzipError(Exception):
    """Base class for every error caused by input the user can correct (paths, files, settings)."""


class DataError(CnnzipError, ValueError):
    """A dataset path, layout or file is missing, malformed or inconsistent."""


class ModelError(CnnzipError, ValueError):
    """An unknown model name, or a checkpoint that does not fit the model."""


class ConfigError(CnnzipError, ValueError):
    """A setting is out of range or contradicts another."""


def layer_patterns(patterns, option: str = "skip") -> list:
    """Layer names or regular expressions (matched in full), compiled; a bad expression is a ConfigError."""
    import re

    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise ConfigError(f"{option} {p!r} is not a valid regular expression ({exc}); escape special "
                              "characters, e.g. layer1\\.0\\.conv1") from exc
    return compiled
