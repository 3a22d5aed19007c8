"""Claim: local and Nyström attention grow linearly in T where dense attention grows as T².

Times one call of each attention function on random (B, H, T, Dh) inputs at doubling lengths,
forward (under ``no_grad``) and forward+backward, and measures its peak resident-set growth;
plots both against T on log-log axes. The time exponent is the slope between the two largest
lengths, log(t(T₂) / t(T₁)) / log(T₂ / T₁): 2 for O(T²), 1 for O(T). Each time is the fastest
of several calls taken in rounds over all cases (the least disturbed by other work on shared
cores). The full comparison with
the PyPI peers is ``kexue bench attention``.
Notes: https://kexue.fm/archives/6853, https://kexue.fm/archives/8180
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor

from kexue.attention import atrous_attention, local_attention, nystrom_attention, sparse_attention
from kexue.experiments._common import rss_growth

NAME = "attention_scaling"
TITLE = "Attention cost against sequence length: dense SDPA, sparse and Nyström"
NOTE = "https://kexue.fm/archives/6853"
CLAIM = (
    "over the last doubling of T, local and Nyström attention have a time exponent at least "
    "0.4 below dense SDPA's, forward and training, and are faster at the largest T"
)
QUICK: dict[str, Any] = {"lengths": [512, 1024, 2048, 4096], "heads": 4, "head_dim": 32,
                         "window": 128, "rate": 16, "stride": 16, "landmarks": 32,
                         "repeats": 3}
FULL: dict[str, Any] = {**QUICK, "lengths": [1024, 2048, 4096, 8192, 16384], "heads": 8,
                        "head_dim": 64, "window": 256, "rate": 64, "stride": 64,
                        "landmarks": 64}
TIMED = True  # the claim is about wall-clock time: reported, never asserted by the tests
MODES = ("forward", "training")
LINEAR = ("local", "nystrom")  # the methods the claim is about


def _methods(config: dict[str, Any]) -> dict[str, Callable[..., Tensor]]:
    """label -> attention function on (B, H, T, Dh) q, k, v."""
    return {
        "dense SDPA": F.scaled_dot_product_attention,
        "local": functools.partial(local_attention, window=config["window"]),
        "atrous": functools.partial(atrous_attention, rate=config["rate"]),
        "local+strided": functools.partial(
            sparse_attention, window=config["window"], stride=config["stride"]
        ),
        "nystrom": functools.partial(nystrom_attention, landmarks=config["landmarks"]),
    }


def _step(fn: Callable[..., Tensor], qkv: list[Tensor], mode: str) -> Callable[[], None]:
    if mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                fn(*qkv)

        return forward
    leaves = [x.detach().requires_grad_(True) for x in qkv]

    def training() -> None:
        fn(*leaves).sum().backward()
        for x in leaves:
            x.grad = None

    return training


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    lengths, methods = config["lengths"], _methods(config)
    steps: dict[tuple[str, str, int], Callable[[], None]] = {}
    for t in lengths:
        shape = (1, config["heads"], t, config["head_dim"])  # (B, H, T, Dh)
        qkv = [torch.randn(shape, generator=gen) for _ in range(3)]
        for mode in MODES:
            for label, fn in methods.items():
                steps[mode, label, t] = _step(fn, qkv, mode)
    # A warm-up call each (lazy initialisation is not the case's memory), peak memory, then
    # the times in rounds over every case, so that a burst of load hits a round, not a case.
    for step in steps.values():
        step()
    peak = {key: rss_growth(step) for key, step in steps.items()}
    best = dict.fromkeys(steps, math.inf)
    for _ in range(config["repeats"]):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)
    seconds = {m: {k: [best[m, k, t] for t in lengths] for k in methods} for m in MODES}
    peak_mb = {m: {k: [None if peak[m, k, t] is None else peak[m, k, t] / 1e6 for t in lengths]
                   for k in methods} for m in MODES}

    def slope(mode: str, label: str) -> float:
        t = seconds[mode][label]
        return math.log(t[-1] / t[-2]) / math.log(lengths[-1] / lengths[-2])

    exponents = {m: {k: slope(m, k) for k in methods} for m in MODES}
    holds = all(
        exponents[m][k] <= exponents[m]["dense SDPA"] - 0.4
        and seconds[m][k][-1] < seconds[m]["dense SDPA"][-1]
        for m in MODES
        for k in LINEAR
    )

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, mode in enumerate(MODES):
        for label in methods:
            style = {"marker": "o", "color": "black" if label == "dense SDPA" else None}
            axes[0, col].plot(lengths, seconds[mode][label], **style,
                              label=f"{label} (exponent {exponents[mode][label]:.2f})")
            mem = [(t, m) for t, m in zip(lengths, peak_mb[mode][label], strict=True)
                   if m is not None and m > 0]
            if mem:
                axes[1, col].plot(*zip(*mem, strict=True), **style, label=label)
        axes[0, col].set_title(f"{mode}: fastest of {config['repeats']} calls")
        axes[1, col].set_title(f"{mode}: peak resident-set growth")
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel("sequence length T")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=7)
        axes[1, col].legend(fontsize=7)
    fig.suptitle(f"CPU, {torch.get_num_threads()} thread(s), B=1, H={config['heads']}, "
                 f"Dh={config['head_dim']}, window {config['window']}, rate {config['rate']}, "
                 f"stride {config['stride']}, {config['landmarks']} landmarks")
    fig.tight_layout()

    metrics: dict[str, float] = {}
    for mode in MODES:
        for label in methods:
            key = label.replace(" ", "_").replace("+", "_")
            metrics[f"exponent_{mode}_{key}"] = exponents[mode][label]
            metrics[f"seconds_{mode}_{key}_T{lengths[-1]}"] = seconds[mode][label][-1]
            if peak_mb[mode][label][-1] is not None:
                metrics[f"peak_mb_{mode}_{key}_T{lengths[-1]}"] = peak_mb[mode][label][-1]
    summary = "; ".join(
        f"{mode} exponent dense {exponents[mode]['dense SDPA']:.2f}, "
        + ", ".join(f"{k} {exponents[mode][k]:.2f}" for k in LINEAR)
        + f", at T={lengths[-1]} "
        + ", ".join(
            f"{k} {seconds[mode]['dense SDPA'][-1] / seconds[mode][k][-1]:.1f}× faster"
            for k in LINEAR
        )
        for mode in MODES
    )
    return {"metrics": metrics, "claim_holds": holds, "summary": summary,
            "figures": {"scaling": fig}}
