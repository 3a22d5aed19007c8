"""kexue: PyTorch parts built from the research notes of Scientific Spaces (https://kexue.fm).

The library lives in subpackages (``kexue.train``, ...); ``kexue.cli`` and
``kexue.experiments`` are applications built on it.
"""

from kexue import train
from kexue.train import (
    EMA,
    capture,
    chain,
    param_groups,
    with_transforms,
)

__version__ = "0.1.0"

__all__ = ["EMA", "__version__", "capture", "chain", "param_groups", "train", "with_transforms"]
