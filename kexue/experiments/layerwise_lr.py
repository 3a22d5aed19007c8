"""Claims: (1) θ = λ·φ gives effective learning rate λ²α under SGD and λα under Adam;
(2) fine-tuning pretrained layers, rather than freezing them, pays (the note's motivation); the
layer-decay vs uniform difference is reported beside it with its standard error, not judged.

(1) trains the same MLP on real digits twice — once with explicit per-group learning rates from
``kexue.train.param_groups``, once reparameterised with ``scale_parametrize`` and one plain
learning rate — and measures how far apart the two trajectories end up (float64).
(2) pretrains a small residual tower on digits 0–4, then fine-tunes it on a few labelled
examples of digits 5–9 with a uniform learning rate, with layer-wise decay, and with a frozen
backbone (head only), and compares test accuracy on 5–9.

The negative control takes no step at all (an untrained tower, zero fine-tuning steps): the
three strategies then leave the same model, and the same scorer must find no gain.
Note: https://kexue.fm/archives/6418
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from kexue._seeds import derive_seed
from kexue.experiments._common import batches, digits, evaluate
from kexue.experiments.base import Anchor, Context, Experiment, Result, Table
from kexue.train import param_groups, scale_parametrize

IDENTITY_TOLERANCE = 1e-9  # max |θ_plain − θ_reparam| in float64
MIN_GAIN = 0.02  # fine-tuning (worse of uniform and layer decay) over head only, test accuracy
STRATEGIES = ("uniform", "layer decay", "head only")


@dataclass(frozen=True)
class Config:
    identity_steps: int = 50
    lam: float = 3.0
    pretrain_epochs: int = 8
    shots_per_class: int = 10
    finetune_steps: int = 150
    lr: float = 0.01
    layer_decay: float = 0.75
    width: int = 64
    depth: int = 4
    seeds: int = 3


class Tower(nn.Module):
    """embed -> blocks.0..n-1 (residual MLP blocks) -> norm -> head."""

    def __init__(self, width: int, depth: int, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


def _identity_gap(config: Config, ctx: Context, optimizer: str) -> float:
    """Max |θ_plain − θ_reparam| after training both ways in float64 (never autocast: an
    identity checked to float64 precision)."""
    seed = ctx.seed
    torch.manual_seed(seed)
    x, y, _, _ = digits(seed)
    x, y = ctx.put(x.double()), ctx.put(y)
    lam, alpha = config.lam, 0.05 if optimizer == "sgd" else 1e-3
    plain = ctx.place(Tower(32, 2).double())
    reparam = scale_parametrize(copy.deepcopy(plain), {"blocks.*": lam})
    if optimizer == "sgd":
        opt_plain = torch.optim.SGD(param_groups(plain, alpha, multipliers={"blocks.*": lam**2}))
        opt_re = torch.optim.SGD(reparam.parameters(), lr=alpha)
    else:
        groups = param_groups(plain, alpha, multipliers={"blocks.*": lam})
        for g in groups:  # Adam's ε must shrink with the gradient scale: ε/λ on scaled groups
            g["eps"] = 1e-8 / g["lr_scale"]
        opt_plain = torch.optim.Adam(groups)
        opt_re = torch.optim.Adam(reparam.parameters(), lr=alpha, eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config.identity_steps):
        idx = torch.randint(len(x), (32,), generator=gen)
        for model, opt in ((plain, opt_plain), (reparam, opt_re)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return max((p - _effective(reparam, name)).abs().max().item()
                   for name, p in plain.named_parameters())


def _effective(model: nn.Module, name: str) -> torch.Tensor:
    """The weight θ that ``model`` computes with under ``name``, parametrised or not."""
    module_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module_name), attr)


def _pretrain(config: Config, ctx: Context, seed: int, x: Tensor, y: Tensor) -> Tower:
    torch.manual_seed(seed)
    model = ctx.place(Tower(config.width, config.depth))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config.pretrain_epochs):
        for idx in batches(len(x), 32, gen):
            opt.zero_grad()
            with ctx.autocast():
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model


def _finetune(model: Tower, strategy: str, config: Config, ctx: Context, x: Tensor, y: Tensor,
              seed: int) -> Tower:
    model = copy.deepcopy(model)
    lr = config.lr
    if strategy == "uniform":
        groups = param_groups(model, lr, weight_decay=1e-4)
    elif strategy == "layer decay":
        groups = param_groups(model, lr, weight_decay=1e-4, layer_decay=config.layer_decay)
    else:  # head only: every other parameter gets multiplier 0 (left out of the optimizer)
        groups = param_groups(model, lr, weight_decay=1e-4,
                              multipliers={"embed.*": 0.0, "blocks.*": 0.0, "norm.*": 0.0})
    opt = torch.optim.AdamW(groups)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config.finetune_steps):
        idx = torch.randint(len(x), (16,), generator=gen)
        opt.zero_grad()
        with ctx.autocast():
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return model


def _shots(y_tr: Tensor, config: Config, seed: int) -> Tensor:
    """``shots_per_class`` random training indices of each new class (digits 5–9)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([
        torch.nonzero(y_tr == c).flatten()[
            torch.randperm(int((y_tr == c).sum()), generator=gen)[:config.shots_per_class]]
        for c in range(5, 10)
    ])


def run(config: Config, ctx: Context) -> Result:
    seed = ctx.seed
    gaps = {opt: _identity_gap(config, ctx, opt) for opt in ("sgd", "adam")}

    x_tr, y_tr, x_te, y_te = digits(seed)  # CPU: the selections are made here, then moved
    old_tr, old_te = y_tr < 5, y_te < 5
    x_new, y_new = ctx.put(x_te[~old_te]), ctx.put(y_te[~old_te])
    acc: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for s in range(config.seeds):
        rep_seed = derive_seed(seed, "repetition", str(s))
        base = _pretrain(config, ctx, rep_seed, ctx.put(x_tr[old_tr]), ctx.put(y_tr[old_tr]))
        shots = _shots(y_tr, config, rep_seed)
        for strategy in STRATEGIES:
            tuned = _finetune(base, strategy, config, ctx, ctx.put(x_tr[shots]),
                              ctx.put(y_tr[shots]), rep_seed)
            with ctx.autocast():
                acc[strategy].append(evaluate(tuned, x_new, y_new)[1])
    return _result(config, gaps, acc, "")


def control(config: Config, ctx: Context) -> Result:
    """No step anywhere: an untrained tower per seed, fine-tuned for zero steps, and the
    identity measured before any step. Every strategy leaves the same model, so the fine-tuning
    gain is 0 and the claim must fail."""
    config = replace(config, identity_steps=0, finetune_steps=0)
    seed = ctx.seed
    gaps = {opt: _identity_gap(config, ctx, opt) for opt in ("sgd", "adam")}
    x_tr, y_tr, x_te, y_te = digits(seed)
    new_te = y_te >= 5
    x_new, y_new = ctx.put(x_te[new_te]), ctx.put(y_te[new_te])
    acc: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for s in range(config.seeds):
        rep_seed = derive_seed(seed, "repetition", str(s))
        torch.manual_seed(rep_seed)
        base = ctx.place(Tower(config.width, config.depth))  # untrained
        shots = _shots(y_tr, config, rep_seed)
        for strategy in STRATEGIES:
            tuned = _finetune(base, strategy, config, ctx, ctx.put(x_tr[shots]),
                              ctx.put(y_tr[shots]), rep_seed)
            with ctx.autocast():
                acc[strategy].append(evaluate(tuned, x_new, y_new)[1])
    return _result(config, gaps, acc, "control (untrained, no step): ")


def _sem(values: list[float] | np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def _result(config: Config, gaps: dict[str, float], acc: dict[str, list[float]],
            prefix: str) -> Result:
    """Verdict, figure, metrics and the per-seed table; shared by ``run`` and ``control``."""
    means = {k: float(np.mean(v)) for k, v in acc.items()}
    sems = {k: _sem(v) for k, v in acc.items()}
    gain = min(means["uniform"], means["layer decay"]) - means["head only"]
    diff = np.array(acc["layer decay"]) - np.array(acc["uniform"])  # paired by seed
    holds = max(gaps.values()) < IDENTITY_TOLERANCE and gain >= MIN_GAIN

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(means), list(means.values()), yerr=list(sems.values()), capsize=4,
           color=["#999", "#2a7", "#68c"])
    ax.set_ylabel("test accuracy on digits 5–9")
    ax.set_ylim(max(0.0, min(means.values()) - 0.1), 1.0)
    ax.set_title(f"Fine-tuning with {config.shots_per_class} shots/class "
                 f"({config.seeds} seeds)")
    fig.tight_layout()

    metrics: dict[str, float] = {
        "identity_gap_sgd": gaps["sgd"], "identity_gap_adam": gaps["adam"],
        **{f"acc_{k.replace(' ', '_')}": v for k, v in means.items()},
        **{f"sem_{k.replace(' ', '_')}": v for k, v in sems.items()},
        "finetune_gain_over_head_only": gain,
        "decay_minus_uniform": float(diff.mean()),
        "decay_minus_uniform_sem": _sem(diff),
    }
    table = Table(
        caption=(f"test accuracy on digits 5–9 after fine-tuning on {config.shots_per_class} "
                 "shots per class, per pretraining seed"),
        columns=("strategy", *(f"seed {s}" for s in range(config.seeds)), "mean", "sem"),
        rows=tuple((k, *acc[k], means[k], sems[k]) for k in STRATEGIES),
    )
    return Result(
        metrics=metrics,
        holds=holds,
        summary=(prefix + f"identity gap SGD {gaps['sgd']:.1e}, Adam {gaps['adam']:.1e}; "
                 "accuracy " + ", ".join(f"{k} {v:.3f}±{sems[k]:.3f}" for k, v in means.items())
                 + f"; fine-tuning gain over head only {gain:+.3f}; layer decay − uniform "
                 f"{metrics['decay_minus_uniform']:+.3f}±{metrics['decay_minus_uniform_sem']:.3f}"),
        figures={"layerwise_finetune": fig},
        tables=(table,),
    )


QUICK = Config()
EXPERIMENT = Experiment(
    name="layerwise_lr",
    title="Layer-wise learning rates and the θ = λ·φ identity (sklearn digits)",
    note="https://kexue.fm/archives/6418",
    claim=("θ = λ·φ reproduces per-layer learning rates λ²α (SGD) / λα (Adam) to float64 "
           "precision; fine-tuning the pretrained layers (uniform or layer-decayed LR) beats "
           "freezing them"),
    threshold=(f"identity gap < {IDENTITY_TOLERANCE:g} (SGD and Adam) and the worse of uniform "
               f"and layer-decay fine-tuning ≥ head-only accuracy + {MIN_GAIN:g}"),
    anchor=Anchor(
        number=("TREC-6 validation error 16.09 % with only the last layer fine-tuned, 6.86 % "
                "with the full model, 6.21 % with the full model and discriminative (layer-wise) "
                "learning rates"),
        source=("Howard & Ruder 2018, 'Universal Language Model Fine-tuning for Text "
                "Classification' (ULMFiT), Table 7, https://arxiv.org/abs/1801.06146"),
        data=("TREC-6 question classification; an AWD-LSTM language model pretrained on "
              "WikiText-103, its classifier fine-tuned on the task"),
        differs=("kexue: a 4-block residual MLP pretrained on sklearn digits 0–4 and fine-tuned "
                 "on 10 labelled examples per class of digits 5–9; test accuracy, not "
                 "validation error"),
    ),
    quick=QUICK,
    full=replace(QUICK, seeds=10, pretrain_epochs=20),
    run=run,
    control=control,
    devices=("cpu", "cuda"),
    precisions=("fp32", "bf16"),  # the fine-tuning; the θ = λ·φ identity stays in float64
)
