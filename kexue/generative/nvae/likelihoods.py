"""Densities, divergences and bounds of NVAE: the residual normal KL, the discretised logistic
mixture of PixelCNN++, log-mean-exp for the importance-weighted bound, and KL balancing.

References:
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.
    Salimans et al., "PixelCNN++", ICLR 2017 (discretised logistic mixture).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kexue._checks import check_int, check_real

__all__ = [
    "LIKELIHOODS",
    "kl_balance_coefficients",
    "log_mean_exp",
    "logistic_mixture_log_prob",
    "normal_log_prob",
    "residual_normal_kl",
    "sample_logistic_mixture",
]

LIKELIHOODS = ("bernoulli", "logistic_mixture")
_LOG_2PI = math.log(2 * math.pi)


def uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) of ``like``'s shape and dtype on its device, drawn on ``generator``'s device
    (the CPU for the trainers' generators) and moved: a seed gives the same draws anywhere."""
    where = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, dtype=like.dtype,
                      device=where).to(like.device)


def standard_normal(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) of ``like``'s shape on its device, drawn as :func:`uniform` is; in float32 at
    least (a bf16 autocast region draws the same noise as full precision)."""
    where = generator.device if generator is not None else like.device
    dtype = torch.promote_types(like.dtype, torch.float32)
    return torch.randn(like.shape, generator=generator, dtype=dtype,
                       device=where).to(like.device)


def residual_normal_kl(delta_mu: Tensor, log_delta_sigma: Tensor, log_sigma_p: Tensor) -> Tensor:
    """KL(N(μ_p + Δμ, (σ_p Δσ)²) ‖ N(μ_p, σ_p²)) per dimension, in closed form.

        KL = ½ (Δμ²/σ_p² + Δσ² − 1 − log Δσ²)

    Args:
        delta_mu: Δμ, any shape.
        log_delta_sigma: log Δσ, broadcastable to ``delta_mu``.
        log_sigma_p: log σ_p of the prior, broadcastable to ``delta_mu``.

    Returns:
        The elementwise KL in nats (μ_p does not enter).

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, eq. (2).
    """
    return 0.5 * ((delta_mu * torch.exp(-log_sigma_p)) ** 2 + torch.exp(2 * log_delta_sigma)
                  - 1 - 2 * log_delta_sigma)


def normal_log_prob(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; μ, σ²) elementwise: −½ ((z − μ)/σ)² − log σ − ½ log 2π."""
    return -0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * _LOG_2PI


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log (1/K) Σ_k exp(x_k) along ``dim`` (K = x.shape[dim]), computed stably.

    Raises:
        ValueError: If ``dim`` is not an int indexing a dimension of ``x``.
    """
    dim = check_int("dim", dim, low=-x.ndim, high=x.ndim - 1)
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def _log1mexp(u: Tensor) -> Tensor:
    """log(1 − e^u) for u ≤ 0, accurate near 0 and for u → −∞."""
    return torch.where(u > -math.log(2), torch.log(-torch.expm1(u)), torch.log1p(-torch.exp(u)))


def _log_bin_mass(lo: Tensor, hi: Tensor, first: Tensor, last: Tensor) -> Tensor:
    """log(F(hi) − F(lo)) for the standard logistic CDF F = sigmoid, with open end bins.

    ``lo``/``hi`` are standardised bin edges; ``first`` (``last``) marks bins whose lower (upper)
    edge is −∞ (+∞). By symmetry F(hi) − F(lo) = F(−lo) − F(−hi), evaluated on the left tail,
    where log F(t) = −softplus(−t) has no cancellation.
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -lo, hi)  # upper edge of the mirrored bin
    b = torch.where(flip, -hi, lo)  # lower edge
    log_fa = -F.softplus(-a)
    log_fb = -F.softplus(-b)
    mid = log_fa + _log1mexp(torch.clamp(log_fb - log_fa, max=-1e-12))
    out = torch.where(first, -F.softplus(-hi), mid)   # F(hi)
    return torch.where(last, -F.softplus(lo), out)    # 1 − F(lo)


def logistic_mixture_log_prob(
    x: Tensor, logit_pi: Tensor, means: Tensor, log_scales: Tensor,
    coeffs: Tensor | None = None, bins: int = 256,
) -> Tensor:
    """Log-probability of pixels under a discretised logistic mixture (PixelCNN++ form).

    Pixel values are the ``bins`` levels k/(bins − 1) of [0, 1], mapped to y = 2x − 1 in [−1, 1];
    bin k of channel c is [y − δ, y + δ] with δ = 1/(bins − 1), the end bins open to ±∞. For
    component j with weight π_j, channels are coupled autoregressively within the pixel:

        m_1 = μ_1,  m_2 = μ_2 + a_j y_1,  m_3 = μ_3 + b_j y_1 + c_j y_2,
        P(x) = Σ_j π_j ∏_c [σ((y_c + δ − m_c)/s_c) − σ((y_c − δ − m_c)/s_c)],

    so the probabilities of the bins^C values of a pixel sum to 1.

    Args:
        x: (B, C, H, W) in [0, 1] (rounded to the nearest level).
        logit_pi: (B, K, H, W) unnormalised log mixture weights.
        means: (B, K, C, H, W) μ in [−1, 1] units.
        log_scales: (B, K, C, H, W) log s.
        coeffs: (B, K, 3, H, W) the coupling (a, b, c), required when C = 3, else ignored.
        bins: Levels per channel, ≥ 2 (256 for 8-bit images).

    Returns:
        (B, H, W) log P(pixel) in nats (joint over channels).

    Raises:
        ValueError: If ``bins`` is not an int ≥ 2, or C = 3 without ``coeffs``.

    References:
        https://kexue.fm/archives/7574; Salimans et al. 2017; Vahdat & Kautz 2020, §4.
    """
    bins = check_int("bins", bins, low=2)
    c = x.shape[1]
    if c == 3 and coeffs is None:
        raise ValueError("coeffs (B, K, 3, H, W) are required for C = 3 channels, got None")
    level = torch.round(x.clamp(0, 1) * (bins - 1))  # (B, C, H, W)
    y = (2 * level / (bins - 1) - 1).unsqueeze(1)     # (B, 1, C, H, W)
    m = _coupled_means(means, coeffs, y) if c == 3 else means
    inv_s = torch.exp(-log_scales.clamp(min=-7.0))
    delta = 1.0 / (bins - 1)
    lo, hi = (y - delta - m) * inv_s, (y + delta - m) * inv_s
    first, last = (level == 0).unsqueeze(1), (level == bins - 1).unsqueeze(1)
    log_p = _log_bin_mass(lo, hi, first.expand_as(lo), last.expand_as(lo)).sum(2)  # (B, K, H, W)
    return torch.logsumexp(log_p + F.log_softmax(logit_pi, dim=1), dim=1)


def _coupled_means(means: Tensor, coeffs: Tensor, y: Tensor) -> Tensor:
    """m_1 = μ_1, m_2 = μ_2 + a y_1, m_3 = μ_3 + b y_1 + c y_2; y is (B, 1 or K, 3, H, W)."""
    a, b, c = coeffs.tanh().unbind(2)  # each (B, K, H, W)
    y1, y2 = y[:, :, 0], y[:, :, 1]
    return torch.stack([means[:, :, 0], means[:, :, 1] + a * y1,
                        means[:, :, 2] + b * y1 + c * y2], dim=2)


def sample_logistic_mixture(
    logit_pi: Tensor, means: Tensor, log_scales: Tensor, coeffs: Tensor | None = None,
    bins: int = 256, generator: torch.Generator | None = None,
) -> Tensor:
    """Draw pixels from the mixture of :func:`logistic_mixture_log_prob` (same arguments).

    Returns:
        (B, C, H, W) values on the grid k/(bins − 1) in [0, 1].

    Raises:
        ValueError: If ``bins`` is not an int ≥ 2, or C = 3 without ``coeffs``.
    """
    bins = check_int("bins", bins, low=2)
    bsz, k, c, h, w = means.shape
    u = uniform(logit_pi, generator)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
    pick = (logit_pi + gumbel).argmax(1)  # (B, H, W)
    onehot = F.one_hot(pick, k).permute(0, 3, 1, 2).unsqueeze(2).to(means.dtype)  # (B, K, 1, H, W)
    mu = (means * onehot).sum(1)  # (B, C, H, W)
    s = torch.exp(log_scales.clamp(min=-7.0)) * onehot
    s = s.sum(1)
    u = uniform(mu, generator).clamp(1e-5, 1 - 1e-5)
    y = mu + s * (torch.log(u) - torch.log1p(-u))  # logistic noise
    if c == 3:
        if coeffs is None:
            raise ValueError("coeffs (B, K, 3, H, W) are required for C = 3 channels, got None")
        a, b, cc = ((coeffs.tanh() * onehot).sum(1)).unbind(1)  # each (B, H, W)
        y0 = y[:, 0].clamp(-1, 1)
        y1 = (y[:, 1] + a * y0).clamp(-1, 1)
        y2 = (y[:, 2] + b * y0 + cc * y1).clamp(-1, 1)
        y = torch.stack([y0, y1, y2], 1)
    level = torch.round((y.clamp(-1, 1) + 1) / 2 * (bins - 1))
    return level / (bins - 1)


def kl_balance_coefficients(kl: Tensor, group_sizes: Tensor, floor: float = 0.01) -> Tensor:
    """KL balancing coefficients γ_i ∝ (E_batch[KL_i] + floor) / α_i with mean 1 (no gradient).

    α_i = group_sizes_i / Σ_j group_sizes_j. A group carrying much KL per latent dimension gets
    a larger weight, which pushes information into the other groups and keeps them from
    collapsing while the KL warm-up is on.

    Args:
        kl: (B, G) KL of each group, summed over its dimensions.
        group_sizes: (G,) number of latent dimensions in each group.
        floor: Added to the mean KL so a collapsed group keeps a small weight, ≥ 0.

    Returns:
        (G,) coefficients, detached, mean 1.

    Raises:
        ValueError: If ``floor`` is not a finite number ≥ 0.

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, §3.2 / appendix A.
    """
    floor = check_real("floor", floor, low=0)
    alpha = group_sizes.to(kl) / group_sizes.sum()
    gamma = (kl.detach().abs().mean(0) + floor) / alpha
    return gamma / gamma.mean()
