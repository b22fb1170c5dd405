"""CNN image classifiers for 32x32 (and smaller) inputs, behind one registry.

`create_model("resnet56", num_classes=10)` builds a model by name; `list_models("vgg*")` lists names;
`load_weights(model, path)` loads a checkpoint and names the first tensor that does not fit. Every model has
`forward_features` / `forward_head` and a `cnnzip_spec` dict from which `create_model(**spec)` rebuilds it.

Each family lives in its own file and registers its builders with `@register_model`; they are imported
here explicitly, so the registry holds exactly the families listed below.
"""

# Family modules are imported for their `@register_model` side effect, one explicit line, no star imports.
from . import alexnet, densenet, mobilenet, resnet_cifar, shufflenet, small, vgg  # noqa: F401
from ._checkpoint import load_weights, read_checkpoint
from ._registry import create_model, list_models, register_model
from .factored import FactoredConv2d, FactoredLinear, factor_layers, factored_layers
from .removed import RemovedBlock, remove_blocks, removed_blocks
from .user import USER_ATTRIBUTE, USER_MODULE_PREFIX, build_user_model, user_factory

__all__ = ["create_model", "list_models", "load_weights", "read_checkpoint", "register_model", "RemovedBlock", "remove_blocks",
           "removed_blocks", "FactoredConv2d", "FactoredLinear", "factor_layers", "factored_layers", "USER_ATTRIBUTE", "USER_MODULE_PREFIX",
           "build_user_model", "user_factory"]
