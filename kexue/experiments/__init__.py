"""Reproducible claims of the notes, each an :class:`~kexue.experiments.base.Experiment`.

Every experiment module defines ``EXPERIMENT``: its name, title, kexue.fm note, claim, pass
threshold, the published number it is read against (:class:`~kexue.experiments.base.Anchor`),
quick and full configs (frozen dataclasses), ``run(config, context) -> Result`` and, for a
thresholded claim, a training-free negative control that must fail it.
:func:`~kexue.experiments.base.run_experiment` adds the provenance (seed, config, versions,
device, git SHA, date, seconds) in a record of its own.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")

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
from kexue.experiments.base import (  # noqa: E402
    Anchor,
    Context,
    Experiment,
    Provenance,
    Result,
    Table,
    run_experiment,
)

__all__ = ["EXPERIMENTS", "Anchor", "Context", "Experiment", "Provenance", "Result", "Table",
           "run_experiment"]


def _legacy(module: ModuleType) -> Experiment:
    """An Experiment around a module still written as ``run(config: dict, seed) -> dict``.

    Transitional: removed once every module defines ``EXPERIMENT``.
    """
    def config(values: dict[str, Any]) -> Any:
        cls = dataclasses.make_dataclass("Config", [
            (k, Any, dataclasses.field(default_factory=lambda v=v: v)) for k in values
            for v in [values[k]]], frozen=True)
        return cls()

    def run(cfg: Any, ctx: Context) -> Result:
        out = module.run(dict(dataclasses.asdict(cfg)), ctx.seed)
        metrics = dict(out["metrics"])
        tables = []
        if out.get("table"):
            t = out["table"]
            tables.append(Table(t.get("caption", ""), tuple(t["columns"]), tuple(t["rows"])))
        if len(metrics) > 12:
            tables.append(Table("metrics", ("metric", "value"), tuple(metrics.items())))
            metrics = dict(list(metrics.items())[:12])
        return Result(metrics=metrics, holds=out["claim_holds"], summary=out["summary"],
                      figures=out.get("figures", {}), tables=tuple(tables))

    return Experiment(name=module.NAME, title=module.TITLE, note=module.NOTE,
                      claim=module.CLAIM, threshold=None,
                      anchor=Anchor(None, "not yet researched"), quick=config(module.QUICK),
                      full=config(module.FULL), run=run, timed=getattr(module, "TIMED", False))


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (getattr(m, "EXPERIMENT", None) or _legacy(m)
              for m in (ema_digits, layerwise_lr, attention_maps, mixers_digits,
                        attention_scaling, estimator_variance, direct_metric, gan_dynamics,
                        path_kernel_digits, modified_flow, domain_vocab, constrained_text,
                        gan_digits, glann_digits, nvae_digits))
}
