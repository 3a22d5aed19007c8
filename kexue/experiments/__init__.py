"""Reproducible claims of the notes, each an :class:`~kexue.experiments.base.Experiment`.

Every experiment module defines ``EXPERIMENT``: its name, title, kexue.fm note, claim, pass
threshold, the published number it is read against (:class:`~kexue.experiments.base.Anchor`),
quick and full configs (frozen dataclasses), ``run(config, context) -> Result`` and, for a
thresholded claim, a training-free negative control that must fail it.
:func:`~kexue.experiments.base.run_experiment` adds the provenance (seed, config, versions,
device, precision, git SHA, date, seconds) in a record of its own.

Each experiment runs on the device and in the precision of its
:class:`~kexue.experiments.base.Context` where it declares it can (``Experiment.devices``,
``Experiment.precisions``), on the CPU in fp32 otherwise; the rule is in
:mod:`kexue.experiments.base`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kexue.experiments.base import (
    Anchor,
    Context,
    Experiment,
    Provenance,
    Result,
    Table,
    run_experiment,
)

__all__ = ["EXPERIMENTS", "NAMES", "Anchor", "Context", "Experiment", "Provenance", "Result",
           "Table", "run_experiment"]

if TYPE_CHECKING:
    EXPERIMENTS: dict[str, Experiment]

# the registry's order is the report's order; importing this package stays cheap (the CLI
# reads NAMES for its choices), the modules load on first use of EXPERIMENTS
NAMES: tuple[str, ...] = (
    "ema_digits", "layerwise_lr", "attention_maps", "mixers_digits", "attention_scaling",
    "estimator_variance", "direct_metric", "gan_dynamics", "path_kernel_digits",
    "modified_flow", "domain_vocab", "constrained_text", "gan_digits", "glann_digits",
    "nvae_digits", "segmentation_pd1998",
)


def _load() -> dict[str, Experiment]:
    registry = {}
    for name in NAMES:
        module = importlib.import_module(f"kexue.experiments.{name}")
        experiment = module.EXPERIMENT
        if experiment.name != name:
            raise RuntimeError(f"kexue.experiments.{name} defines experiment "
                               f"{experiment.name!r}")
        registry[name] = experiment
    return registry


def __getattr__(attr: str) -> Any:
    if attr == "EXPERIMENTS":
        registry = _load()
        globals()["EXPERIMENTS"] = registry
        return registry
    raise AttributeError(f"module 'kexue.experiments' has no attribute {attr!r}")
