"""Modified-flow tools: closed forms on a quadratic, and the convergence orders of gradient
descent against the plain flow (O(h)) and the modified flow L + (h/4)‖∇L‖² (O(h²))."""

from __future__ import annotations

import math

import pytest
import torch

from kexue.dynamics.flow import flow_error, gd_iterates, gradient_flow, modified_loss

F64 = torch.float64


def _quadratic():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    return a, (lambda theta: 0.5 * theta @ a @ theta)


def nonquadratic(theta: torch.Tensor) -> torch.Tensor:
    """½(θ₁θ₂ − 1)² + 0.05 sin(θ₁ + 2θ₂): a curved valley of minima, third derivatives ≠ 0."""
    return 0.5 * (theta[0] * theta[1] - 1) ** 2 + 0.05 * torch.sin(theta[0] + 2 * theta[1])


THETA0 = torch.tensor([1.5, 0.2], dtype=F64)


# -- closed forms --------------------------------------------------------------------------


def test_gradient_flow_of_quadratic_is_matrix_exponential():
    """dθ/dt = −Aθ  ⇒  θ(t) = exp(−tA) θ₀."""
    a, loss = _quadratic()
    times = [0.0, 0.3, 1.0, 2.5]
    out = gradient_flow(loss, THETA0, times)
    ref = torch.stack([torch.linalg.matrix_exp(-t * a) @ THETA0 for t in times])
    assert out.shape == (4, 2) and out.dtype == F64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_gd_iterates_of_quadratic_are_matrix_powers():
    """θ_n = (I − hA)^n θ₀."""
    a, loss = _quadratic()
    out = gd_iterates(loss, THETA0, 0.1, 7)
    step = torch.eye(2, dtype=F64) - 0.1 * a
    ref = torch.stack([torch.linalg.matrix_power(step, n) @ THETA0 for n in range(8)])
    assert out.shape == (8, 2)
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)


def test_modified_loss_of_quadratic():
    """L = ½θᵀAθ  ⇒  L̃ = ½θᵀAθ + (h/4)θᵀA²θ and ∇L̃ = (A + (h/2)A²)θ."""
    a, loss = _quadratic()
    h = 0.3
    tilde = modified_loss(loss, h)
    theta = torch.tensor([0.7, -1.2], dtype=F64)
    torch.testing.assert_close(tilde(theta), 0.5 * theta @ a @ theta
                               + h / 4 * theta @ a @ a @ theta, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.func.grad(tilde)(theta), (a + h / 2 * a @ a) @ theta,
                               rtol=1e-14, atol=1e-14)


def test_modified_flow_of_quadratic_is_matrix_exponential():
    a, loss = _quadratic()
    h = 0.2
    out = gradient_flow(modified_loss(loss, h), THETA0, [1.0])[0]
    ref = torch.linalg.matrix_exp(-(a + h / 2 * a @ a)) @ THETA0
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


# -- convergence orders --------------------------------------------------------------------


def test_gd_follows_plain_flow_to_first_order_and_modified_flow_to_second_order():
    """At T = 1: ‖θ_n − θ(nh)‖ halves with h (O(h)); against the flow of L + (h/4)‖∇L‖² it
    quarters (O(h²)). Measured ratios ≈ 2.02, 2.01 and 3.96, 3.98."""
    horizon = 1.0
    plain, modified = [], []
    for h in (0.04, 0.02, 0.01):
        iterates = gd_iterates(nonquadratic, THETA0, h, round(horizon / h))
        plain.append(flow_error(iterates, nonquadratic, h)[-1].item())
        modified.append(flow_error(iterates, modified_loss(nonquadratic, h), h)[-1].item())
    for coarse, fine in zip(plain, plain[1:]):
        assert 1.8 <= coarse / fine <= 2.2
    for coarse, fine in zip(modified, modified[1:]):
        assert 3.5 <= coarse / fine <= 4.5
    assert modified[-1] < plain[-1] / 30  # the O(h) error is the implicit term, not noise


def test_flow_error_starts_at_zero_and_has_one_entry_per_iterate():
    iterates = gd_iterates(nonquadratic, THETA0, 0.05, 4)
    err = flow_error(iterates, nonquadratic, 0.05)
    assert err.shape == (5,) and err[0] == 0 and bool((err[1:] > 0).all())


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0.0, -0.1, math.nan, math.inf, True])
def test_bad_step_size(h):
    with pytest.raises(ValueError, match="h must be a finite number > 0"):
        gd_iterates(nonquadratic, THETA0, h, 3)
    with pytest.raises(ValueError, match="h must be"):
        modified_loss(nonquadratic, h)
    with pytest.raises(ValueError, match="h must be"):
        flow_error(THETA0[None], nonquadratic, h)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1"):
        gd_iterates(nonquadratic, THETA0, 0.1, -1)
    with pytest.raises(ValueError, match="theta0 must be a 1-D"):
        gd_iterates(nonquadratic, THETA0[None], 0.1, 2)
    with pytest.raises(ValueError, match="times must be"):
        gradient_flow(nonquadratic, THETA0, [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="times must be"):
        gradient_flow(nonquadratic, THETA0, [-1.0])
    with pytest.raises(ValueError, match="iterates must be a tensor of shape"):
        flow_error(THETA0, nonquadratic, 0.1)


# -- repeated times and output device ------------------------------------------------------


def test_gradient_flow_supports_repeated_times():
    a, loss = _quadratic()
    times = [0.0, 0.5, 0.5, 1.0, 1.0]
    got = gradient_flow(loss, THETA0, times)
    want = torch.stack([torch.linalg.matrix_exp(-a * t) @ THETA0 for t in times])
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert torch.equal(got[1], got[2]) and torch.equal(got[3], got[4])
    with pytest.raises(ValueError, match="non-decreasing"):
        gradient_flow(loss, THETA0, [0.0, 1.0, 0.5])


def test_zero_times_branch_returns_a_cpu_float64_tensor():
    _, loss = _quadratic()
    out = gradient_flow(loss, THETA0.float(), [0.0, 0.0, 0.0])
    assert out.dtype == F64 and out.device.type == "cpu" and out.shape == (3, 2)
    torch.testing.assert_close(out, THETA0.float().to(F64).expand(3, -1))
    moved = gradient_flow(loss, THETA0.float(), [0.0, 0.25])
    assert moved.dtype == F64 and moved.device.type == "cpu"
    iterates = gd_iterates(loss, THETA0.float(), 0.1, 2)
    assert iterates.dtype == F64 and iterates.device.type == "cpu"
