"""Gradient descent as a discretised flow: the plain and the modified (implicitly regularised) flow.

Gradient descent with step h, θ_{n+1} = θ_n − h ∇L(θ_n), is the Euler discretisation of the
gradient flow dθ/dt = −∇L(θ), so θ_n = θ(nh) + O(h) at a fixed time T = nh. Backward error
analysis finds the flow that GD follows one order more closely: matching the h² term of one
Euler step with the Taylor expansion of a flow dθ/dt = −∇L − h f₁ gives f₁ = ½ H∇L = ¼ ∇‖∇L‖²,
so GD follows, with global error O(h²), the gradient flow of the modified loss

    L̃(θ) = L(θ) + (h/4) ‖∇L(θ)‖²

— an implicit penalty on the gradient norm that grows with the step. This module integrates
both flows for a loss over a flat float64 parameter vector (``scipy.integrate.solve_ivp``,
gradients and Hessian-vector products from ``torch.func``) so the statements can be checked:

    errors = flow_error(gd_iterates(loss, theta0, h, n), loss, h)                    # O(h)
    errors = flow_error(gd_iterates(loss, theta0, h, n), modified_loss(loss, h), h)  # O(h²)

References:
    https://kexue.fm/archives/7787 (从动力学角度看优化算法（五）：为什么学习率不宜过小？)
    Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    Hairer, Lubich & Wanner, "Geometric Numerical Integration", ch. IX (backward error analysis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kexue._checks import check_int, check_real

__all__ = ["flow_error", "gd_iterates", "gradient_flow", "modified_loss"]

LossFn = Callable[[Tensor], Tensor]
F64 = torch.float64


def _vector(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 1 or not value.is_floating_point():
        got = (f"shape {tuple(value.shape)}, dtype {value.dtype}" if isinstance(value, Tensor)
               else type(value).__name__)
        raise ValueError(f"{name} must be a 1-D floating-point tensor (a flat parameter "
                         f"vector), got {got}")
    return value.detach().to(device="cpu", dtype=F64)  # integrated on the CPU (NumPy/SciPy)


def modified_loss(loss: LossFn, h: float) -> LossFn:
    """The first-order modified loss of gradient descent with step h.

        L̃(θ) = L(θ) + (h/4) ‖∇L(θ)‖²,    ∇L̃(θ) = ∇L(θ) + (h/2) H(θ) ∇L(θ)

    GD with step h on L follows the gradient flow of L̃ with global error O(h²) at fixed time.
    The returned function is built with ``torch.func.grad``, so it can itself be differentiated
    (``torch.func.grad(modified_loss(loss, h))`` computes the HVP by double backprop).

    Args:
        loss: ``loss(θ) -> scalar`` for a flat parameter vector θ, written with torch ops
            (``torch.func`` transforms it).
        h: the GD step size, > 0.

    Returns:
        ``θ -> L̃(θ)``.

    Raises:
        ValueError: for h ≤ 0 or non-finite.

    References:
        https://kexue.fm/archives/7787
        Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    h = check_real("h", h, low=0, low_open=True)
    grad = torch.func.grad(loss)

    def tilde(theta: Tensor) -> Tensor:
        g = grad(theta)
        return loss(theta) + (h / 4) * torch.dot(g, g)

    return tilde


def gradient_flow(
    loss: LossFn,
    theta0: Tensor,
    times: Sequence[float] | Tensor,
    *,
    method: str = "DOP853",
    rtol: float = 1e-12,
    atol: float = 1e-12,
) -> Tensor:
    """Solve the gradient flow dθ/dt = −∇L(θ), θ(0) = θ₀, and return θ at the given times.

    Integrated in float64 by ``scipy.integrate.solve_ivp`` (default: the 8th-order
    Dormand–Prince pair with tolerances 1e-12, so for the smooth losses this is meant for the
    solver's error is far below the O(h²) effects being measured); ∇L comes from
    ``torch.func.grad``. Pass ``modified_loss(loss, h)`` for the modified flow. The flow is
    integrated on the CPU: θ₀ is copied there (from any device) and the result is a CPU
    tensor, so ``loss`` must accept a CPU float64 vector.

    Args:
        loss: ``loss(θ) -> scalar`` for a flat parameter vector θ (evaluated in float64).
        theta0: θ₀, shape (d,).
        times: non-decreasing times t ≥ 0 at which to report θ(t); repeated times give
            repeated rows.
        method: any explicit or implicit ``solve_ivp`` method name.
        rtol: relative tolerance of the solver, a finite number > 0.
        atol: absolute tolerance of the solver, a finite number >= 0.

    Returns:
        θ(t) for each t, float64 on the CPU, shape (len(times), d).

    Raises:
        ValueError: for θ₀ not a 1-D float tensor, times empty, negative, non-finite or
            decreasing, or a tolerance out of range.
        RuntimeError: when the solver fails (e.g. the flow blows up).

    References:
        https://kexue.fm/archives/7787
    """
    from scipy.integrate import solve_ivp  # only here: the rest of kexue.dynamics needs no scipy

    rtol = check_real("rtol", rtol, low=0, low_open=True)
    atol = check_real("atol", atol, low=0)
    y0 = _vector("theta0", theta0)
    t = np.asarray(times.detach().cpu() if isinstance(times, Tensor) else times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or t[0] < 0 \
            or np.any(np.diff(t) < 0):
        raise ValueError(f"times must be a non-empty, non-decreasing sequence of finite "
                         f"times >= 0, got {times!r}")
    end = float(t[-1])
    if end == 0.0:
        return y0.expand(t.size, -1).clone()  # (len(times), d)
    grad = torch.func.grad(loss)

    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        return -grad(torch.from_numpy(y)).numpy()

    # solve_ivp wants strictly increasing t_eval: solve at the distinct times, expand back.
    unique, inverse = np.unique(t, return_inverse=True)
    sol = solve_ivp(rhs, (0.0, end), y0.numpy(), method=method, t_eval=unique, rtol=rtol,
                    atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp ({method}) failed before t = {end}: {sol.message}")
    return torch.from_numpy(sol.y.T[inverse.reshape(-1)].copy())  # (len(times), d)


def gd_iterates(loss: LossFn, theta0: Tensor, h: float, steps: int) -> Tensor:
    """Gradient descent θ_{n+1} = θ_n − h ∇L(θ_n) in float64, all iterates.

    Args:
        loss: ``loss(θ) -> scalar`` for a flat parameter vector θ.
        theta0: θ₀, shape (d,).
        h: step size > 0.
        steps: number of steps n ≥ 0.

    Returns:
        θ_0, …, θ_n, float64 on the CPU, shape (steps + 1, d); θ_k approximates the flow at
        time k·h.

    Raises:
        ValueError: for h ≤ 0 or non-finite, steps not an int ≥ 0, or θ₀ not a 1-D float
            tensor.

    References:
        https://kexue.fm/archives/7787
    """
    h = check_real("h", h, low=0, low_open=True)
    steps = check_int("steps", steps, low=0)
    theta = _vector("theta0", theta0)
    grad = torch.func.grad(loss)
    out = [theta]
    for _ in range(steps):
        theta = theta - h * grad(theta)
        out.append(theta)
    return torch.stack(out)  # (steps + 1, d)


def flow_error(
    iterates: Tensor,
    loss: LossFn,
    h: float,
    **solver: Any,
) -> Tensor:
    """Distance of a discrete trajectory from the gradient flow of ``loss`` at times t = n·h.

        e_n = ‖θ_n − θ(nh)‖₂,   θ(0) = θ_0 (the first iterate)

    For GD: against ``loss`` the error at fixed T = nh is O(h); against
    ``modified_loss(loss, h)`` it is O(h²). For the explicit midpoint step (see
    :func:`kexue.train.regularizers.midpoint_backward`) it is O(h²) against ``loss`` itself.

    Args:
        iterates: θ_0, …, θ_n with step h, shape (n + 1, d).
        loss: the loss whose flow is the reference.
        h: the step size of the iterates, > 0.
        **solver: ``method``, ``rtol``, ``atol`` passed on to :func:`gradient_flow`.

    Returns:
        e_0, …, e_n, float64 on the CPU, shape (n + 1,).

    Raises:
        ValueError: for h ≤ 0 or iterates not of shape (n + 1, d).

    References:
        https://kexue.fm/archives/7787
        Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    h = check_real("h", h, low=0, low_open=True)
    if not isinstance(iterates, Tensor) or iterates.dim() != 2 or iterates.shape[0] == 0:
        got = tuple(iterates.shape) if isinstance(iterates, Tensor) else type(iterates).__name__
        raise ValueError(f"iterates must be a tensor of shape (n + 1, d), got {got}")
    iterates = iterates.detach().to(device="cpu", dtype=F64)
    times = h * np.arange(iterates.shape[0], dtype=np.float64)
    flow = gradient_flow(loss, iterates[0], times, **solver)  # (n + 1, d)
    return torch.linalg.vector_norm(iterates - flow, dim=1)
