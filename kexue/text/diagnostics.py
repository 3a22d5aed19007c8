"""Convergence diagnostics of Markov chains run side by side: split R-hat and effective sample size.

For M chains of N draws of a scalar (for the samplers of :mod:`kexue.text.sampling`, the energy
−log π(x) of the current state), with chain means x̄_m, chain variances s_m² and the grand mean
x̄::

    W = (1/M) Σ_m s_m²,   B/N = 1/(M−1) Σ_m (x̄_m − x̄)²,   var⁺ = (N−1)/N · W + B/N,
    R̂ = sqrt(var⁺ / W)                                          (Gelman & Rubin 1992)

computed on *split* chains (each chain cut in two halves, so that a trend inside one chain shows
up as disagreement between its halves). The rank-normalised version of Vehtari et al. (2021)
replaces the draws by z = Φ⁻¹((r − 3/8)/(MN + 1/4)) of their pooled ranks r (ties share their
mean rank) and takes the larger R̂ of z and of the folded draws |x − median(x)|, so that heavy
tails, discrete values and chains that differ only in spread are caught too.

The effective sample size divides the number of draws by the integrated autocorrelation time::

    ρ̂_t = 1 − (W − (1/M) Σ_m s_m² ρ̂_{t,m}) / var⁺,        ESS = MN / τ̂,
    τ̂   = −1 + 2 Σ_{k<K} (ρ̂_{2k} + ρ̂_{2k+1}),

with ρ̂_{t,m} the autocorrelation of chain m at lag t and the sum cut by Geyer's initial
monotone sequence (the pair sums are kept while positive, and made non-increasing). For an
AR(1) chain x_t = ρ x_{t−1} + ε_t, τ = (1 + ρ)/(1 − ρ).

References:
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(二)从MCMC到模拟退火)
    Gelman & Rubin, "Inference from iterative simulation using multiple sequences", 1992.
    Geyer, "Practical Markov chain Monte Carlo", 1992.
    Vehtari, Gelman, Simpson, Carpenter & Bürkner, "Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 2021.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ess", "split_rhat"]


def _draws(draws: np.ndarray) -> np.ndarray:
    """(M, N) float64 draws, checked: finite, at least 4 per chain (two per half)."""
    x = np.asarray(draws, np.float64)
    if x.ndim == 1:
        x = x[None, :]  # one chain
    if x.ndim != 2:
        raise ValueError(f"draws must have shape (chains, draws) or (draws,), got {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 4:
        raise ValueError(f"draws must hold at least one chain of at least 4 draws (two per "
                         f"half-chain), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("draws must be finite, got NaN or inf")
    return x


def _split(x: np.ndarray) -> np.ndarray:
    """(M, N) -> (2M, N // 2): the first and the last N // 2 draws of every chain."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]])


def _rank_normal(x: np.ndarray) -> np.ndarray:
    """z = Φ⁻¹((r − 3/8)/(S + 1/4)) of the pooled average ranks r of ``x`` (S values)."""
    values, inverse, counts = np.unique(x.reshape(-1), return_inverse=True, return_counts=True)
    before = np.cumsum(counts) - counts  # values strictly below
    ranks = (before + (counts + 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
    p = (ranks - 0.375) / (x.size + 0.25)
    return torch.special.ndtri(torch.from_numpy(p)).numpy().reshape(x.shape)


def _rhat(x: np.ndarray) -> float:
    """Gelman–Rubin R̂ of chains (M, N), not split."""
    n = x.shape[1]
    w = float(np.mean(np.var(x, axis=1, ddof=1)))
    b_over_n = float(np.var(np.mean(x, axis=1), ddof=1)) if x.shape[0] > 1 else 0.0
    var_plus = (n - 1) / n * w + b_over_n
    if w == 0.0:
        return math.nan if var_plus == 0.0 else math.inf
    return math.sqrt(var_plus / w)


def split_rhat(draws: np.ndarray, *, rank: bool = True) -> float:
    """Split R̂ of chains of a scalar (see the module docstring).

    Args:
        draws: (chains, draws) or one chain (draws,); at least 4 draws per chain.
        rank: Rank-normalise and fold (Vehtari et al. 2021) and return the larger R̂;
            ``False`` gives the classic split R̂ of the raw draws.

    Returns:
        R̂ ≥ 1 (about 1 when the chains agree; values above 1.01 mean: run longer). NaN if
        every draw is the same value.

    Raises:
        ValueError: If ``draws`` has the wrong shape, fewer than 4 draws per chain, or values
            that are not finite.
    """
    x = _split(_draws(draws))
    if not rank:
        return _rhat(x)
    folded = np.abs(x - np.median(x))
    bulk, tail = _rhat(_rank_normal(x)), _rhat(_rank_normal(folded))
    return max(bulk, tail) if not (math.isnan(bulk) or math.isnan(tail)) else math.nan


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of every chain at every lag, (M, N), by FFT."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()  # zero padding: no circular wrap-around
    spectrum = np.fft.rfft(centred, size, axis=1)
    return np.fft.irfft(spectrum * np.conj(spectrum), size, axis=1)[:, :n] / n


def ess(draws: np.ndarray, *, rank: bool = True) -> float:
    """Effective sample size of chains of a scalar (see the module docstring).

    Args:
        draws: (chains, draws) or one chain (draws,); at least 4 draws per chain.
        rank: Bulk ESS: of the rank-normalised split chains (Vehtari et al. 2021); ``False``
            uses the raw split chains.

    Returns:
        MN/τ̂ (at most MN·log10(MN)); NaN if every draw is the same value.

    Raises:
        ValueError: As :func:`split_rhat`.
    """
    x = _split(_draws(draws))
    if rank:
        x = _rank_normal(x)
    m, n = x.shape
    acov = _autocovariance(x)  # (M, N)
    chain_var = acov[:, 0] * n / (n - 1)  # s_m²
    w = float(np.mean(chain_var))
    b_over_n = float(np.var(x.mean(axis=1), ddof=1)) if m > 1 else 0.0
    var_plus = (n - 1) / n * w + b_over_n
    if var_plus == 0.0:
        return math.nan
    # s_m² ρ_{t,m} = acov_m(t) · N/(N−1)
    rho = 1.0 - (w - np.mean(acov, axis=0) * n / (n - 1)) / var_plus  # (N,), rho[0] = 1
    pairs = rho[: 2 * (n // 2)].reshape(-1, 2).sum(axis=1)  # P_k = ρ_2k + ρ_2k+1
    negative = np.flatnonzero(pairs < 0)
    pairs = pairs[: negative[0] if len(negative) else len(pairs)]  # initial positive sequence
    pairs = np.minimum.accumulate(pairs)  # initial monotone sequence
    total = m * n
    tau = max(-1.0 + 2.0 * float(np.sum(pairs)), 1.0 / math.log10(total))
    return total / tau
