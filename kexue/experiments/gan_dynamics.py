"""Claim: the Dirac-GAN does not converge under gradient descent unless it is regularised.

The Dirac-GAN (generator δ_θ, data δ_0, discriminator D_ψ(x) = ψx) trained by simultaneous
gradient descent from (θ, ψ) = (1, 1): unregularised, with a one-centred (WGAN-GP-style)
gradient penalty, with R1 at two strengths, with consensus optimisation, alternating updates,
and TTUR with R1. The eigenvalues of the field's Jacobian at the equilibrium explain each
outcome: purely imaginary (±i/2) without regularisation, negative real parts with R1.
Note: https://kexue.fm/archives/6583
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from kexue.dynamics.games import (
    alternating_gd,
    consensus,
    dirac_gan,
    eigenvalues_at,
    simultaneous_gd,
)

NAME = "gan_dynamics"
TITLE = "GAN training as a dynamical system: the Dirac-GAN under each regulariser"
NOTE = "https://kexue.fm/archives/6583"
CLAIM = (
    "after 500 steps of size 0.2 from (1, 1): unregularised and one-centred-penalty training "
    "stay ≥ 0.5 from equilibrium; R1 with γ = 0.3 ends within 1e-4, γ = 1 within 1e-12, "
    "consensus within 1e-8; the unregularised Jacobian's eigenvalues are ±i/2"
)
QUICK: dict[str, Any] = {"steps": 500, "lr": 0.2, "start": [1.0, 1.0]}
FULL: dict[str, Any] = dict(QUICK)


def _methods(lr: float) -> dict[str, tuple[Any, dict[str, Any]]]:
    """label -> (runner, keyword arguments) for the Dirac-GAN with the standard GAN loss."""
    return {
        "unregularised": (simultaneous_gd, {"game": dirac_gan(), "lr": lr}),
        "alternating": (alternating_gd, {"game": dirac_gan(), "lr": lr}),
        "one-centred GP γ=1": (simultaneous_gd,
                               {"game": dirac_gan(penalty="gp", gamma=1.0), "lr": lr}),
        "R1 γ=0.3": (simultaneous_gd, {"game": dirac_gan(penalty="r1", gamma=0.3), "lr": lr}),
        "R1 γ=1": (simultaneous_gd, {"game": dirac_gan(penalty="r1", gamma=1.0), "lr": lr}),
        "consensus γ=1": (simultaneous_gd, {"game": consensus(dirac_gan(), 1.0), "lr": lr}),
        "TTUR + R1 γ=1": (simultaneous_gd, {"game": dirac_gan(penalty="r1", gamma=1.0),
                                            "lr_g": lr / 2, "lr_d": 2 * lr}),
    }


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    del seed  # deterministic: no randomness in these dynamics
    start = torch.tensor(config["start"], dtype=torch.float64)
    paths: dict[str, np.ndarray] = {}
    for label, (runner, kwargs) in _methods(config["lr"]).items():
        paths[label] = runner(phi0=start, steps=config["steps"], **kwargs).numpy()
    distance = {label: float(np.linalg.norm(p[-1])) for label, p in paths.items()}
    origin = torch.zeros(2, dtype=torch.float64)
    eig_plain = eigenvalues_at(dirac_gan(), origin)
    eig_r1 = eigenvalues_at(dirac_gan(penalty="r1", gamma=0.3), origin)
    eig_ok = torch.allclose(eig_plain.real, torch.zeros(2, dtype=torch.float64), atol=1e-12) \
        and torch.allclose(eig_plain.imag.abs(), torch.full((2,), 0.5, dtype=torch.float64),
                           atol=1e-12)
    holds = (distance["unregularised"] >= 0.5 and distance["one-centred GP γ=1"] >= 0.5
             and distance["R1 γ=0.3"] < 1e-4 and distance["R1 γ=1"] < 1e-12
             and distance["consensus γ=1"] < 1e-8 and bool(eig_ok))

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for label, p in paths.items():
        axes[0].plot(p[:, 0], p[:, 1], lw=1, label=f"{label}: ‖φ‖ = {distance[label]:.2g}")
        axes[1].semilogy(np.maximum(np.linalg.norm(p, axis=1), 1e-30), label=label)
    axes[0].plot(*config["start"], "ko")
    axes[0].plot(0, 0, "r*", ms=12)
    axes[0].set_xlabel("θ (generator)")
    axes[0].set_ylabel("ψ (discriminator)")
    axes[0].set_title(f"Dirac-GAN, {config['steps']} steps of size {config['lr']}")
    axes[0].legend(fontsize=7)
    axes[0].set_aspect("equal", adjustable="datalim")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("distance to equilibrium")
    axes[1].set_title(f"eigenvalues at 0: plain {_fmt(eig_plain)}; R1 γ=0.3 {_fmt(eig_r1)}",
                      fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()

    return {
        "metrics": {f"distance_{k}".replace(" ", "_"): v for k, v in distance.items()},
        "claim_holds": holds,
        "summary": ", ".join(f"{k} {v:.2g}" for k, v in distance.items()),
        "figures": {"dirac_gan": fig},
    }


def _fmt(eigs: torch.Tensor) -> str:
    return ", ".join(f"{z.real:+.3g}{z.imag:+.3g}i" for z in eigs.tolist())
