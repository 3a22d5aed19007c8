"""The one contract every generative trainer meets, so the CLI and experiments treat them alike.

A trainer owns its model(s), optimiser(s), EMA and a private ``torch.Generator`` (attribute and
``state_dict`` key ``rng``); it never reads or reseeds the global RNG, never prints and never
writes files. It is built from a frozen dataclass config, a seed and a device, composes
:class:`~kexue.generative.common.EpochLoop` for its epochs, and ``state_dict()`` holds everything
needed to resume (weights, optimiser state, EMA, generator state, epoch counter, the state
format), so that ``fit_epoch`` after ``load_state_dict`` continues exactly as uninterrupted
training would.

:class:`TrainerEntry` is how a model enters the :data:`kexue.generative.TRAINERS` registry that
``kexue train`` and the experiments read: a builder and the default schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from kexue._checks import check_int
from kexue.generative.data import ImageData

__all__ = ["STATE_FORMAT", "Trainer", "TrainerEntry", "check_state", "check_state_format",
           "image_grid"]

STATE_FORMAT = 2
"""Version of the trainers' ``state_dict`` layout. 2: one RNG under ``rng``, frozen dataclass
configs, ``format`` recorded (kexue 0.3); 1: the per-model layouts before it (no ``format``)."""


def check_state_format(state: Mapping[str, Any]) -> None:
    """Refuse a ``state_dict`` of another layout with one line naming both format versions.

    Raises:
        ValueError: If ``state`` is not a mapping or its ``format`` is not :data:`STATE_FORMAT`.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a trainer's state_dict (a dict), got "
                         f"{type(state).__name__}")
    found = state.get("format", 1)
    if found != STATE_FORMAT:
        raise ValueError(f"state is in trainer state format {found!r}; this kexue reads format "
                         f"{STATE_FORMAT} (saved by an older kexue: retrain, or load it with "
                         f"the kexue that wrote it)")


def check_state(state: Mapping[str, Any], config: Any, seed: int) -> None:
    """:func:`check_state_format`, then refuse a state saved with another config (a dataclass,
    compared field by field) or seed: the trainer it would load into is a different run.

    Raises:
        ValueError: Naming what differs.
    """
    check_state_format(state)
    mine = dataclasses.asdict(config)
    if state.get("config") != mine:
        raise ValueError(f"state was saved with config {state.get('config')}, this trainer has "
                         f"{mine}")
    if state.get("seed") != seed:
        raise ValueError(f"state was saved with seed {state.get('seed')}, this trainer has "
                         f"seed {seed}")


@runtime_checkable
class Trainer(Protocol):
    """Epoch-wise trainer of a generative model on an :class:`~kexue.generative.data.ImageData`.

    Attributes:
        epoch: Epochs completed so far.
        epochs: Epochs planned (the configured schedule; warm-ups and stages refer to it).
        device: Where the model trains.
    """

    epoch: int
    epochs: int
    device: torch.device

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch; ``on_batch(done, total)`` reports progress. Returns mean losses."""
        ...

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images, (n, C, H, W) float32 in [0, 1] on the CPU (wherever the model trains),
        from the model used for evaluation (EMA if any); ``generator`` None: the trainer's
        ``"sample"`` stream, so repeated calls give the same images."""
        ...

    def evaluate(self, data: ImageData, generator: torch.Generator | None = None
                 ) -> dict[str, float]:
        """The model's scores on ``data``'s test split (sample metrics or a likelihood)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; refuses another format (:func:`check_state_format`),
        config or seed with a ValueError."""
        ...


@dataclass(frozen=True)
class TrainerEntry:
    """A model of the :data:`kexue.generative.TRAINERS` registry.

    Attributes:
        build: ``build(data, *, epochs, seed, device, autocast, variant) -> Trainer``: the
            model's default trainer for ``data`` with ``epochs`` planned.
        epochs: ``epochs(shape) -> int``: the default schedule for images of ``shape``
            (C, H, W).
        summary: One line for ``kexue train --help``.
        variants: Names ``variant`` may take (GAN recipes); empty when the model has none.
    """

    build: Callable[..., Trainer]
    epochs: Callable[[tuple[int, int, int]], int]
    summary: str
    variants: tuple[str, ...] = ()

    def schedule(self, shape: tuple[int, int, int], quick: bool = False) -> int:
        """The default epochs for ``shape``; ``quick``: a tenth of them (at least 1)."""
        full = self.epochs(shape)
        return max(1, full // 10) if quick else full


def image_grid(images: Tensor, nrow: int = 8, pad: int = 1) -> Tensor:
    """Tile images into one (H', W') grid with ``pad`` pixels of background between them.

    Args:
        images: (N, C, H, W) with C = 1 (grey) or 3 (colour), values in [0, 1].
        nrow: Images per row, ≥ 1.
        pad: Padding in pixels, ≥ 0.

    Returns:
        (C, rows·(H+pad)+pad, nrow·(W+pad)+pad) tensor, ready for ``plt.imshow`` after permute.

    Raises:
        ValueError: If ``images`` is not 4-D, ``nrow`` not an int ≥ 1 or ``pad`` not an int ≥ 0.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    nrow = check_int("nrow", nrow, low=1)
    pad = check_int("pad", pad, low=0)
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = images.new_zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid
