"""Optimisation dynamics made usable: modified flows, the path kernel, GAN games.

- :mod:`~kexue.dynamics.flow`: gradient descent against the gradient flow of L and of the
  modified loss L + (h/4)‖∇L‖² (scipy's ODE solvers); the training option that makes the
  implicit regulariser explicit is in :mod:`kexue.train.regularizers`.
- :mod:`~kexue.dynamics.path_kernel`: :class:`PathKernelRecorder` writes a model trained by
  any torch optimizer as f₀(x) + Σ of its steps, and (for SGD steps) as a sum over training
  examples, exactly (line integrals) or to first order (tangent kernel).
- :mod:`~kexue.dynamics.games`: two-player games as vector fields (the Dirac-GAN), their
  simultaneous / alternating / TTUR gradient dynamics and Jacobian eigenvalues. The GAN
  penalties R1, R2, WGAN-GP and consensus that regularise them (and real ``nn.Module`` GANs)
  are in :mod:`kexue.train.penalties`; their old names here still work and warn.

References:
    https://kexue.fm/archives/7787, https://kexue.fm/archives/8009,
    https://kexue.fm/archives/6583
"""

from kexue._deprecation import old_names
from kexue.dynamics.flow import flow_error, gd_iterates, gradient_flow, modified_loss
from kexue.dynamics.games import (
    DIRAC_LOSSES,
    Game,
    alternating_gd,
    bilinear_game,
    consensus,
    dirac_gan,
    eigenvalues_at,
    jacobian,
    simultaneous_gd,
    with_penalty,
)
from kexue.dynamics.path_kernel import PathKernelRecorder, TopK

# The four penalties moved to kexue.train.penalties; they stay in __all__ (a 0.1 name must
# survive ``from kexue.dynamics import *``) and are served with a DeprecationWarning.
_MOVED = ("consensus_penalty", "gradient_penalty", "r1_penalty", "r2_penalty")

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


__getattr__ = old_names(__name__, {name: f"kexue.train.penalties.{name}" for name in _MOVED},
                        also="kexue.train")
