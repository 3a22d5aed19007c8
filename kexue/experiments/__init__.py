"""Reproducible claims of the notes, each ``run(config, seed) -> dict`` on embedded real data.

Every experiment module defines ``NAME``, ``TITLE``, ``NOTE`` (the kexue.fm link), ``CLAIM``,
``QUICK`` and ``FULL`` configurations and ``run(config, seed)``, which returns ``metrics``,
``claim_holds``, a one-line ``summary`` and matplotlib ``figures``. :func:`run_experiment` adds
the provenance (seed, config, torch version, device, git SHA, seconds). A module whose claim is
about wall-clock speed sets ``TIMED = True``: its verdict is reported, not asserted by tests.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")

from kexue._env import environment  # noqa: E402
from kexue.experiments import (  # noqa: E402
    attention_maps,
    attention_scaling,
    constrained_text,
    direct_metric,
    domain_vocab,
    ema_digits,
    estimator_variance,
    gan_digits,
    gan_dynamics,
    glann_digits,
    layerwise_lr,
    mixers_digits,
    modified_flow,
    nvae_digits,
    path_kernel_digits,
)

EXPERIMENTS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (ema_digits, layerwise_lr, attention_maps, mixers_digits, attention_scaling,
              estimator_variance, direct_metric, gan_dynamics,
              path_kernel_digits, modified_flow, domain_vocab, constrained_text,
              gan_digits, glann_digits, nvae_digits)
}


def run_experiment(name: str, *, full: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run experiment ``name`` in quick (default) or full mode and record its provenance.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    module = EXPERIMENTS[name]
    config = dict(module.FULL if full else module.QUICK)
    start = time.perf_counter()
    result = module.run(config, seed)
    return {
        "name": name,
        "title": module.TITLE,
        "note": module.NOTE,
        "claim": module.CLAIM,
        "mode": "full" if full else "quick",
        "seed": seed,
        "config": config,
        **environment("cpu"),  # the experiments run on the CPU
        "seconds": time.perf_counter() - start,
        **result,
    }
