"""Penalties you add to a GAN loss: R1, R2, the WGAN-GP gradient penalty and consensus.

Each function returns a scalar built with ``create_graph=True``; add it to the loss it
regularises and train through it. The sample-space penalties take any discriminator callable
``D(x) -> (B,)`` or ``(B, 1)`` (an ``nn.Module`` or a function of other tensors) and a batch of
samples, and penalise the gradient of D with respect to its input:

    R1   = γ/2 · E_{x∼p_data} ‖∇_x D(x)‖²                        (:func:`r1_penalty`)
    R2   = γ/2 · E_{x∼p_θ}    ‖∇_x D(x)‖²                        (:func:`r2_penalty`)
    GP_c = γ · E_x̂ (‖∇_x D(x̂)‖ − c)²,  x̂ = εx_real + (1 − ε)x_fake  (:func:`gradient_penalty`)

The consensus term penalises the players' own gradients, with ξ the simultaneous gradient:

    C = γ/2 · ‖ξ‖² = γ/2 · Σ_i ‖∇_{φ_i} L_i‖²                     (:func:`consensus_penalty`)

Why they help is read off the Dirac-GAN (:mod:`kexue.dynamics.games`): the unregularised field
rotates around its equilibrium (Jacobian eigenvalues ±i/2); R1 and R2 add γ/2 ψ² to the
discriminator's loss and move them to −γ/2 ± √(γ²/4 − 1/4), consensus to −γ/4 ± i/2; the
one-centred WGAN-GP keeps |ψ| near 1 and does not converge.

References:
    https://kexue.fm/archives/6583 (从动力学角度看优化算法(四):GAN的第三个阶段)
    Mescheder, Geiger & Nowozin, "Which Training Methods for GANs do actually Converge?", 2018.
    Gulrajani et al., "Improved Training of Wasserstein GANs", 2017 (WGAN-GP).
    Mescheder, Nowozin & Geiger, "The Numerics of GANs", 2017 (consensus optimisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from kexue._checks import check_float_tensor, check_generator, check_real

__all__ = ["consensus_penalty", "gradient_penalty", "r1_penalty", "r2_penalty"]

Discriminator = Callable[[Tensor], Tensor]


def _batch(name: str, x: Any) -> Tensor:
    x = check_float_tensor(name, x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, ...) with B >= 1, got shape "
                         f"{tuple(x.shape)}")
    return x


def _input_grads(discriminator: Discriminator, x: Tensor) -> Tensor:
    """∇_x D(x) for each sample, with a graph (create_graph=True), shape ``(B, -1)``."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = discriminator(x)
        batch = x.shape[0]
        if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != batch \
                or out.numel() != batch:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"discriminator must return one score per sample, shape ({batch},) "
                             f"or ({batch}, 1), got {got}")
        g = None
        if out.requires_grad:
            # Samples are independent, so ∇_x Σ_b D(x_b) holds each ∇_{x_b} D(x_b).
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)
    if g is None:
        raise ValueError("discriminator must return scores that depend on its input x, but "
                         "its graph does not reach x")
    return g.reshape(g.shape[0], -1)  # (B, prod(rest))


def r1_penalty(discriminator: Discriminator, real_x: Tensor, gamma: float) -> Tensor:
    """R1: γ/2 · E_{x∼p_data} ‖∇_x D(x)‖², a zero-centred penalty on real data.

    Add it to the discriminator's loss. For a linear D(x) = wᵀx + b it is γ/2 ‖w‖²; for the
    Dirac-GAN γ/2 ψ², which makes (0, 0) locally convergent for every γ > 0.

    Args:
        discriminator: ``D(x) -> (B,)`` or ``(B, 1)`` scores (an ``nn.Module`` or a function).
        real_x: real batch, shape ``(B, ...)``.
        gamma: weight γ ≥ 0.

    Returns:
        A scalar with a graph to the discriminator's parameters.

    Raises:
        ValueError: if γ < 0 or not finite, ``real_x`` is not a non-empty floating batch, or
            the discriminator does not return one score per sample that depends on x.

    References:
        https://kexue.fm/archives/6583
        Mescheder, Geiger & Nowozin, 2018, Sec. 4.1.
    """
    gamma = check_real("gamma", gamma, low=0)
    g = _input_grads(discriminator, _batch("real_x", real_x))  # (B, n)
    return 0.5 * gamma * g.pow(2).sum(dim=1).mean()


def r2_penalty(discriminator: Discriminator, fake_x: Tensor, gamma: float) -> Tensor:
    """R2: γ/2 · E_{x∼p_θ} ‖∇_x D(x)‖², the same penalty on generated samples.

    Pass ``fake_x.detach()`` in a discriminator step; a ``fake_x`` that requires grad is kept
    in the graph (then the penalty also depends on the generator).

    Args:
        discriminator: ``D(x) -> (B,)`` or ``(B, 1)``.
        fake_x: generated batch, shape ``(B, ...)``.
        gamma: weight γ ≥ 0.

    Returns:
        A scalar with a graph to the discriminator's parameters.

    Raises:
        ValueError: if γ < 0 or not finite, ``fake_x`` is not a non-empty floating batch, or
            the discriminator does not return one score per sample that depends on x.

    References:
        https://kexue.fm/archives/6583
        Mescheder, Geiger & Nowozin, 2018, Sec. 4.1.
    """
    gamma = check_real("gamma", gamma, low=0)
    g = _input_grads(discriminator, _batch("fake_x", fake_x))  # (B, n)
    return 0.5 * gamma * g.pow(2).sum(dim=1).mean()


def gradient_penalty(discriminator: Discriminator, real_x: Tensor, fake_x: Tensor, gamma: float,
                     center: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Gradient penalty on interpolates: γ · E_x̂ (‖∇_x D(x̂)‖ − c)².

    x̂ = ε x_real + (1 − ε) x_fake with one ε ∼ U(0, 1) per sample, drawn by
    ``torch.rand((B, 1, …, 1), generator=generator)`` on the generator's device and moved to
    the batch's. c = 1 is WGAN-GP's one-centred penalty (for the Dirac-GAN γ(|ψ| − 1)², which
    keeps |ψ| near 1 and so does not converge); c = 0 is a zero-centred penalty, computed from
    ‖∇D‖² directly so its gradient is defined at ∇D = 0.

    Args:
        discriminator: ``D(x) -> (B,)`` or ``(B, 1)``.
        real_x: real batch, shape ``(B, ...)``.
        fake_x: generated batch, same shape (pass ``.detach()`` in a discriminator step).
        gamma: weight γ ≥ 0.
        center: target norm c ≥ 0.
        generator: draws ε; None uses torch's global generator.

    Returns:
        A scalar with a graph to the discriminator's parameters.

    Raises:
        ValueError: if γ < 0 or c < 0 (or either is not finite), ``generator`` is not a
            ``torch.Generator``, the batches are not non-empty floating tensors of one shape,
            or the discriminator does not return one score per sample that depends on x.

    References:
        https://kexue.fm/archives/6583
        Gulrajani et al., "Improved Training of Wasserstein GANs", 2017.
    """
    gamma = check_real("gamma", gamma, low=0)
    center = check_real("center", center, low=0)
    generator = check_generator("generator", generator)
    real_x, fake_x = _batch("real_x", real_x), _batch("fake_x", fake_x)
    if real_x.shape != fake_x.shape:
        raise ValueError(f"fake_x must have the shape of real_x {tuple(real_x.shape)}, got "
                         f"{tuple(fake_x.shape)}")
    shape = (real_x.shape[0],) + (1,) * (real_x.ndim - 1)  # (B, 1, ..., 1)
    eps = torch.rand(shape, generator=generator, dtype=real_x.dtype,
                     device=generator.device if generator is not None else real_x.device)
    eps = eps.to(real_x.device)
    x_hat = eps * real_x + (1 - eps) * fake_x
    g = _input_grads(discriminator, x_hat)  # (B, n)
    if center == 0.0:
        return gamma * g.pow(2).sum(dim=1).mean()
    return gamma * (torch.linalg.vector_norm(g, dim=1) - center).pow(2).mean()


def consensus_penalty(losses: Sequence[Tensor], params: Sequence[Iterable[Tensor]],
                      gamma: float) -> Tensor:
    """Consensus term γ · ½ Σ_i ‖∇_{φ_i} L_i‖², to be added to every player's loss.

    ``losses[i]`` is player i's loss and ``params[i]`` its parameters, so the gradients form
    the simultaneous gradient ξ; adding γ½‖ξ‖² to each L_i turns the field v = −ξ into
    v − γ∇½‖v‖² (the game transform :func:`kexue.dynamics.games.consensus`). The gradients are
    taken with ``create_graph=True``.

    Args:
        losses: one scalar loss per player (with graphs to the parameters).
        params: one iterable of tensors per player (e.g. ``G.parameters()``).
        gamma: weight γ ≥ 0.

    Returns:
        A scalar with a graph to all the parameters.

    Raises:
        ValueError: if γ < 0 or not finite, the lengths differ or are zero, a player has no
            parameters, a loss is not a scalar tensor, or a loss does not depend on its
            player's parameters (tensors without requires_grad, e.g. frozen layers, are
            skipped).

    References:
        https://kexue.fm/archives/6583
        Mescheder, Nowozin & Geiger, "The Numerics of GANs", 2017.
    """
    gamma = check_real("gamma", gamma, low=0)
    params = [list(p) if not isinstance(p, Tensor) else [p] for p in params]
    if len(losses) != len(params) or not losses:
        raise ValueError(f"losses and params must be non-empty and of one length, got "
                         f"{len(losses)} losses and {len(params)} parameter groups")
    total = None
    for i, (loss, ps) in enumerate(zip(losses, params, strict=True)):
        if not ps:
            raise ValueError(f"params[{i}] must hold at least one tensor, got none")
        ps = [p for p in ps if p.requires_grad]  # frozen tensors have no gradient to penalise
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"losses[{i}] must be a scalar tensor, got {got}")
        grads = None
        if loss.requires_grad and ps:
            grads = torch.autograd.grad(loss.reshape(()), ps, create_graph=True,
                                        allow_unused=True)
        if grads is None or all(g is None for g in grads):
            raise ValueError(f"losses[{i}] must depend on params[{i}], but its graph does not "
                             f"reach them")
        sq = sum(g.pow(2).sum() for g in grads if g is not None)
        total = sq if total is None else total + sq
    return 0.5 * gamma * total
