"""Training methods, registered by name.

Importing this package imports every module in it, so a new method only needs its own
module with a ``@register``-decorated :class:`Method` subclass.
"""

import importlib
import pkgutil

from src_models.methods.base import (
    METHODS,
    Method,
    Prediction,
    get_method,
    make_config,
    method_names,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "Prediction", "get_method", "make_config", "method_names"]
