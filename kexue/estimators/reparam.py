"""Reparameterised samplers: Gaussian, Gumbel-max, Gumbel-softmax and straight-through.

The reparameterisation trick writes a sample as a differentiable function of the parameters
and of parameter-free noise, z = g_θ(ε), so that

    ∇_θ E_{z∼p_θ}[f(z)] = E_{ε∼q}[∇_θ f(g_θ(ε))]

is estimated by backpropagating through one sample. For a Gaussian g_θ(ε) = μ + σ⊙ε; for a
categorical distribution the Gumbel-max trick z = argmax_i (log p_i + g_i), g_i ∼ Gumbel(0, 1),
is exact but not differentiable, and Gumbel-softmax relaxes it to softmax((log p + g)/τ).

Randomness comes only through ``generator`` (torch's default generator when it is None); two
calls with equally seeded generators return the same sample. A generator must have the device
type of the tensors it draws for (a CPU generator for CPU tensors, a CUDA one for CUDA tensors);
a mismatch raises ``ValueError``. Validation of tensor values
(finiteness, positivity) synchronises with the host once per call.

References:
    https://kexue.fm/archives/6705 (漫谈重参数:从正态分布到Gumbel Softmax)
    Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    Maddison, Mnih & Teh, "The Concrete Distribution: A Continuous Relaxation of Discrete
    Random Variables", ICLR 2017.
    Bengio, Léonard & Courville, "Estimating or Propagating Gradients Through Stochastic
    Neurons for Conditional Computation", 2013 (straight-through).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from kexue._checks import (
    check_float_tensor,
    check_generator,
    check_int,
    check_real,
    check_size,
)

__all__ = [
    "gaussian_rsample",
    "gumbel_max",
    "gumbel_noise",
    "gumbel_softmax",
    "straight_through",
    "straight_through_round",
    "straight_through_sign",
]

_HALF = (torch.float16, torch.bfloat16)


def _dim(name: str, t: Tensor, dim: int) -> int:
    if t.ndim == 0:
        raise ValueError(f"{name} must have at least one dim, got {name}.shape=()")
    return check_int("dim", dim, low=-t.ndim, high=t.ndim - 1) % t.ndim


# -- Gaussian --------------------------------------------------------------------------------


def gaussian_rsample(
    mean: Tensor,
    std: Tensor | float | None = None,
    *,
    scale_tril: Tensor | None = None,
    sample_shape: int | Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reparameterised Gaussian sample, differentiable in ``mean`` and ``std``/``scale_tril``.

        z = μ + σ ⊙ ε              (diagonal: ``std`` = σ)
        z = μ + L ε                (full covariance Σ = L Lᵀ: ``scale_tril`` = L)
        ε ∼ N(0, I)

    Args:
        mean: μ. Diagonal form: any shape, broadcast with ``std``. Full form: (..., D).
        std: σ > 0, broadcastable with ``mean``; a tensor must have ``mean``'s dtype and device.
        scale_tril: L of shape (..., D, D), lower-triangular with a positive diagonal, with
            ``mean``'s dtype and device; its batch dims broadcast with ``mean``'s. Give exactly
            one of ``std``, ``scale_tril``.
        sample_shape: leading dims S of independent draws (an int or a sequence of ints).
        generator: source of ε, of ``mean``'s device type; torch's default generator when None.

    Returns:
        z of shape (*S, *batch) (diagonal) or (*S, *batch, D) (full), batch the broadcast shape.

    Raises:
        ValueError: if both or neither of ``std`` and ``scale_tril`` are given, for shapes that
            do not broadcast, non-finite inputs, σ ≤ 0, an L that is not lower-triangular
            with a positive diagonal, a ``std``/``scale_tril`` on another device than ``mean``,
            or a ``generator`` of another device type.

    References:
        https://kexue.fm/archives/6705
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """
    mean = check_float_tensor("mean", mean)
    if (std is None) == (scale_tril is None):
        raise ValueError("give exactly one of std (diagonal) and scale_tril (full covariance), "
                         f"got std={'None' if std is None else 'given'}, "
                         f"scale_tril={'None' if scale_tril is None else 'given'}")
    sample_shape = check_size("sample_shape", sample_shape)
    check_generator("generator", generator, mean.device)
    if std is not None:
        if isinstance(std, Tensor):
            check_float_tensor("std", std)
            if std.dtype != mean.dtype:
                raise ValueError(f"std must have mean's dtype {mean.dtype}, got {std.dtype}")
            if std.device != mean.device:
                raise ValueError(f"std must be on mean's device {mean.device}, got "
                                 f"{std.device}")
        else:
            std = check_real("std", std, low=0, low_open=True)
            std = torch.tensor(std, dtype=mean.dtype, device=mean.device)
        try:
            batch = torch.broadcast_shapes(mean.shape, std.shape)
        except RuntimeError:
            raise ValueError(f"std of shape {tuple(std.shape)} does not broadcast with mean of "
                             f"shape {tuple(mean.shape)}") from None
        finite_mean, finite_std, positive = torch.stack(
            [mean.isfinite().all(), std.isfinite().all(), (std > 0).all()]).tolist()
        if not finite_mean:
            raise ValueError("mean must be finite, got NaN or inf entries")
        if not (finite_std and positive):
            raise ValueError("std must be finite and > 0, got entries that are not")
        eps = torch.randn(sample_shape + batch, generator=generator, dtype=mean.dtype,
                          device=mean.device)
        return mean + std * eps  # (*S, *batch)

    L = check_float_tensor("scale_tril", scale_tril)
    if mean.ndim < 1 or L.ndim < 2 or L.shape[-1] != L.shape[-2] or L.shape[-1] != mean.shape[-1]:
        raise ValueError(f"scale_tril must have shape (..., D, D) and mean (..., D), got "
                         f"scale_tril {tuple(L.shape)}, mean {tuple(mean.shape)}")
    if L.dtype != mean.dtype:
        raise ValueError(f"scale_tril must have mean's dtype {mean.dtype}, got {L.dtype}")
    if L.device != mean.device:
        raise ValueError(f"scale_tril must be on mean's device {mean.device}, got {L.device}")
    try:
        batch = torch.broadcast_shapes(mean.shape[:-1], L.shape[:-2])
    except RuntimeError:
        raise ValueError(f"batch dims of scale_tril {tuple(L.shape[:-2])} and mean "
                         f"{tuple(mean.shape[:-1])} do not broadcast") from None
    d = mean.shape[-1]
    lt = L.detach()
    finite_mean, finite_l, lower, positive = torch.stack([
        mean.isfinite().all(), lt.isfinite().all(), (torch.triu(lt, 1) == 0).all(),
        (torch.diagonal(lt, dim1=-2, dim2=-1) > 0).all()]).tolist()
    if not finite_mean:
        raise ValueError("mean must be finite, got NaN or inf entries")
    if not finite_l:
        raise ValueError("scale_tril must be finite, got NaN or inf entries")
    if not (lower and positive):
        raise ValueError("scale_tril must be lower-triangular with a positive diagonal "
                         "(a Cholesky factor), got one that is not")
    eps = torch.randn(sample_shape + batch + (d,), generator=generator, dtype=mean.dtype,
                      device=mean.device)  # (*S, *batch, D)
    return mean + (L @ eps.unsqueeze(-1)).squeeze(-1)  # (*S, *batch, D)


# -- Gumbel ----------------------------------------------------------------------------------


def _gumbel_from_uniform(u: Tensor) -> Tensor:
    """g = −log(−log u) with u clamped into the open interval (0, 1) of its dtype."""
    info = torch.finfo(u.dtype)
    u = u.clamp(info.tiny, 1.0 - info.eps / 2)  # 1 − eps/2: the largest float below 1
    return -torch.log(-torch.log(u))


def gumbel_noise(
    shape: int | Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel noise g = −log(−log u), u ∼ U(0, 1), always finite.

    u is drawn in float32 (float64 for a float64 ``dtype``) and clamped to [tiny, 1 − eps/2],
    so log 0 never occurs: every g lies in about [−4.5, 16.7] (float32) or [−6.6, 36.7]
    (float64) and casts to float16/bfloat16 without overflow.

    Args:
        shape: output shape.
        dtype: floating-point output dtype.
        device: output device; the generator's device when None and a generator is given.
        generator: source of u, of ``device``'s type; torch's default generator when None.

    Returns:
        g of the given shape, dtype and device.

    Raises:
        ValueError: for a non-floating ``dtype``, a bad ``shape``, or a ``generator`` whose
            device type is not ``device``'s.

    References:
        https://kexue.fm/archives/6705
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    shape = check_size("shape", shape)
    check_generator("generator", generator, device)
    if device is None and generator is not None:
        device = generator.device
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.rand(shape, generator=generator, dtype=draw, device=device)
    return _gumbel_from_uniform(u).to(dtype)


def _checked_logits(logits: Tensor, dim: int,
                    generator: torch.Generator | None) -> tuple[Tensor, int]:
    """Logits to work with (float32 for half types) and dim ≥ 0; rejects NaN, +inf, all −inf,
    and a generator of another device type (checked before any host synchronisation)."""
    logits = check_float_tensor("logits", logits)
    check_generator("generator", generator, logits.device)
    dim = _dim("logits", logits, dim)
    if logits.shape[dim] == 0:
        raise ValueError(f"logits must have at least one category along dim={dim}, got shape "
                         f"{tuple(logits.shape)}")
    x = logits.detach()
    bad, empty = torch.stack([(x.isnan() | (x == math.inf)).any(),
                              (x == -math.inf).all(dim).any()]).tolist()
    if bad:
        raise ValueError("logits must not contain NaN or +inf (use -inf to mask a category)")
    if empty:
        raise ValueError(f"logits are -inf for every category along dim={dim} somewhere; "
                         "at least one category must be allowed")
    return (logits.float() if logits.dtype in _HALF else logits), dim


def gumbel_max(
    logits: Tensor, *, dim: int = -1, generator: torch.Generator | None = None
) -> Tensor:
    """Exact categorical sample by the Gumbel-max trick.

        z = argmax_i (l_i + g_i),   g_i ∼ Gumbel(0, 1)   ⇒   P(z = i) = softmax(l)_i

    Args:
        logits: unnormalised log-probabilities l, categories along ``dim``; −inf masks a
            category (never sampled). Half-precision logits are perturbed in float32.
        dim: category dim.
        generator: source of the noise, of ``logits``' device type; torch's default generator
            when None.

    Returns:
        int64 indices of ``logits``' shape without ``dim``.

    Raises:
        ValueError: for non-floating logits, NaN or +inf logits, a category dim that is empty or
            entirely −inf, an invalid ``dim``, or a ``generator`` of another device type.

    References:
        https://kexue.fm/archives/6705
        Gumbel, "Statistical Theory of Extreme Values", 1954; Maddison et al., 2017.
    """
    work, dim = _checked_logits(logits, dim, generator)
    g = gumbel_noise(work.shape, dtype=work.dtype, device=work.device, generator=generator)
    return (work.detach() + g).argmax(dim)


def _tau(tau: float, dtype: torch.dtype) -> float:
    try:
        tau = check_real("tau", tau, low=torch.finfo(dtype).tiny)
    except ValueError:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}; for the τ → 0 limit "
                         "use gumbel_max or gumbel_softmax(..., hard=True)") from None
    return tau


def gumbel_softmax(
    logits: Tensor,
    tau: float,
    *,
    hard: bool = False,
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gumbel-softmax (Concrete) relaxed one-hot sample, differentiable in ``logits``.

        y = softmax((l + g) / τ),   g_i ∼ Gumbel(0, 1)

    As τ → 0, y tends to the one-hot of gumbel_max's z, computed here from the same g (so an
    equally seeded generator gives ``argmax y == gumbel_max(l)``). The max is subtracted before
    dividing by τ, so τ as small as 1e-4 gives no inf or NaN in value or gradient. With
    ``hard=True`` the forward value is exactly one_hot(argmax(l + g)) and the gradient is that of
    the soft y (straight-through Gumbel-softmax).

    Args:
        logits: unnormalised log-probabilities l, categories along ``dim``; −inf masks a
            category (probability exactly 0, gradient 0). Half precision is computed in float32.
        tau: temperature τ > 0.
        hard: return the straight-through one-hot instead of y.
        dim: category dim.
        generator: source of the noise, of ``logits``' device type; torch's default generator
            when None.

    Returns:
        y of ``logits``' shape and dtype; sums to 1 along ``dim``.

    Raises:
        ValueError: for τ ≤ 0 or non-finite τ (use ``gumbel_max`` or ``hard=True`` for τ → 0),
            and for logits that ``gumbel_max`` rejects.

    References:
        https://kexue.fm/archives/6705
        Jang et al., ICLR 2017; Maddison et al., ICLR 2017.
    """
    work, dim = _checked_logits(logits, dim, generator)
    tau = _tau(tau, work.dtype)
    g = gumbel_noise(work.shape, dtype=work.dtype, device=work.device, generator=generator)
    y = work + g
    shifted = y - y.detach().amax(dim, keepdim=True)  # ≤ 0, so /τ cannot overflow to +inf
    soft = torch.softmax(shifted / tau, dim).to(logits.dtype)
    if not hard:
        return soft
    index = y.detach().argmax(dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return straight_through(soft, one_hot)


# -- straight-through ------------------------------------------------------------------------


def straight_through(soft: Tensor, hard: Tensor) -> Tensor:
    """Forward value ``hard``, gradient that of ``soft`` (the straight-through estimator).

        out = hard + soft − stop_gradient(soft)

    computed as (soft − soft.detach()) + hard, whose value is exactly ``hard`` in floating
    point for finite ``soft``. ``hard`` is treated as a constant (detached) and cast to
    ``soft``'s dtype.

    Args:
        soft: differentiable surrogate, finite.
        hard: forward value, e.g. a one-hot, a rounded or a binarised tensor.

    Returns:
        A tensor equal to ``hard`` with ∂out/∂soft = I.

    Raises:
        ValueError: if the shapes differ.

    References:
        https://kexue.fm/archives/6705
        Bengio, Léonard & Courville, 2013.
    """
    soft = check_float_tensor("soft", soft)
    if not isinstance(hard, Tensor) or hard.shape != soft.shape:
        got = tuple(hard.shape) if isinstance(hard, Tensor) else type(hard).__name__
        raise ValueError(f"hard must be a tensor of soft's shape {tuple(soft.shape)}, got {got}")
    return (soft - soft.detach()) + hard.detach().to(soft.dtype)


def straight_through_round(x: Tensor) -> Tensor:
    """round(x) in the forward pass, identity gradient: straight_through(x, round(x))."""
    x = check_float_tensor("x", x)
    return straight_through(x, torch.round(x))


def straight_through_sign(x: Tensor) -> Tensor:
    """Binarisation to ±1 (0 ↦ +1) in the forward pass, identity gradient."""
    x = check_float_tensor("x", x)
    return straight_through(x, torch.where(x >= 0, 1.0, -1.0).to(x.dtype))
