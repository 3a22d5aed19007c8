"""Named random streams derived from one seed.

Every consumer of randomness in a run (initialisation, batch order, sampling, evaluation) gets
its own ``torch.Generator`` from ``(seed, name)``, instead of ``seed + 1``, ``seed + 7919``: the
streams of seeds s and s + 1 never overlap by construction, and adding a stream never shifts
another.

    derive_seed(seed, *names) = BLAKE2b-64(seed ‖ names) mod 2⁶³
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from kexue._checks import check_int

__all__ = ["derive_seed", "stream"]


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed for the stream ``names`` of ``seed``, stable across runs and platforms.

    ``derive_seed(seed)`` with no names is ``seed`` itself, so a stream that a seed always
    meant (a trainer's own generator) keeps its values.

    Raises:
        ValueError: If ``seed`` is not an int in [0, 2⁶⁴) or a name is not a string.
    """
    seed = check_int("seed", seed, low=0, high=2**64 - 1)
    if not names:
        return seed
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"stream names must be strings, got {name!r}")
    message = seed.to_bytes(8, "little") + "\x1f".join(names).encode()
    digest = hashlib.blake2b(message, digest_size=8, person=b"kexue-seed").digest()
    return int.from_bytes(digest, "little") >> 1


def stream(seed: int, *names: str, device: Any = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`derive_seed`."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *names))
