"""Score-function estimators against exact gradients (enumeration, closed form, Gauss–Hermite):
REINFORCE with no, moving-average and leave-one-out baselines, their variances, a learned
baseline, and DiCE surrogates mixing reparameterised and score-function nodes.

Gradients are taken per sample (one copy of the parameters per sample) and z-tested at fixed
seeds: |mean − exact| < 4 standard errors (two-sided rate ≈ 6e-5 per component)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Exponential, Independent, Normal

from kexue.estimators.reparam import gumbel_max
from kexue.estimators.score import (
    LearnedBaseline,
    MovingAverageBaseline,
    Surrogate,
    leave_one_out,
    magic_box,
    score_function_surrogate,
)

F64 = torch.float64
Z = 4.0

LOGITS = torch.tensor([0.3, -0.5, 1.0, 0.0, -1.2], dtype=F64)
COST = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=F64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _z_test(samples: torch.Tensor, exact: torch.Tensor) -> None:
    """Per-component z-test of the Monte-Carlo mean of samples (N, ...) against exact (...)."""
    n = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert ((mean - exact).abs() <= Z * se + 1e-12).all(), f"mean {mean}, exact {exact}, se {se}"


def _categorical_exact(cost: torch.Tensor = COST) -> torch.Tensor:
    p = torch.softmax(LOGITS, -1)
    return p * (cost - p @ cost)  # ∇_l Σ_k softmax(l)_k c_k


def _categorical_grads(n: int, seed: int, baseline: str, offset: float = 0.0, k: int = 4):
    """Per-sample REINFORCE gradients (N, 5), or per-group means (N/k, 5) for leave-one-out."""
    logits_n = LOGITS.expand(n, 5).clone().requires_grad_()
    z = gumbel_max(logits_n.detach(), generator=_gen(seed))
    log_prob = torch.log_softmax(logits_n, -1).gather(-1, z[:, None]).squeeze(-1)  # (N,)
    cost = COST[z] + offset
    if baseline == "none":
        b = None
    elif baseline == "loo":
        b = leave_one_out(cost.view(n // k, k), dim=1).view(n)  # (N/k, k) groups
    else:  # moving average over batches of 1000, each using only earlier batches
        ma = MovingAverageBaseline(0.9).double()
        b = torch.cat([ma.update(c).expand_as(c) for c in cost.split(1000)])
    score_function_surrogate(log_prob, cost, b).sum().backward()
    grads = logits_n.grad
    return grads.view(n // k, k, 5).mean(1) if baseline == "loo" else grads


@pytest.mark.parametrize("baseline", ["none", "moving", "loo"])
def test_reinforce_categorical_is_unbiased(baseline):
    _z_test(_categorical_grads(100_000, 20, baseline), _categorical_exact())


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_reinforce_bernoulli_is_unbiased(baseline):
    theta = torch.tensor([0.4, -0.8, 1.5], dtype=F64)
    table = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7, 1.1, 3.0, -2.5], dtype=F64)
    powers = torch.tensor([1, 2, 4])
    # Exact: enumerate the 8 states of 3 independent bits.
    states = ((torch.arange(8)[:, None] // powers) % 2).to(F64)  # (8, 3)
    th = theta.clone().requires_grad_()
    exact_value = Bernoulli(logits=th).log_prob(states).sum(-1).exp() @ table
    (exact,) = torch.autograd.grad(exact_value, th)
    n, k = 100_000, 4
    theta_n = theta.expand(n, 3).clone().requires_grad_()
    z = (torch.rand(n, 3, generator=_gen(21), dtype=F64) < torch.sigmoid(theta)).to(F64)
    cost = table[(z.long() * powers).sum(-1)]
    log_prob = Bernoulli(logits=theta_n).log_prob(z).sum(-1)  # (N,)
    b = leave_one_out(cost.view(-1, k), dim=1).view(n) if baseline == "loo" else None
    score_function_surrogate(log_prob, cost, b).sum().backward()
    grads = theta_n.grad.view(-1, k, 3).mean(1) if baseline == "loo" else theta_n.grad
    _z_test(grads, exact)


def test_leave_one_out_variance_is_offset_invariant_and_plain_is_not():
    loo0 = _categorical_grads(40_000, 22, "loo")
    loo100 = _categorical_grads(40_000, 22, "loo", offset=100.0)
    torch.testing.assert_close(loo100, loo0, rtol=0, atol=1e-10)  # same samples, same estimates
    plain0 = _categorical_grads(40_000, 22, "none").var(0).sum()
    plain100 = _categorical_grads(40_000, 22, "none", offset=100.0).var(0).sum()
    assert plain100 > 100 * plain0
    # A mean of k = 4 plain estimates has variance plain/4; leave-one-out is far below it.
    assert 100 * loo100.var(0).sum() < plain100 / 4


def test_reparam_variance_below_reinforce_matches_closed_form():
    # z ∼ N(μ, 1), f = z², μ = 1: pathwise 2z has variance 4; score f(z)(z − μ) = (1+ε)²ε has
    # variance μ⁴ + 14μ² + 15 = 30. Both means are ∇_μ E f = 2μ = 2.
    n = 200_000
    variances = {}
    for reparam in (True, False):
        mu_n = torch.ones(n, dtype=F64, requires_grad=True)
        s = Surrogate()
        z = s.sample(Normal(mu_n, 1.0), reparam=reparam, generator=_gen(23))
        s.loss(z**2, reduction="sum").backward()
        _z_test(mu_n.grad[:, None], torch.tensor([2.0], dtype=F64))
        variances[reparam] = mu_n.grad.var().item()
    torch.testing.assert_close(variances[True], 4.0, rtol=0.02, atol=0)
    torch.testing.assert_close(variances[False], 30.0, rtol=0.1, atol=0)
    assert variances[True] < variances[False]


def test_learned_baseline_reduces_variance_and_stays_unbiased():
    # Context x ∼ N(0, I₂) shifts the cost: f = 3x₀ − 2x₁ + h(z), z ∼ Bern(σ(θ)).
    # ∇_θ E f = σ'(θ)(h(1) − h(0)); the optimal baseline is close to 3x₀ − 2x₁ + E h.
    torch.manual_seed(24)  # the MLP's initialisation
    theta, h = 0.3, torch.tensor([1.0, -1.0], dtype=F64)
    p = 1 / (1 + math.exp(-theta))
    gen = _gen(25)

    def batch(n):
        x = torch.randn(n, 2, generator=gen, dtype=F64)
        z = (torch.rand(n, generator=gen, dtype=F64) < p).to(F64)
        return x, z, 3 * x[:, 0] - 2 * x[:, 1] + h[z.long()]

    baseline = LearnedBaseline(in_features=2, hidden=32).double()
    opt = torch.optim.Adam(baseline.parameters(), lr=1e-2)
    for _ in range(300):
        x, _, cost = batch(256)
        opt.zero_grad()
        baseline.loss(x, cost).backward()
        opt.step()
    x, z, cost = batch(50_000)
    theta_n = torch.full((50_000,), theta, dtype=F64, requires_grad=True)
    log_prob = Bernoulli(logits=theta_n).log_prob(z)
    b = baseline(x).detach()
    (with_b,) = torch.autograd.grad(score_function_surrogate(log_prob, cost, b).sum(), theta_n,
                                    retain_graph=True)
    (plain,) = torch.autograd.grad(score_function_surrogate(log_prob, cost).sum(), theta_n)
    exact = torch.tensor([p * (1 - p) * (h[1] - h[0]).item()], dtype=F64)
    _z_test(with_b[:, None], exact)
    assert with_b.var() < 0.1 * plain.var()


def test_learned_baseline_wraps_a_model_and_validates():
    model = nn.Linear(3, 1)
    baseline = LearnedBaseline(model)
    x = torch.randn(8, 3)
    torch.testing.assert_close(baseline(x), model(x))
    with pytest.raises(ValueError, match="must have cost's shape"):
        baseline.loss(x, torch.zeros(8))
    torch.testing.assert_close(baseline.loss(x, torch.zeros(8, 1)), model(x).square().mean())
    with pytest.raises(ValueError, match="exactly one of model and in_features"):
        LearnedBaseline()
    with pytest.raises(ValueError, match="exactly one of model and in_features"):
        LearnedBaseline(model, in_features=3)
    with pytest.raises(ValueError, match="in_features must be an int >= 1, got 0"):
        LearnedBaseline(in_features=0)
    assert LearnedBaseline(in_features=3)(torch.randn(4, 5, 3)).shape == (4, 5)


# -- surrogate, baselines: closed forms ------------------------------------------------------


def test_score_function_surrogate_value_gradient_and_shapes():
    logits = torch.tensor([0.2, -0.4, 1.0], dtype=F64, requires_grad=True)
    z, cost, b = torch.tensor([2, 0]), torch.tensor([3.0, -1.0], dtype=F64), 0.5
    log_prob = torch.log_softmax(logits, -1)[z]
    s = score_function_surrogate(log_prob, cost, b)
    torch.testing.assert_close(s, (cost - b) * log_prob.detach())
    (grad,) = torch.autograd.grad(s.sum(), logits)
    p, eye = torch.softmax(logits.detach(), -1), torch.eye(3, dtype=F64)
    torch.testing.assert_close(grad, ((cost - b)[:, None] * (eye[z] - p)).sum(0))
    with pytest.raises(ValueError, match="log_prob and cost must have the same shape"):
        score_function_surrogate(log_prob, cost[:, None])
    with pytest.raises(ValueError, match="must broadcast to cost's shape"):
        score_function_surrogate(log_prob, cost, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="must broadcast to cost's shape"):
        score_function_surrogate(log_prob, cost, torch.zeros(4))


def test_leave_one_out_closed_form_and_k():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 8.0]], dtype=F64)
    expected = torch.tensor([[11 / 3, 10 / 3, 3.0, 2.0], [4.0, 4.0, 8 / 3, 4 / 3]], dtype=F64)
    torch.testing.assert_close(leave_one_out(r, dim=1), expected)
    torch.testing.assert_close(leave_one_out(r.T), expected.T)
    with pytest.raises(ValueError, match="K >= 2 .* got K=1"):
        leave_one_out(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="dim must be"):
        leave_one_out(r, dim=2)


def test_moving_average_closed_form_and_state_dict():
    costs = [torch.tensor([1.0, 3.0]), torch.tensor([5.0]), torch.tensor([-2.0, 0.0, 2.0, 4.0])]
    ma = MovingAverageBaseline(momentum=0.75)
    got = [ma.update(c).item() for c in costs]
    # Returned values precede each update: 0, then b₁ = 2, then b₂ = 0.75·2 + 0.25·5 = 2.75.
    assert got == [0.0, 2.0, 2.75]
    torch.testing.assert_close(ma().item(), 0.75 * 2.75 + 0.25 * 1.0)
    clone = MovingAverageBaseline(momentum=0.75)
    clone.load_state_dict(ma.state_dict())
    assert bool(clone.initialized)
    assert clone.update(torch.tensor([9.0])).item() == ma.update(torch.tensor([9.0])).item()
    torch.testing.assert_close(clone.value, ma.value)
    for bad in (1.0, -0.1, math.nan, True):
        with pytest.raises(ValueError, match="momentum must be a finite number >= 0 and < 1"):
            MovingAverageBaseline(bad)


# -- DiCE ------------------------------------------------------------------------------------

A = torch.tensor([-1.0, 0.5, 2.0, 0.0], dtype=F64)
C = torch.tensor([0.3, -0.2, 0.1, 0.8], dtype=F64)
V = torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=F64)


def _mixed_params():
    return (torch.tensor(0.4, dtype=F64), torch.tensor(0.9, dtype=F64),
            torch.tensor([0.2, -0.3, 0.5, 0.0], dtype=F64), torch.tensor(0.7, dtype=F64))


def _mixed_cost(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (h - A[k]) ** 2 + C[k]


def _mixed_exact() -> list[torch.Tensor]:
    """∇ E f for h ∼ N(μ, σ²), k | h ∼ Cat(softmax(θ + β h v)), f = (h − a_k)² + c_k, by
    Gauss–Hermite quadrature over h (80 nodes; the integrand is smooth) and enumeration of k."""
    t, w = np.polynomial.hermite.hermgauss(80)
    t, w = torch.from_numpy(t), torch.from_numpy(w) / math.sqrt(math.pi)
    params = [p.requires_grad_() for p in _mixed_params()]
    mu, sigma, theta, beta = params
    h = mu + sigma * math.sqrt(2) * t  # (80,)
    probs = torch.softmax(theta + beta * h[:, None] * V, -1)  # (80, 4)
    value = (w[:, None] * probs * _mixed_cost(h[:, None], torch.arange(4))).sum()
    return list(torch.autograd.grad(value, params))


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_dice_mixed_graph_gradient_is_unbiased(baseline):
    n, k = 100_000, 4
    mu, sigma, theta, beta = _mixed_params()
    leaves = [mu.expand(n).clone(), sigma.expand(n).clone(), theta.expand(n, 4).clone(),
              beta.expand(n).clone()]
    for p in leaves:
        p.requires_grad_()
    mu_n, sigma_n, theta_n, beta_n = leaves
    gen, s = _gen(26), Surrogate()
    h = s.sample(Normal(mu_n, sigma_n), generator=gen)  # reparameterised: nothing registered
    assert len(s.log_probs) == 0 and h.requires_grad
    cat = s.sample(Categorical(logits=theta_n + beta_n[:, None] * h[:, None] * V), generator=gen)
    assert len(s.log_probs) == 1 and not cat.requires_grad
    cost = _mixed_cost(h, cat)
    b = leave_one_out(cost.detach().view(-1, k), dim=1).view(n) if baseline == "loo" else None
    loss = s.loss(cost, b, reduction="sum")
    torch.testing.assert_close(loss, cost.sum(), rtol=0, atol=0)  # the value is the cost
    loss.backward()
    grads = torch.cat([mu_n.grad[:, None], sigma_n.grad[:, None], theta_n.grad,
                       beta_n.grad[:, None]], 1)  # (N, 7)
    if baseline == "loo":
        grads = grads.view(-1, k, 7).mean(1)
    _z_test(grads, torch.cat([g.reshape(-1) for g in _mixed_exact()]))


@pytest.mark.parametrize("baseline", [None, 1.5])
def test_dice_second_order_matches_exact_hessian(baseline):
    exact = torch.autograd.functional.hessian(lambda lg: torch.softmax(lg, -1) @ COST, LOGITS)
    n = 50_000
    logits_n = LOGITS.expand(n, 5).clone().requires_grad_()
    s = Surrogate()
    z = s.sample(Categorical(logits=logits_n), generator=_gen(27))
    loss = s.loss(COST[z], baseline, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits_n, create_graph=True)  # (N, 5)
    rows = [torch.autograd.grad(grad[:, j].sum(), logits_n, retain_graph=True)[0]
            for j in range(5)]
    _z_test(torch.stack(rows, 1), exact)  # per-sample Hessians (N, 5, 5)


def test_surrogate_shapes_generators_and_errors():
    logits = torch.randn(6, 3, 4, dtype=F64, requires_grad=True)
    s = Surrogate()
    z = s.sample(Independent(Categorical(logits=logits), 1), generator=_gen(28))  # (6, 3)
    assert z.shape == (6, 3) and s.log_probs[0].shape == (6,)
    again = Surrogate().sample(Independent(Categorical(logits=logits), 1), generator=_gen(28))
    assert torch.equal(z, again)
    s.register(torch.log_softmax(logits, -1)[..., 0])  # (6, 3): summed over the extra dim
    cost = z.sum(-1).to(F64)  # (6,)
    loss = s.loss(cost, reduction="none")
    torch.testing.assert_close(loss, cost, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not align with cost"):
        s.loss(torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="reduction must be"):
        s.loss(cost, reduction="avg")
    with pytest.raises(ValueError, match="reparam=True needs a distribution with rsample"):
        Surrogate().sample(Categorical(logits=logits), reparam=True)
    with pytest.raises(ValueError, match="generator is supported for"):
        Surrogate().sample(Exponential(torch.ones(3)), generator=_gen(0))
    e = Surrogate()
    assert e.sample(Exponential(torch.ones(3)), reparam=False).shape == (3,)  # default RNG
    assert len(e.log_probs) == 1
    torch.testing.assert_close(magic_box(torch.tensor([0.3, -2.0])), torch.ones(2), rtol=0,
                               atol=0)


def test_moving_average_rejects_empty_and_non_finite_cost_and_keeps_its_value():
    """mean([]) is NaN and one NaN/inf batch would poison b for good: both raise, b unchanged."""
    ma = MovingAverageBaseline(momentum=0.5)
    ma.update(torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match=r"cost must hold at least one element, got an empty "
                                         r"tensor of shape \(0, 2\)"):
        ma.update(torch.zeros(0, 2))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="cost must be finite, got NaN or inf entries"):
            ma.update(torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="cost must be finite"):  # inf − inf in the mean
        ma.update(torch.tensor([math.inf, -math.inf]))
    assert ma().item() == 2.0 and bool(ma.initialized)
    fresh = MovingAverageBaseline()
    with pytest.raises(ValueError, match="cost must be finite"):
        fresh.update(torch.tensor([math.nan], dtype=F64))
    assert not bool(fresh.initialized) and fresh().item() == 0.0
    assert ma.update(torch.tensor([4.0])).item() == 2.0 and ma().item() == 3.0


def test_surrogate_sample_shape_accepts_an_int_and_validates():
    probs = torch.full((2,), 0.3, dtype=F64)
    for dist in (Normal(torch.zeros(2, dtype=F64), 1.0), Bernoulli(probs)):
        for gen in (None, _gen(1)):
            z = Surrogate().sample(dist, sample_shape=3, generator=gen)
            assert z.shape == (3, 2)
            assert Surrogate().sample(dist, sample_shape=[4, 1], generator=gen).shape == (4, 1, 2)
    assert Surrogate().sample(Categorical(logits=torch.zeros(5)), sample_shape=3,
                              generator=_gen(2)).shape == (3,)
    for bad in (-1, 2.5, "3", (2, -1), True):
        with pytest.raises(ValueError, match="sample_shape must be a sequence of ints >= 0"):
            Surrogate().sample(Normal(0.0, 1.0), sample_shape=bad)


def test_surrogate_generator_of_another_device_type_is_a_clear_value_error():
    """'meta' tensors stand in for CUDA ones on a CPU-only machine."""
    cpu = _gen(0)
    loc = torch.zeros(2, device="meta")
    match = "generator must be on the tensors' device type, got a generator on cpu for " \
            "tensors on meta"
    dists = [Normal(loc, torch.ones(2, device="meta"), validate_args=False),
             Independent(Normal(loc, torch.ones(2, device="meta"), validate_args=False), 1),
             Bernoulli(probs=torch.full((2,), 0.5, device="meta"), validate_args=False),
             Categorical(logits=torch.zeros(2, 3, device="meta"), validate_args=False)]
    for dist in dists:
        with pytest.raises(ValueError, match=match):
            Surrogate().sample(dist, generator=cpu)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None"):
        Surrogate().sample(Normal(0.0, 1.0), generator=7)
