"""Errors a user can fix. The CLI prints their message alone, without a traceback."""


class CnnzipError(Exception):
    """Base class for every error caused by input the user can correct (paths, files, settings)."""


class DataError(CnnzipError, ValueError):
    """A dataset path, layout or file is missing, malformed or inconsistent."""


class ModelError(CnnzipError, ValueError):
    """An unknown model name, or a checkpoint that does not fit the model."""


class ConfigError(CnnzipError, ValueError):
    """A setting is out of range or contradicts another."""
