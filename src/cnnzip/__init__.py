"""cnnzip: shrink a trained CNN image classifier to the smallest model that still meets your accuracy target."""

from . import deep, deploy  # noqa: F401 - they register their files' readers with `load`
from .errors import CnnzipError, ConfigError, DataError, ModelError
from .finetune import Finetune, Finetuner
from .io import ModelMeta, load, load_any, load_model, save_model
from .measure import Evaluator, count_macs, count_nonzero, count_parameters, footprint, measure_latency
from .models import create_model, list_models, load_weights
from .search import Recipe, compress
from .train import TrainConfig, TrainHook, fit, select_device

__version__ = "0.1.0"

__all__ = [
    "CnnzipError", "ConfigError", "DataError", "ModelError",
    "Finetune", "Finetuner",
    "ModelMeta", "load", "load_any", "load_model", "save_model",
    "Evaluator", "count_macs", "count_nonzero", "count_parameters", "footprint", "measure_latency",
    "create_model", "list_models", "load_weights",
    "TrainConfig", "TrainHook", "fit", "select_device",
    "Recipe", "compress",
]
