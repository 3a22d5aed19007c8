"""Shared pieces of the experiments: embedded real data and small evaluation helpers."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


def digits(seed: int, test_fraction: float = 0.3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's 1,797 real 8×8 handwritten digits, standardised, split by ``seed``.

    Returns:
        ``(x_train, y_train, x_test, y_test)`` with x of shape (N, 64) float32 and y int64.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (N, 64) in [0, 1]
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-2)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(-1) == y).float().mean().item()
    return loss, acc


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Indices of one shuffled epoch, in batches."""
    return torch.randperm(n, generator=gen).split(batch_size)


def tail_mean(values: list[float], fraction: float = 0.5) -> float:
    """Mean of the last ``fraction`` of ``values`` (a steadier figure than the last point)."""
    k = max(1, int(len(values) * fraction))
    return float(np.mean(values[-k:]))


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_growth(call: Callable[[], object]) -> int | None:
    """Peak resident-set growth of one ``call()`` in bytes: VmHWM after - VmRSS before.

    Python's and glibc's free memory is handed back to the OS first (``gc.collect``,
    ``malloc_trim``), and the kernel's peak mark is reset (``/proc/self/clear_refs``), so the
    figure is what the call adds at its peak: outputs, intermediates, gradients. Linux only;
    None elsewhere. torch keeps no CPU allocator statistics, hence the resident set.
    """
    try:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except (OSError, AttributeError, RuntimeError):  # not Linux with glibc
        return None
    call()
    return _status_bytes("VmHWM") - before


def grid_figure(grids: dict[str, Tensor], title: str, width: float = 3.4):
    """One panel per named image batch (N, 1, H, W) in [0, 1], tiled by ``image_grid``."""
    import matplotlib.pyplot as plt

    from kexue.generative.base import image_grid

    fig, axes = plt.subplots(1, len(grids), figsize=(width * len(grids), width + 0.4))
    for ax, (name, images) in zip(np.atleast_1d(axes), grids.items(), strict=True):
        ax.imshow(image_grid(images)[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
