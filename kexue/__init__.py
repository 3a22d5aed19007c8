"""kexue: PyTorch parts built from the research notes of Scientific Spaces (https://kexue.fm).

The library lives in subpackages (``kexue.train``, ...); ``kexue.cli`` and
``kexue.experiments`` are applications built on it. The library needs only torch and numpy
(``kexue.text`` and ``kexue.dynamics`` also scipy; see the extras in ``pyproject.toml``); this
module imports nothing heavier.
"""

from importlib import metadata as _metadata

from kexue import train
from kexue.train import (
    EMA,
    capture,
    chain,
    param_groups,
    route,
    with_transforms,
)

try:
    __version__: str = _metadata.version("kexue")
except _metadata.PackageNotFoundError:  # a plain checkout on sys.path, not installed
    __version__ = "0.1.0"

__all__ = ["EMA", "__version__", "capture", "chain", "param_groups", "route", "train",
           "with_transforms"]
