"""Old public names kept importable with a DeprecationWarning, through one module ``__getattr__``.

    __getattr__ = old_names(__name__, {"GradientPenalty": "kexue.train.RegularizedStep"})

A name whose new home keeps it is reported as moved, another as renamed; the object returned is
the new one itself (``old is new``), imported only when the old name is asked for.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["old_names"]


def old_names(module: str, moved: Mapping[str, str],
              also: str | None = None) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` serving ``moved[old] = "package.module.new"``.

    Args:
        module: The module that keeps the old names (its ``__name__``).
        moved: Old name → dotted path of the object that replaces it.
        also: A shorter place the new name can be imported from, named in the warning.
    """

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = moved[name]
        home, new = target.rsplit(".", 1)
        if new == name:
            hint = f" (or from {also})" if also else ""
            message = f"{module}.{name} moved to {target}; import it from there{hint}"
        else:
            message = f"{module}.{name} was renamed {new}; use {target}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), new)

    return __getattr__
