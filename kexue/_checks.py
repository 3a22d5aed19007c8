"""Argument checks shared by every public callable: one rule, one message shape.

Each check raises ``ValueError`` naming the argument, the value it got and what it expects, and
returns the value normalised (a Python ``int``/``float``), so callers write
``self.lr = check_real("lr", lr, low=0, low_open=True)``. ``bool`` is never a number here
(``True`` for ``epochs`` is a bug, not 1), and NaN never passes a bound.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_float_tensor", "check_generator", "check_int", "check_real", "check_size"]


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_int(name: str, value: Any, *, low: int | None = None,
              high: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not bool) in ``[low, high]``.

    numpy integers pass; floats do not, even integral ones (``2.0`` for a count is a bug).

    Raises:
        ValueError: Naming ``name`` when ``value`` is not such an integer.
    """
    if low is not None and high is not None:
        expected = f"an int in [{low}, {high}]"
    elif low is not None:
        expected = f"an int >= {low}"
    elif high is not None:
        expected = f"an int <= {high}"
    else:
        expected = "an int"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {expected}, got {_got(value)}")
    out = operator.index(value)
    if (low is not None and out < low) or (high is not None and out > high):
        raise ValueError(f"{name} must be {expected}, got {out!r}")
    return out


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False,
               finite: bool = True) -> float:
    """``value`` as a ``float`` if it is a real number (not bool, not NaN) within the bounds.

    Args:
        name: The argument's name, for the message.
        value: What the caller passed.
        low, high: Bounds, or None for none.
        low_open, high_open: Exclude the bound itself (``low=0, low_open=True`` is "> 0").
        finite: Refuse ±inf (default). With ``finite=False`` an infinity passes when the bounds
            allow it (``high=math.inf`` with ``high_open=False``, say).

    Raises:
        ValueError: Naming ``name`` when ``value`` is not such a number.
    """
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    expected = ("a finite number" if finite else "a number") + (
        " " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {expected}, got {_got(value)}")
    out = float(value)
    bad = (math.isnan(out) or (finite and math.isinf(out))
           or (low is not None and (out <= low if low_open else out < low))
           or (high is not None and (out >= high if high_open else out > high)))
    if bad:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return out


def check_size(name: str, value: Any) -> torch.Size:
    """``value`` (an int, or a sequence of ints >= 0) as a ``torch.Size``.

    Raises:
        ValueError: Naming ``name`` for anything else (a bool, a float, a negative entry).
    """
    dims = (value,) if isinstance(value, numbers.Integral) else value
    try:
        return torch.Size(check_int(f"{name}[{i}]", d, low=0) for i, d in enumerate(dims))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of ints >= 0, got {value!r}") from None


def check_float_tensor(name: str, value: Any, *, ndim: int | None = None) -> Tensor:
    """``value`` if it is a floating-point tensor (of ``ndim`` dimensions when given).

    Raises:
        ValueError: Naming ``name`` for a non-tensor, an integer/bool tensor or a wrong rank.
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a floating-point tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    return value


def check_generator(name: str, value: Any,
                    device: torch.device | str | None = None) -> torch.Generator | None:
    """``value`` if it is None or a ``torch.Generator`` on ``device``'s type (any when None).

    torch otherwise fails deep inside the sampler for a CPU generator drawing CUDA tensors.

    Raises:
        ValueError: Naming ``name`` for another type or a generator on another device type.
    """
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None, got "
                         f"{type(value).__name__}")
    if device is not None and torch.device(device).type != value.device.type:
        raise ValueError(f"{name} must be on the tensors' device type, got a generator on "
                         f"{value.device} for tensors on {torch.device(device)}")
    return value
