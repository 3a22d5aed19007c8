"""Optimisation dynamics made usable: modified flows, the path kernel, GAN games.

- :mod:`~kexue.dynamics.flow`: gradient descent against the gradient flow of L and of the
  modified loss L + (h/4)‖∇L‖² (scipy's ODE solvers); the training option that makes the
  implicit regulariser explicit is in :mod:`kexue.train.regularizers`.
- :mod:`~kexue.dynamics.path_kernel`: :class:`PathKernelRecorder` writes a model trained by
  any torch optimizer as f₀(x) + Σ of its steps, and (for SGD steps) as a sum over training
  examples, exactly (line integrals) or to first order (tangent kernel).
- :mod:`~kexue.dynamics.games`: two-player games as vector fields (the Dirac-GAN), their
  simultaneous / alternating / TTUR gradient dynamics, Jacobian eigenvalues, and the GAN
  regularisers R1, R2, WGAN-GP and consensus, which also apply to real ``nn.Module`` GANs.

References:
    https://kexue.fm/archives/7787, https://kexue.fm/archives/8009,
    https://kexue.fm/archives/6583
"""

from kexue.dynamics.flow import flow_error, gd_iterates, gradient_flow, modified_loss
from kexue.dynamics.games import (
    DIRAC_LOSSES,
    Game,
    alternating_gd,
    bilinear_game,
    consensus,
    consensus_penalty,
    dirac_gan,
    eigenvalues_at,
    gradient_penalty,
    jacobian,
    r1_penalty,
    r2_penalty,
    simultaneous_gd,
    with_penalty,
)
from kexue.dynamics.path_kernel import PathKernelRecorder, TopK

__all__ = [
    "DIRAC_LOSSES",
    "Game",
    "PathKernelRecorder",
    "TopK",
    "alternating_gd",
    "bilinear_game",
    "consensus",
    "consensus_penalty",
    "dirac_gan",
    "eigenvalues_at",
    "flow_error",
    "gd_iterates",
    "gradient_flow",
    "gradient_penalty",
    "jacobian",
    "modified_loss",
    "r1_penalty",
    "r2_penalty",
    "simultaneous_gd",
    "with_penalty",
]
