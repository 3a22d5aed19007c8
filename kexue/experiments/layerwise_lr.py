"""Claims: (1) θ = λ·φ gives effective learning rate λ²α under SGD and λα under Adam;
(2) fine-tuning pretrained layers, rather than freezing them, pays (the note's motivation); the
layer-decay vs uniform difference is reported beside it with its standard error, not judged.

(1) trains the same MLP on real digits twice — once with explicit per-group learning rates from
``kexue.train.param_groups``, once reparameterised with ``scale_parametrize`` and one plain
learning rate — and measures how far apart the two trajectories end up (float64).
(2) pretrains a small residual tower on digits 0–4, then fine-tunes it on a few labelled
examples of digits 5–9 with a uniform learning rate, with layer-wise decay, and with a frozen
backbone (head only), and compares test accuracy on 5–9.
Note: https://kexue.fm/archives/6418
"""

from __future__ import annotations

import copy
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from kexue.experiments._common import batches, digits, evaluate
from kexue.train import param_groups, scale_parametrize

NAME = "layerwise_lr"
TITLE = "Layer-wise learning rates and the θ = λ·φ identity (sklearn digits)"
NOTE = "https://kexue.fm/archives/6418"
CLAIM = ("θ = λ·φ reproduces per-layer learning rates λ²α (SGD) / λα (Adam) to float64 "
         "precision; fine-tuning the pretrained layers (uniform or layer-decayed LR) beats "
         "freezing them")
QUICK: dict[str, Any] = {"identity_steps": 50, "lam": 3.0, "pretrain_epochs": 8,
                         "shots_per_class": 10, "finetune_steps": 150, "lr": 0.01,
                         "layer_decay": 0.75, "width": 64, "depth": 4, "seeds": 3}
FULL: dict[str, Any] = {**QUICK, "seeds": 10, "pretrain_epochs": 20}


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


def _identity_gap(config: dict[str, Any], seed: int, optimizer: str) -> float:
    """Max |θ_plain − θ_reparam| after training both ways in float64."""
    torch.manual_seed(seed)
    x, y, _, _ = digits(seed)
    x, lam, alpha = x.double(), config["lam"], 0.05 if optimizer == "sgd" else 1e-3
    plain = Tower(32, 2).double()
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
    for _ in range(config["identity_steps"]):
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


def _pretrain(config: dict[str, Any], seed: int, x, y) -> Tower:
    torch.manual_seed(seed)
    model = Tower(config["width"], config["depth"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config["pretrain_epochs"]):
        for idx in batches(len(x), 32, gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def _finetune(model: Tower, strategy: str, config: dict[str, Any], x, y, seed: int) -> Tower:
    model = copy.deepcopy(model)
    lr = config["lr"]
    if strategy == "uniform":
        groups = param_groups(model, lr, weight_decay=1e-4)
    elif strategy == "layer decay":
        groups = param_groups(model, lr, weight_decay=1e-4, layer_decay=config["layer_decay"])
    else:  # head only: every other parameter gets multiplier 0 (left out of the optimizer)
        groups = param_groups(model, lr, weight_decay=1e-4,
                              multipliers={"embed.*": 0.0, "blocks.*": 0.0, "norm.*": 0.0})
    opt = torch.optim.AdamW(groups)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config["finetune_steps"]):
        idx = torch.randint(len(x), (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


STRATEGIES = ("uniform", "layer decay", "head only")


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    gaps = {opt: _identity_gap(config, seed, opt) for opt in ("sgd", "adam")}

    x_tr, y_tr, x_te, y_te = digits(seed)
    old_tr, old_te = y_tr < 5, y_te < 5
    acc: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for s in range(config["seeds"]):
        base = _pretrain(config, seed * 1000 + s, x_tr[old_tr], y_tr[old_tr])
        gen = torch.Generator().manual_seed(seed * 1000 + s)
        shots = torch.cat([
            torch.nonzero(y_tr == c).flatten()[
                torch.randperm(int((y_tr == c).sum()), generator=gen)[:config["shots_per_class"]]]
            for c in range(5, 10)
        ])
        for strategy in STRATEGIES:
            tuned = _finetune(base, strategy, config, x_tr[shots], y_tr[shots], seed * 1000 + s)
            acc[strategy].append(evaluate(tuned, x_te[~old_te], y_te[~old_te])[1])

    means = {k: float(np.mean(v)) for k, v in acc.items()}
    sems = {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
            for k, v in acc.items()}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(means), list(means.values()), yerr=list(sems.values()), capsize=4,
           color=["#999", "#2a7", "#68c"])
    ax.set_ylabel("test accuracy on digits 5–9")
    ax.set_ylim(min(means.values()) - 0.1, 1.0)
    ax.set_title(f"Fine-tuning with {config['shots_per_class']} shots/class "
                 f"({config['seeds']} seeds)")
    fig.tight_layout()

    metrics = {"identity_gap_sgd": gaps["sgd"], "identity_gap_adam": gaps["adam"],
               **{f"acc_{k.replace(' ', '_')}": v for k, v in means.items()},
               **{f"sem_{k.replace(' ', '_')}": v for k, v in sems.items()}}
    holds = max(gaps.values()) < 1e-9 and \
        min(means["uniform"], means["layer decay"]) > means["head only"]
    diff = np.array(acc["layer decay"]) - np.array(acc["uniform"])  # paired by seed
    metrics["decay_minus_uniform"] = float(diff.mean())
    metrics["decay_minus_uniform_sem"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) \
        if len(diff) > 1 else 0.0
    return {
        "metrics": metrics,
        "claim_holds": bool(holds),
        "summary": (f"identity gap SGD {gaps['sgd']:.1e}, Adam {gaps['adam']:.1e}; accuracy "
                    + ", ".join(f"{k} {v:.3f}±{sems[k]:.3f}" for k, v in means.items())
                    + f"; layer decay − uniform {metrics['decay_minus_uniform']:+.3f}"
                    f"±{metrics['decay_minus_uniform_sem']:.3f}"),
        "figures": {"layerwise_finetune": fig},
    }
