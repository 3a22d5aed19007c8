"""GAN losses as functions of discriminator scores, and BigGAN's orthogonal regulariser.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    Brock, Donahue & Simonyan, 2019, Sec. 3.1 (orthogonal regularisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue._checks import check_real
from kexue.generative.common import raw_weight
from kexue.generative.gan.layers import main_path_layers

__all__ = ["LOSSES", "GANLoss", "orthogonal_penalty"]


@dataclass(frozen=True)
class GANLoss:
    """A GAN loss as two functions of discriminator scores, and its default gradient penalty.

    Attributes:
        d: ``d(real_scores, fake_scores) -> scalar`` minimised by D.
        g: ``g(fake_scores) -> scalar`` minimised by G.
        gp: Default weight ≥ 0 of the one-centred gradient penalty (WGAN-GP: 10), else 0.

    Raises:
        ValueError: If ``gp`` is not a finite number ≥ 0.
    """

    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]
    gp: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gp", check_real("gp", self.gp, low=0))


LOSSES: dict[str, GANLoss] = {
    # non-saturating: L_D = E softplus(−D(x)) + E softplus(D(G(z))), L_G = E softplus(−D(G(z)))
    "ns": GANLoss(lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
                  lambda f: F.softplus(-f).mean()),
    # hinge: L_D = E relu(1 − D(x)) + E relu(1 + D(G(z))), L_G = −E D(G(z))
    "hinge": GANLoss(lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
                     lambda f: -f.mean()),
    # Wasserstein with the gradient penalty γ E (‖∇D(x̂)‖ − 1)², γ = 10
    "wgan-gp": GANLoss(lambda r, f: f.mean() - r.mean(), lambda f: -f.mean(), gp=10.0),
}




def orthogonal_penalty(model: nn.Module, beta: float) -> Tensor:
    """BigGAN's orthogonal regularisation β Σ_W ‖WᵀW ⊙ (1 − I)‖²_F.

    W runs over the conv/linear weights of ``model`` outside norm layers, each as a matrix whose
    columns are the filters (the raw weight under spectral norm), so only the cosines between
    filters are penalised, not their norms.

    Args:
        model: Usually the generator.
        beta: Weight β ≥ 0 (BigGAN: 1e-4).

    Returns:
        A scalar with a graph to the weights.

    Raises:
        ValueError: If β < 0 or the model has no conv/linear layer.

    References:
        https://kexue.fm/archives/6549
        Brock, Donahue & Simonyan, 2019, Sec. 3.1.
    """
    beta = check_real("beta", beta, low=0)
    layers = main_path_layers(model)
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no conv or linear layer")
    total = None
    for layer in layers:
        w = raw_weight(layer)
        if isinstance(layer, nn.ConvTranspose2d):
            w = w.movedim(1, 0)
        w = w.reshape(w.shape[0], -1).T  # (fan_in, filters): the filters are the columns
        gram = w.T @ w  # (filters, filters)
        off = gram - torch.diag(torch.diagonal(gram))
        term = off.pow(2).sum()
        total = term if total is None else total + term
    return beta * total


