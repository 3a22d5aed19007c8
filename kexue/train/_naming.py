"""Finding tensors and modules by name: wrapper unwrapping and name patterns."""

from __future__ import annotations

import fnmatch
import re

from torch import nn

Pattern = str | re.Pattern[str]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers so that names carry no wrapper prefix."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def matches(pattern: Pattern, name: str) -> bool:
    """A ``str`` pattern is a glob on the whole name; an ``re.Pattern`` is searched in it."""
    if isinstance(pattern, re.Pattern):
        return pattern.search(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def show(pattern: Pattern) -> str:
    """How a pattern reads in an error message."""
    return f"re.compile({pattern.pattern!r})" if isinstance(pattern, re.Pattern) else repr(pattern)
