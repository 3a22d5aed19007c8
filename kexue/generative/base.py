"""The one contract every generative trainer meets, so the CLI and experiments treat them alike.

A trainer owns its model(s), optimiser(s), EMA and a private ``torch.Generator``; it never reads
or reseeds the global RNG, never prints and never writes files. ``state_dict()`` holds everything
needed to resume (weights, optimiser state, EMA, generator state, epoch counter), so that
``fit_epoch`` after ``load_state_dict`` continues exactly as uninterrupted training would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Trainer", "image_grid"]


@runtime_checkable
class Trainer(Protocol):
    """Epoch-wise trainer of a generative model on an :class:`~kexue.generative.data.ImageData`.

    Attributes:
        epoch: Epochs completed so far.
        epochs: Epochs planned (the configured schedule; warm-ups and stages refer to it).
    """

    epoch: int
    epochs: int

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch; ``on_batch(done, total)`` reports progress. Returns mean losses."""
        ...

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images, (n, C, H, W) in [0, 1], from the model used for evaluation (EMA if any)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def image_grid(images: Tensor, nrow: int = 8, pad: int = 1) -> Tensor:
    """Tile images into one (H', W') grid with ``pad`` pixels of background between them.

    Args:
        images: (N, C, H, W) with C = 1 (grey) or 3 (colour), values in [0, 1].
        nrow: Images per row.
        pad: Padding in pixels.

    Returns:
        (C, rows·(H+pad)+pad, nrow·(W+pad)+pad) tensor, ready for ``plt.imshow`` after permute.

    Raises:
        ValueError: If ``images`` is not 4-D or ``nrow`` < 1.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = images.new_zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid
