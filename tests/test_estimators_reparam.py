"""Reparameterised samplers against exact answers: chi-square tests of Gumbel-max, the binary
Concrete CDF, closed-form Gaussian gradients (z-tests), straight-through identities, bad input.

Statistical tests run at fixed seeds; each declares its level: chi-square at α = 1e-3, z-tests at
|mean − exact| < 4 standard errors (two-sided rate ≈ 6e-5 per component)."""

from __future__ import annotations

import math

import pytest
import torch

from kexue.estimators.reparam import (
    _gumbel_from_uniform,
    gaussian_rsample,
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    straight_through,
    straight_through_round,
    straight_through_sign,
)

F64 = torch.float64
ALPHA = 1e-3  # chi-square level
Z = 4.0  # z-test threshold in standard errors


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of observed counts against probabilities (dof = K − 1)."""
    expected = counts.sum() * probs
    stat = ((counts - expected) ** 2 / expected).sum().item()
    dof = probs.numel() - 1
    try:
        from scipy.stats import chi2
    except ImportError:  # the regularised upper incomplete gamma Q(dof/2, stat/2) is the sf
        return torch.special.gammaincc(torch.tensor(dof / 2, dtype=F64),
                                       torch.tensor(stat / 2, dtype=F64)).item()
    return float(chi2.sf(stat, dof))


def _z_test(samples: torch.Tensor, exact: torch.Tensor) -> None:
    """Per-component z-test of the Monte-Carlo mean of samples (N, ...) against exact (...)."""
    n = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    err = (mean - exact).abs()
    assert (err <= Z * se + 1e-12).all(), f"mean {mean}, exact {exact}, se {se}"


# -- Gumbel-max ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
def test_gumbel_max_frequencies_match_softmax(dtype):
    n = 100_000
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.3], dtype=dtype)
    z = gumbel_max(logits.expand(n, 5), generator=_gen(1))
    assert z.dtype == torch.int64 and z.shape == (n,)
    counts = torch.bincount(z, minlength=5).to(F64)
    probs = torch.softmax(logits.to(F64), -1)
    assert _chi2_pvalue(counts, probs) > ALPHA
    # The same test has power: the counts reject the softmax of logits / 2.
    assert _chi2_pvalue(counts, torch.softmax(logits.to(F64) / 2, -1)) < 1e-12


def test_gumbel_max_masked_category_never_sampled_and_dim():
    n = 100_000
    logits = torch.tensor([1.0, -math.inf, 0.0, 0.5, -math.inf, 2.0], dtype=F64)
    z = gumbel_max(logits[:, None].expand(6, n), dim=0, generator=_gen(2))  # categories on dim 0
    assert z.shape == (n,)
    counts = torch.bincount(z, minlength=6).to(F64)
    assert counts[1] == 0 and counts[4] == 0
    keep = torch.tensor([0, 2, 3, 5])
    assert _chi2_pvalue(counts[keep], torch.softmax(logits[keep], -1)) > ALPHA


# -- Gumbel noise ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16])
def test_gumbel_noise_finite_and_moments(dtype):
    g = gumbel_noise((1_000_000,), dtype=dtype, generator=_gen(3))
    assert g.dtype == dtype and g.shape == (1_000_000,)
    assert torch.isfinite(g).all()
    # Gumbel(0, 1): mean = Euler's γ, variance = π²/6.
    _z_test(g.to(F64)[:, None], torch.tensor([0.5772156649015329], dtype=F64))
    torch.testing.assert_close(g.to(F64).var().item(), math.pi**2 / 6, rtol=0.02, atol=0)


@pytest.mark.parametrize("draw", [torch.float32, F64])
def test_gumbel_noise_endpoints_of_uniform_stay_finite(draw):
    info = torch.finfo(draw)
    u = torch.tensor([0.0, info.tiny, 0.5, 1 - info.eps / 2, 1.0], dtype=draw)
    g = _gumbel_from_uniform(u)
    assert torch.isfinite(g).all()
    for half in (torch.float16, torch.bfloat16):
        assert torch.isfinite(g.to(half)).all()
    torch.testing.assert_close(g[2], -torch.log(torch.log(torch.tensor(2.0, dtype=draw))))


def test_generators_reproduce_and_leave_global_state_alone():
    logits = torch.randn(64, 7)
    mean, std = torch.randn(64), torch.rand(64) + 0.1
    calls = [
        lambda g: gumbel_noise((64, 7), generator=g),
        lambda g: gumbel_max(logits, generator=g).double(),
        lambda g: gumbel_softmax(logits, 0.7, generator=g),
        lambda g: gaussian_rsample(mean, std, generator=g),
    ]
    state = torch.random.get_rng_state()
    for call in calls:
        torch.testing.assert_close(call(_gen(10)), call(_gen(10)), rtol=0, atol=0)
        assert not torch.equal(call(_gen(10)), call(_gen(11)))
    assert torch.equal(torch.random.get_rng_state(), state)


# -- Gumbel-softmax --------------------------------------------------------------------------


def test_gumbel_softmax_rows_sum_to_one_and_tiny_tau_is_finite():
    logits = torch.randn(32, 6, dtype=F64, generator=_gen(4)).mul(3).requires_grad_()
    y = gumbel_softmax(logits, 0.5, generator=_gen(5))
    torch.testing.assert_close(y.sum(-1), torch.ones(32, dtype=F64))
    assert (y >= 0).all()
    y = gumbel_softmax(logits, 1e-4, generator=_gen(5))
    assert torch.isfinite(y).all()
    y.mul(torch.randn(32, 6, dtype=F64, generator=_gen(6))).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # τ → 0 concentrates on gumbel_max's category drawn from the same noise.
    index = gumbel_max(logits, generator=_gen(5))
    assert torch.equal(y.argmax(-1), index)
    torch.testing.assert_close(y.max(-1).values, torch.ones(32, dtype=F64), rtol=0, atol=1e-6)
    for dtype in (torch.float16, torch.bfloat16):
        yh = gumbel_softmax(logits.detach().to(dtype), 1e-4, generator=_gen(5))
        assert yh.dtype == dtype and torch.isfinite(yh).all()


def test_gumbel_softmax_masked_category_is_zero_with_zero_gradient():
    logits = torch.tensor([[0.3, -math.inf, 1.0], [-math.inf, 0.0, 0.0]], dtype=F64,
                          requires_grad=True)
    y = gumbel_softmax(logits, 0.3, generator=_gen(7))
    assert y[0, 1] == 0 and y[1, 0] == 0
    (y * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0


def test_binary_concrete_cdf_is_exact():
    # K = 2: y₁ = σ((Δ + L)/τ) with L = g₁ − g₂ ∼ Logistic(0, 1), so P(y₁ ≤ s) = σ(τ·logit(s) − Δ).
    n, tau, delta = 100_000, 0.5, 0.8
    logits = torch.tensor([delta, 0.0], dtype=F64).expand(n, 2)
    y1 = gumbel_softmax(logits, tau, generator=_gen(8))[:, 0]
    for s in (0.05, 0.3, 0.5, 0.7, 0.95):
        exact = torch.sigmoid(torch.tensor(tau * math.log(s / (1 - s)) - delta, dtype=F64))
        _z_test((y1 <= s).to(F64)[:, None], exact[None])


def test_hard_gumbel_softmax_is_one_hot_with_the_soft_gradient():
    logits = torch.randn(16, 5, dtype=F64, generator=_gen(9)).requires_grad_()
    weights = torch.randn(16, 5, dtype=F64, generator=_gen(10))
    hard = gumbel_softmax(logits, 0.8, hard=True, generator=_gen(11))
    expected = torch.nn.functional.one_hot(gumbel_max(logits, generator=_gen(11)), 5).to(F64)
    assert torch.equal(hard, expected)  # bit-exact one-hot
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    soft = gumbel_softmax(logits, 0.8, generator=_gen(11))
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft, rtol=0, atol=0)
    assert grad_soft.abs().sum() > 0


# -- straight-through ------------------------------------------------------------------------


def test_straight_through_value_is_hard_and_gradient_is_identity():
    soft = torch.tensor([0.1234567, 0.7, 0.1765433], requires_grad=True)
    hard = torch.tensor([0.0, 1.0, 0.0])
    out = straight_through(soft, hard)
    assert torch.equal(out, hard)
    w = torch.tensor([2.0, -1.0, 5.0])
    (grad,) = torch.autograd.grad((out * w).sum(), soft)
    torch.testing.assert_close(grad, w, rtol=0, atol=0)
    x = torch.tensor([-1.6, -0.2, 0.0, 0.4, 2.5], dtype=F64, requires_grad=True)
    assert torch.equal(straight_through_round(x), torch.tensor([-2.0, 0, 0, 0, 2], dtype=F64))
    sign = straight_through_sign(x)
    assert torch.equal(sign, torch.tensor([-1.0, -1, 1, 1, 1], dtype=F64))
    (grad,) = torch.autograd.grad(sign.sum(), x)
    torch.testing.assert_close(grad, torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="soft's shape"):
        straight_through(soft, hard[:2])


# -- Gaussian --------------------------------------------------------------------------------


def _exact_diag(name: str, mu: float, sigma: float) -> tuple[float, float]:
    """∇_(μ, σ) E[f(z)], z ∼ N(μ, σ²), in closed form."""
    if name == "cube":  # E[z³] = μ³ + 3μσ²
        return 3 * mu**2 + 3 * sigma**2, 6 * mu * sigma
    e = math.exp(-(sigma**2) / 2)  # E[sin z] = sin μ · exp(−σ²/2)
    return math.cos(mu) * e, -sigma * math.sin(mu) * e


@pytest.mark.parametrize("name, f", [("cube", lambda z: z**3), ("sin", torch.sin)])
def test_gaussian_reparam_gradient_is_unbiased(name, f):
    n, mu, sigma = 200_000, 0.7, 1.3
    mu_n = torch.full((n,), mu, dtype=F64, requires_grad=True)  # one copy per sample:
    sigma_n = torch.full((n,), sigma, dtype=F64, requires_grad=True)  # per-sample gradients
    z = gaussian_rsample(mu_n, sigma_n, generator=_gen(12))
    f(z).sum().backward()
    grads = torch.stack([mu_n.grad, sigma_n.grad], 1)  # (N, 2)
    _z_test(grads, torch.tensor(_exact_diag(name, mu, sigma), dtype=F64))


def _full_cov_problem():
    mean = torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.3, 1.1]], dtype=F64)  # (2, 3)
    L = torch.tensor([[[1.0, 0, 0], [0.4, 0.8, 0], [-0.3, 0.2, 0.6]],
                      [[0.7, 0, 0], [0.1, 1.2, 0], [0.5, -0.4, 0.9]]], dtype=F64)  # (2, 3, 3)
    a = torch.tensor([0.6, -0.5, 0.8], dtype=F64)
    return mean, L, a


def test_full_covariance_reparam_gradient_is_unbiased():
    # f(z) = ‖z‖² + (a·z)³;  E f = ‖μ‖² + ‖L‖²_F + m³ + 3 m s²,  m = a·μ, s² = ‖Lᵀa‖².
    mean, L, a = _full_cov_problem()

    def expected(mu, tril):
        m = mu @ a
        s2 = (tril.transpose(-1, -2) @ a).square().sum(-1)
        return (mu.square().sum(-1) + tril.square().sum((-1, -2)) + m**3 + 3 * m * s2).sum()

    exact = torch.autograd.grad(expected(mean.requires_grad_(), L.requires_grad_()), (mean, L))
    n = 100_000
    mean_n = mean.detach().expand(n, 2, 3).clone().requires_grad_()
    L_n = L.detach().expand(n, 2, 3, 3).clone().requires_grad_()
    z = gaussian_rsample(mean_n, scale_tril=L_n, generator=_gen(13))  # (N, 2, 3)
    (z.square().sum(-1) + (z @ a) ** 3).sum().backward()
    _z_test(mean_n.grad.reshape(n, -1), exact[0].reshape(-1))
    _z_test(L_n.grad.reshape(n, -1), exact[1].reshape(-1))  # upper entries included


def test_gaussian_rsample_formula_and_shapes():
    mean, L, _ = _full_cov_problem()
    z = gaussian_rsample(mean[0], scale_tril=L, sample_shape=(4,), generator=_gen(14))
    eps = torch.randn(4, 2, 3, generator=_gen(14), dtype=F64)
    assert z.shape == (4, 2, 3)
    torch.testing.assert_close(z, mean[0] + torch.einsum("bij,sbj->sbi", L, eps))
    z = gaussian_rsample(mean, 2.0, sample_shape=(5,), generator=_gen(15))
    torch.testing.assert_close(z, mean + 2.0 * torch.randn(5, 2, 3, generator=_gen(15),
                                                           dtype=F64))


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_raises():
    logits = torch.zeros(3, 4)
    for tau in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="tau must be .* use gumbel_max"):
            gumbel_softmax(logits, tau)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="logits must not contain NaN or \\+inf"):
            gumbel_max(torch.tensor([0.0, bad]))
        with pytest.raises(ValueError, match="logits must not contain"):
            gumbel_softmax(torch.tensor([0.0, bad]), 1.0)
    with pytest.raises(ValueError, match="-inf for every category"):
        gumbel_max(torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]))
    with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 1\]"):
        gumbel_max(logits, dim=2)
    with pytest.raises(ValueError, match="logits must be a floating-point"):
        gumbel_max(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype must be a floating-point"):
        gumbel_noise((3,), dtype=torch.int32)
    mean = torch.zeros(3)
    with pytest.raises(ValueError, match="exactly one of std"):
        gaussian_rsample(mean)
    with pytest.raises(ValueError, match="exactly one of std"):
        gaussian_rsample(mean, 1.0, scale_tril=torch.eye(3))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        gaussian_rsample(mean, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="mean must be finite"):
        gaussian_rsample(torch.tensor([0.0, math.nan]), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        gaussian_rsample(mean, torch.ones(2))
    with pytest.raises(ValueError, match="lower-triangular"):
        gaussian_rsample(mean, scale_tril=torch.ones(3, 3))
    with pytest.raises(ValueError, match="scale_tril must have shape"):
        gaussian_rsample(mean, scale_tril=torch.eye(2))
    with pytest.raises(ValueError, match="sample_shape must be"):
        gaussian_rsample(mean, 1.0, sample_shape=(-1,))


def test_generator_of_another_device_type_is_a_clear_value_error():
    """A CPU generator for tensors on another device: torch would fail deep inside the sampler
    (CUDA) or silently draw (meta); every sampler raises ValueError naming both devices first.
    'meta' tensors stand in for CUDA ones on a CPU-only machine."""
    cpu = torch.Generator().manual_seed(0)
    logits = torch.zeros(3, 4, device="meta")
    mean = torch.zeros(3, device="meta")
    match = r"generator must be on the tensors' device type, got a generator on cpu for " \
            r"tensors on meta"
    for call in (lambda: gumbel_max(logits, generator=cpu),
                 lambda: gumbel_softmax(logits, 0.5, generator=cpu),
                 lambda: gumbel_softmax(logits, 0.5, hard=True, generator=cpu),
                 lambda: gumbel_noise((3, 4), device="meta", generator=cpu),
                 lambda: gaussian_rsample(mean, 1.0, generator=cpu),
                 lambda: gaussian_rsample(mean, scale_tril=torch.eye(3, device="meta"),
                                          generator=cpu)):
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        gumbel_max(torch.zeros(3), generator=0)
    # std / scale_tril on another device than mean
    with pytest.raises(ValueError, match=r"std must be on mean's device meta, got cpu"):
        gaussian_rsample(mean, torch.ones(3))
    with pytest.raises(ValueError, match=r"scale_tril must be on mean's device cpu, got meta"):
        gaussian_rsample(torch.zeros(3), scale_tril=torch.eye(3, device="meta"))
    # same device type: still fine, and an int sample_shape is accepted
    assert gumbel_noise((2,), device="cpu", generator=cpu).shape == (2,)
    assert gaussian_rsample(torch.zeros(3), 1.0, sample_shape=2, generator=cpu).shape == (2, 3)
