"""Claim: local and Nyström attention grow linearly in T where dense attention grows as T².

Times one call of each attention function on random (B, H, T, Dh) inputs at doubling lengths,
forward (under ``no_grad``) and forward+backward, and measures its peak resident-set growth;
plots both against T on log-log axes. The time exponent is the slope between the two largest
lengths, log(t(T₂) / t(T₁)) / log(T₂ / T₁): 2 for O(T²), 1 for O(T). Each time is the fastest
of several calls taken in rounds over all cases (the least disturbed by other work on shared
cores). The full comparison with the PyPI peers is ``kexue bench attention``.

The negative control times dense SDPA alone and scores it in the place of local and Nyström
attention (a method known to be O(T²) under the linear methods' names): the same scorer must
find no exponent gap and no speed-up.
Notes: https://kexue.fm/archives/6853, https://kexue.fm/archives/8180
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import Tensor

from kexue.attention import atrous_attention, local_attention, nystrom_attention, sparse_attention
from kexue.experiments._common import rss_growth
from kexue.experiments.base import Anchor, Context, Experiment, Result, Table

MODES = ("forward", "training")
DENSE = "dense SDPA"
LINEAR = ("local", "nystrom")  # the methods the claim is about
MIN_EXPONENT_GAP = 0.4  # each linear method's exponent at least this much below dense's

Seconds = dict[str, dict[str, list[float]]]  # mode -> method -> one time per length
Megabytes = dict[str, dict[str, list[float | None]]]


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    heads: int = 4
    head_dim: int = 32
    window: int = 128
    rate: int = 16
    stride: int = 16
    landmarks: int = 32
    repeats: int = 3


def _methods(config: Config) -> dict[str, Callable[..., Tensor]]:
    """label -> attention function on (B, H, T, Dh) q, k, v."""
    return {
        DENSE: F.scaled_dot_product_attention,
        "local": functools.partial(local_attention, window=config.window),
        "atrous": functools.partial(atrous_attention, rate=config.rate),
        "local+strided": functools.partial(
            sparse_attention, window=config.window, stride=config.stride
        ),
        "nystrom": functools.partial(nystrom_attention, landmarks=config.landmarks),
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


def _measure(config: Config, methods: dict[str, Callable[..., Tensor]], seed: int,
             memory: bool) -> tuple[Seconds, Megabytes]:
    """Fastest-of-``repeats`` seconds (and peak resident-set growth) per mode, method, length."""
    gen = torch.Generator().manual_seed(seed)
    lengths = config.lengths
    steps: dict[tuple[str, str, int], Callable[[], None]] = {}
    for t in lengths:
        shape = (1, config.heads, t, config.head_dim)  # (B, H, T, Dh)
        qkv = [torch.randn(shape, generator=gen) for _ in range(3)]
        for mode in MODES:
            for label, fn in methods.items():
                steps[mode, label, t] = _step(fn, qkv, mode)
    # A warm-up call each (lazy initialisation is not the case's memory), peak memory, then
    # the times in rounds over every case, so that a burst of load hits a round, not a case.
    for step in steps.values():
        step()
    peak = {key: rss_growth(step) if memory else None for key, step in steps.items()}
    best = dict.fromkeys(steps, math.inf)
    for _ in range(config.repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)
    seconds = {m: {k: [best[m, k, t] for t in lengths] for k in methods} for m in MODES}
    peak_mb = {m: {k: [None if peak[m, k, t] is None else peak[m, k, t] / 1e6 for t in lengths]
                   for k in methods} for m in MODES}
    return seconds, peak_mb


def run(config: Config, ctx: Context) -> Result:
    methods = _methods(config)
    seconds, peak_mb = _measure(config, methods, ctx.seed, memory=True)
    return _result(config, seconds, peak_mb, "")


def control(config: Config, ctx: Context) -> Result:
    """Dense SDPA, timed once at the first two lengths, scored in the place of every method:
    its exponent gap to itself is 0 and its speed-up 1, so the claim must fail."""
    config = replace(config, lengths=config.lengths[:2])
    seconds, peak_mb = _measure(config, {DENSE: F.scaled_dot_product_attention}, ctx.seed,
                                memory=False)
    names = list(_methods(config))
    seconds = {m: {k: list(seconds[m][DENSE]) for k in names} for m in MODES}
    peak_mb = {m: {k: list(peak_mb[m][DENSE]) for k in names} for m in MODES}
    return _result(config, seconds, peak_mb, "control (dense SDPA in every role): ")


def _result(config: Config, seconds: Seconds, peak_mb: Megabytes, prefix: str) -> Result:
    """Exponents, verdict, figure, tables and metrics; shared by ``run`` and ``control``."""
    lengths, methods = config.lengths, list(seconds[MODES[0]])

    def slope(mode: str, label: str) -> float:
        t = seconds[mode][label]
        return math.log(t[-1] / t[-2]) / math.log(lengths[-1] / lengths[-2])

    exponents = {m: {k: slope(m, k) for k in methods} for m in MODES}
    speedup = {m: {k: seconds[m][DENSE][-1] / seconds[m][k][-1] for k in methods}
               for m in MODES}
    holds = all(
        exponents[m][k] <= exponents[m][DENSE] - MIN_EXPONENT_GAP and speedup[m][k] > 1.0
        for m in MODES
        for k in LINEAR
    )

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, mode in enumerate(MODES):
        for label in methods:
            style = {"marker": "o", "color": "black" if label == DENSE else None}
            axes[0, col].plot(lengths, seconds[mode][label], **style,
                              label=f"{label} (exponent {exponents[mode][label]:.2f})")
            mem = [(t, m) for t, m in zip(lengths, peak_mb[mode][label], strict=True)
                   if m is not None and m > 0]
            if mem:
                axes[1, col].plot(*zip(*mem, strict=True), **style, label=label)
        axes[0, col].set_title(f"{mode}: fastest of {config.repeats} calls")
        axes[1, col].set_title(f"{mode}: peak resident-set growth")
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel("sequence length T")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=7)
        if axes[1, col].lines:
            axes[1, col].legend(fontsize=7)
    fig.suptitle(f"CPU, {torch.get_num_threads()} thread(s), B=1, H={config.heads}, "
                 f"Dh={config.head_dim}, window {config.window}, rate {config.rate}, "
                 f"stride {config.stride}, {config.landmarks} landmarks")
    fig.tight_layout()

    t_cols = tuple(f"T={t}" for t in lengths)
    tables = []
    for mode in MODES:
        tables.append(Table(
            caption=(f"{mode}: milliseconds per call (fastest of {config.repeats}) and the "
                     "exponent over the last doubling of T"),
            columns=("method", *t_cols, "exponent"),
            rows=tuple((k, *(1e3 * s for s in seconds[mode][k]), exponents[mode][k])
                       for k in methods)))
    for mode in MODES:
        tables.append(Table(
            caption=f"{mode}: peak resident-set growth per call, MB",
            columns=("method", *t_cols),
            rows=tuple((k, *("n/a" if v is None else v for v in peak_mb[mode][k]))
                       for k in methods)))

    metrics: dict[str, float] = {}
    for mode in MODES:
        for k in (DENSE, *LINEAR):
            metrics[f"exponent_{mode}_{k.replace(' ', '_')}"] = exponents[mode][k]
    for mode in MODES:
        for k in LINEAR:
            metrics[f"speedup_{mode}_{k}_T{lengths[-1]}"] = speedup[mode][k]
    summary = prefix + "; ".join(
        f"{mode} exponent dense {exponents[mode][DENSE]:.2f}, "
        + ", ".join(f"{k} {exponents[mode][k]:.2f}" for k in LINEAR)
        + f", at T={lengths[-1]} "
        + ", ".join(f"{k} {speedup[mode][k]:.1f}× faster" for k in LINEAR)
        for mode in MODES
    )
    return Result(metrics=metrics, holds=holds, summary=summary, figures={"scaling": fig},
                  tables=tuple(tables))


QUICK = Config()
EXPERIMENT = Experiment(
    name="attention_scaling",
    title="Attention cost against sequence length: dense SDPA, sparse and Nyström",
    note="https://kexue.fm/archives/6853",
    claim=("over the last doubling of T, local and Nyström attention have a time exponent at "
           "least 0.4 below dense SDPA's, forward and training, and are faster at the largest T"),
    threshold=(f"forward and training: exponent(local), exponent(Nyström) ≤ exponent(dense) − "
               f"{MIN_EXPONENT_GAP:g}, and both faster than dense at the largest T"),
    anchor=Anchor(
        number=("one self-attention module at n = 8192: standard 155.4 ms / 10233 MB, "
                "Nyströmformer-64 12.3 ms / 450 MB, Longformer-257 (sliding window) "
                "36.2 ms / 455 MB; at n = 4096: 32.9, 5.9 and 18.5 ms"),
        source=("Xiong et al. 2021, 'Nyströmformer: A Nyström-Based Algorithm for "
                "Approximating Self-Attention', Table 1, https://arxiv.org/abs/2102.03902"),
        data=("random inputs, one instance through one self-attention module, n = 512 to "
              "8192, on an Nvidia 1080Ti GPU"),
        differs=("kexue: CPU, one thread, the attention function alone (no projections), "
                 "B = 1, H = 4, Dh = 32, window 128 and 32 landmarks (quick), T = 512 to 4096"),
    ),
    quick=QUICK,
    full=replace(QUICK, lengths=(1024, 2048, 4096, 8192, 16384), heads=8, head_dim=64,
                 window=256, rate=64, stride=64, landmarks=64),
    run=run,
    control=control,
    timed=True,  # the claim is about wall-clock time: reported, never asserted by the tests
    # CPU only: the claim is CPU wall-clock time and resident-set growth (one thread)
    devices=("cpu",),
)
