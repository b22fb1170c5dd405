"""Files: atomic writes, run state, the model file, architecture rebuild, and the one door `load(path)`.

A leaf below every method family: it imports only `errors` and `models`, and each format registers its reader
here (`register_format`), so `load` reads every file cnnzip writes without knowing the methods that wrote them.
"""

from .architecture import apply_widths, check_probe, layer_widths, probe_output, rebuild
from .atomic import atomic_save, atomic_write_bytes, atomic_write_text
from .meta import IMAGENET_MEAN, IMAGENET_STD, ModelMeta
from .modelfile import is_model_file, load_any, load_model, needs_architecture, save_model, skeleton
from .registry import FileFormat, formats, load, register_format, sniff
from .runstate import differences, refuse_changes, resume_state

__all__ = [
    "apply_widths", "check_probe", "layer_widths", "probe_output", "rebuild",
    "atomic_save", "atomic_write_bytes", "atomic_write_text",
    "FileFormat", "formats", "load", "register_format", "sniff",
    "IMAGENET_MEAN", "IMAGENET_STD", "ModelMeta", "is_model_file", "load_any", "load_model", "needs_architecture",
    "save_model", "skeleton",
    "differences", "refuse_changes", "resume_state",
]
