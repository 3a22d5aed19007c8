"""Zeroth-order estimators: smoothed gradients in closed form, agreement with REINFORCE,
variance reduction, and the seed-replay optimizer (exact restore, reference update, precision).

Statistical tests are z-tests at fixed seeds: |mean − truth| / standard error < Z_MAX for every
component. Under the null each component fails with probability ~7e-6 (two-sided normal tail),
so with fixed seeds a failure means a bias, not bad luck.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from kexue.estimators.score import leave_one_out
from kexue.estimators.zeroth import SeedZO, zo_backward, zo_gradient

Z_MAX = 4.5
F64 = torch.float64


def _quadratic(d: int = 4, offset: float = 3.0, seed: int = 0):
    """f(θ) = c + aᵀθ + ½θᵀAθ at a fixed θ, and its Gaussian-smoothed gradient a + Aθ (exact:
    f_σ = f + ½σ² tr A)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=gen, dtype=F64)
    m = torch.randn(d, d, generator=gen, dtype=F64)
    big_a = m @ m.T / d + torch.eye(d, dtype=F64)
    theta = torch.randn(d, generator=gen, dtype=F64)

    def f():
        return offset + a @ theta + 0.5 * theta @ big_a @ theta

    return theta, f, a + big_a @ theta


def _replicates(f, theta, reps: int, seed: int = 1, **kw) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([zo_gradient(f, [theta], generator=gen, **kw)[0] for _ in range(reps)])


def _z(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-component z-score of the mean of (R, d) independent estimates."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return (samples.mean(0) - truth) / se


# -- zo_gradient: unbiased for the smoothed gradient -----------------------------------------

CONFIGS = [
    ("gaussian", True, None),
    ("gaussian", False, "value"),
    ("gaussian", False, "optimal"),
    ("gaussian", False, "none"),
    ("spsa", True, None),
    ("spsa", False, "value"),
    ("spsa", False, "optimal"),
]


@pytest.mark.parametrize(("method", "antithetic", "baseline"), CONFIGS)
def test_quadratic_smoothed_gradient_is_a_plus_A_theta(method, antithetic, baseline):
    """For a quadratic, Gaussian and Rademacher smoothing both have gradient exactly a + Aθ;
    every estimator/baseline is unbiased for it (odd moments of u vanish)."""
    theta, f, grad = _quadratic()
    est = _replicates(f, theta, 200, sigma=0.5, num_samples=4, method=method,
                      antithetic=antithetic, baseline=baseline)
    assert _z(est, grad).abs().max() < Z_MAX


def test_spsa_antithetic_is_exact_in_one_dimension():
    """Rademacher u = ±1 in 1-D: (f(θ+σu) − f(θ−σu)) u / 2σ = f'(θ) exactly for a quadratic."""
    theta, f, grad = _quadratic(d=1)
    for sigma in (1e-3, 0.5, 7.0):
        out = zo_gradient(f, [theta], sigma=sigma, num_samples=3, method="spsa",
                          generator=torch.Generator().manual_seed(0))[0]
        torch.testing.assert_close(out, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("method", "excess"), [("gaussian", 1.0), ("spsa", -1.0)])
def test_single_direction_variance_matches_closed_form(method, excess):
    """On a quadratic an antithetic pair gives u uᵀg, whose component variance is
    ‖g‖² + g_i² for Gaussian u (E u⁴ = 3) and ‖g‖² − g_i² for Rademacher u (u_i² = 1):
    SPSA is unbiased but not exact for d > 1."""
    theta, f, g = _quadratic()
    est = _replicates(f, theta, 2000, sigma=0.3, num_samples=1, method=method)
    expected = g.pow(2).sum() + excess * g.pow(2)
    torch.testing.assert_close(est.var(0), expected, rtol=0.2, atol=0.0)


# -- nonsmooth: smoothed 0-1 accuracy of a linear classifier is a probit ---------------------


def _probit_problem():
    """acc(w) = mean_i 1{y_i wᵀx_i > 0}; E_u acc(w + σu) = mean_i Φ(y_i wᵀx_i / (σ‖x_i‖)), so
    ∇ = mean_i φ(m_i) y_i x_i / (σ‖x_i‖) with m_i = y_i wᵀx_i / (σ‖x_i‖)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=gen, dtype=F64)
    y = torch.where(torch.rand(16, generator=gen, dtype=F64) < 0.5, -1.0, 1.0).to(F64)
    w = torch.tensor([0.4, -0.3, 0.2], dtype=F64)
    sigma = 0.7
    scale = sigma * x.norm(dim=1)  # (n,)
    m = y * (x @ w) / scale
    phi = torch.exp(-0.5 * m**2) / math.sqrt(2 * math.pi)
    grad = (phi * y / scale) @ x / len(x)

    def acc(weights: torch.Tensor) -> torch.Tensor:  # weights (..., d) -> (...)
        return ((y * (weights @ x.T)) > 0).to(F64).mean(-1)

    return w, acc, sigma, grad


def test_zo_and_reinforce_agree_with_the_probit_gradient():
    """The same number three ways: zeroth-order (antithetic), REINFORCE through autograd of
    the Gaussian policy N(w, σ²I) with a leave-one-out baseline, and the closed form."""
    w, acc, sigma, grad = _probit_problem()
    reps, k = 300, 16

    zo = _replicates(lambda: acc(w), w, reps, sigma=sigma, num_samples=k)
    assert _z(zo, grad).abs().max() < Z_MAX

    gen = torch.Generator().manual_seed(5)
    mean = w.expand(reps, -1).clone().requires_grad_(True)  # (R, d): one policy per replicate
    draws = (mean.detach()[:, None] + sigma * torch.randn(reps, k, 3, generator=gen,
                                                          dtype=F64))  # (R, K, d)
    log_p = torch.distributions.Normal(mean[:, None], sigma).log_prob(draws).sum(-1)  # (R, K)
    rewards = acc(draws)  # (R, K)
    surrogate = ((rewards - leave_one_out(rewards, dim=1)) * log_p).mean(1).sum()
    (reinforce,) = torch.autograd.grad(surrogate, mean)  # (R, d)
    assert _z(reinforce, grad).abs().max() < Z_MAX

    se = (zo.var(0) / reps + reinforce.var(0) / reps).sqrt()
    assert ((zo.mean(0) - reinforce.mean(0)) / se).abs().max() < Z_MAX


# -- variance reduction ----------------------------------------------------------------------


def test_baselines_and_antithetic_reduce_variance():
    """Per direction, at a fixed seed, with a large constant in f: f(θ) and the estimated
    optimal constant remove most of the c·u/σ noise; antithetic pairs also remove the
    curvature term. (Unbiasedness of each is tested above.)"""
    theta, f, _ = _quadratic(offset=10.0)
    kw = {"sigma": 0.5, "num_samples": 8}
    total = {}
    for name, anti, base in [("none", False, "none"), ("value", False, "value"),
                             ("optimal", False, "optimal"), ("antithetic", True, None)]:
        est = _replicates(f, theta, 200, antithetic=anti, baseline=base, **kw)
        total[name] = est.var(0).sum().item()
    assert total["value"] < total["none"] / 10
    assert total["optimal"] < total["none"] / 10
    assert total["antithetic"] < 0.8 * total["value"]


# -- zo_gradient: mechanics and validation ---------------------------------------------------


def test_zo_gradient_restores_bitwise_and_accumulates():
    params = [torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16)]
    before = [p.clone() for p in params]

    def f():
        return params[0].sum() + params[1].float().pow(2).sum()

    params[0].grad = torch.ones(3, 4)
    out = zo_gradient(f, params, sigma=0.1, num_samples=3, accumulate_into_grad=True,
                      generator=torch.Generator().manual_seed(0))
    for p, b, o in zip(params, before, out):
        assert torch.equal(p, b)
        assert o.dtype == p.dtype and o.shape == p.shape
    torch.testing.assert_close(params[0].grad, 1 + out[0])
    torch.testing.assert_close(params[1].grad, out[1])

    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return f()

    with pytest.raises(RuntimeError, match="boom"):
        zo_gradient(failing, params, sigma=0.1, num_samples=3)
    for p, b in zip(params, before):
        assert torch.equal(p, b)


def test_zo_gradient_is_reproducible_with_a_generator():
    theta, f, _ = _quadratic()
    a, b = (zo_gradient(f, [theta], sigma=0.1, num_samples=4,
                        generator=torch.Generator().manual_seed(9))[0] for _ in range(2))
    assert torch.equal(a, b)


def test_zo_gradient_rejects_bad_input():
    theta, f, _ = _quadratic()
    for sigma in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            zo_gradient(f, [theta], sigma=sigma, num_samples=2)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        zo_gradient(f, [theta], sigma=0.1, num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be >= 2 for baseline='optimal'"):
        zo_gradient(f, [theta], sigma=0.1, num_samples=1, antithetic=False, baseline="optimal")
    with pytest.raises(ValueError, match="baseline must be None with antithetic=True"):
        zo_gradient(f, [theta], sigma=0.1, num_samples=2, baseline="value")
    with pytest.raises(ValueError, match="method must be one of"):
        zo_gradient(f, [theta], sigma=0.1, num_samples=2, method="cma")
    with pytest.raises(ValueError, match="params must hold at least one tensor"):
        zo_gradient(f, [], sigma=0.1, num_samples=2)
    with pytest.raises(ValueError, match="f must return a scalar"):
        zo_gradient(lambda: theta * 2, [theta], sigma=0.1, num_samples=2)
    before = theta.clone()
    with pytest.raises(ValueError, match="f must return a finite value, got nan"):
        zo_gradient(lambda: theta.sum() * math.nan, [theta], sigma=0.1, num_samples=2)
    assert torch.equal(theta, before)


# -- SeedZO: exact replay, reference update, convergence, precision --------------------------


def _ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of |t| in its own dtype, as float64."""
    big = torch.tensor(math.inf, dtype=t.dtype)
    return (torch.nextafter(t.abs(), big).to(F64) - t.abs().to(F64))


def _z_of(params, seed):
    """Direction protocol, written out independently: one CPU generator, params in order."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.promote_types(p.dtype,
                                                                          torch.float32))
            for p in params]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("master", [False, True])
def test_seed_replay_restores_parameters(dtype, master):
    """lr = 0: one perturb (+εz, −2εz, +εz) cycle. With a master copy: bit-exact. Without:
    each element drifts by at most 1 ulp of |θ| + ε|z| in its own dtype (three roundings;
    measured max 1.0 ulp, on ~50% of elements in float32 and ~30% in bfloat16)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(64, 64, generator=gen).to(dtype), torch.randn(300, generator=gen)
              .to(dtype)]
    before = [p.clone() for p in params]
    opt = SeedZO(params, lr=0.0, eps=1e-3, master_weights=master, warn_unchanged=1.0)
    opt.step(lambda: sum(p.float().pow(2).sum() for p in params))
    zs = _z_of(params, opt.last_stats["seeds"][0])
    for p, b, z in zip(params, before, zs):
        if master:
            assert torch.equal(p, b)
        else:
            bound = _ulp((b.to(F64).abs() + 1e-3 * z.to(F64).abs()).to(dtype))
            assert ((p.to(F64) - b.to(F64)).abs() <= bound).all()


def _least_squares(dtype=F64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(24, 6, generator=gen, dtype=F64)
    b = torch.randn(24, generator=gen, dtype=F64)
    optimum = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    return a.to(dtype), b.to(dtype), optimum


def _reference_zo(params, groups, loss_fn, seeds, k):
    """The same update storing z and θ explicitly (no replay):
    θ ← θ − lr (Σ_k d_k z_k / (K ε) + λ θ), d_k = (L(θ + εz_k) − L(θ − εz_k)) / 2."""
    theta = [p.clone() for p in params]
    diffs, zs = [], []
    for seed in seeds:
        z = _z_of(theta, seed)
        plus = [t + g["eps"] * zi for t, g, zi in zip(theta, groups, z)]
        minus = [t - g["eps"] * zi for t, g, zi in zip(theta, groups, z)]
        diffs.append((loss_fn(plus) - loss_fn(minus)).item() / 2)
        zs.append(z)
    new = []
    for i, (t, g) in enumerate(zip(theta, groups)):
        step = sum(d * z[i] for d, z in zip(diffs, zs)) / (k * g["eps"])
        new.append(t - g["lr"] * (step + g["weight_decay"] * t))
    return new


def test_seed_zo_matches_a_reference_that_stores_z():
    a, b, _ = _least_squares()
    w = torch.zeros(4, dtype=F64)
    c = torch.zeros(2, dtype=F64)

    def loss_fn(ps):
        return (a @ torch.cat(ps) - b).pow(2).mean()

    groups = [{"params": [w], "lr": 0.02, "eps": 1e-3, "weight_decay": 0.1},
              {"params": [c], "lr": 0.01, "eps": 2e-3, "weight_decay": 0.0}]
    opt = SeedZO(groups, num_directions=3, seed=7)
    seed_gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        expected = _reference_zo([w, c], opt.param_groups, loss_fn,
                                 [int(torch.randint(0, 2**63 - 1, (1,), generator=seed_gen))
                                  for _ in range(3)], 3)
        opt.step(lambda: loss_fn([w, c]))
        for p, e in zip([w, c], expected):
            torch.testing.assert_close(p, e, rtol=1e-10, atol=1e-12)


def test_seed_zo_converges_to_least_squares_optimum():
    a, b, optimum = _least_squares()
    w = torch.zeros(6, dtype=F64)
    opt = SeedZO([w], lr=0.03, eps=1e-3, num_directions=2, seed=0)
    for _ in range(1500):
        opt.step(lambda: (a @ w - b).pow(2).mean())
    torch.testing.assert_close(w, optimum, rtol=0, atol=1e-4)


def test_zo_backward_with_torch_optimizers():
    """zo_backward + SGD(weight_decay) is SeedZO with the same seeds; with Adam it converges."""
    a, b, optimum = _least_squares()
    w1, w2 = torch.zeros(6, dtype=F64), torch.zeros(6, dtype=F64)
    zo = SeedZO([w1], lr=0.02, eps=1e-3, weight_decay=0.01, num_directions=2, seed=3)
    sgd = torch.optim.SGD([w2], lr=0.02, weight_decay=0.01)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        zo.step(lambda: (a @ w1 - b).pow(2).mean())
        sgd.zero_grad()
        zo_backward(lambda: (a @ w2 - b).pow(2).mean(), [w2], eps=1e-3, num_directions=2,
                    generator=gen)
        sgd.step()
    torch.testing.assert_close(w2, w1, rtol=1e-10, atol=1e-12)

    w3 = torch.zeros(6, dtype=F64)
    adam = torch.optim.Adam([w3], lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(1500):
        adam.zero_grad()
        zo_backward(lambda: (a @ w3 - b).pow(2).mean(), [w3], eps=1e-3, num_directions=2,
                    generator=gen)
        adam.step()
    torch.testing.assert_close(w3, optimum, rtol=0, atol=5e-3)


def test_seed_zo_state_dict_round_trip():
    """Resuming from state_dict (bf16 masters included) continues the same trajectory."""
    a, b, _ = _least_squares()
    a32, b32 = a.float(), b.float()
    w = torch.zeros(6, dtype=torch.bfloat16)

    def closure(t=w):
        return (a32 @ t.float() - b32).pow(2).mean()

    opt = SeedZO([w], lr=0.02, eps=1e-2, master_weights=True, seed=11, warn_unchanged=1.0)
    for _ in range(3):
        opt.step(closure)
    saved, w_saved = copy.deepcopy(opt.state_dict()), w.clone()
    for _ in range(3):
        opt.step(closure)

    w_new = w_saved.clone()
    resumed = SeedZO([w_new], lr=0.5, eps=1e-2, master_weights=True, seed=999,
                     warn_unchanged=1.0)
    resumed.load_state_dict(saved)
    assert resumed.state[w_new]["master"].dtype == torch.float32
    assert resumed.param_groups[0]["lr"] == 0.02
    for _ in range(3):
        resumed.step(lambda: closure(w_new))
    assert torch.equal(w_new, w)
    assert torch.equal(resumed.state[w_new]["master"], opt.state[w]["master"])


def test_rounding_to_nothing_is_detected_and_warned_once():
    """bf16 has 8 significant bits: ε|z| ≈ 1e-5 vanishes next to |θ| ≈ 1."""
    w = torch.ones(1000, dtype=torch.bfloat16)
    opt = SeedZO([w], lr=1e-3, eps=1e-5)
    with pytest.warns(RuntimeWarning, match="did not change under the perturbation"):
        opt.step(lambda: w.float().sum())
    assert opt.last_stats["unchanged_fraction"] == 1.0
    assert opt.last_stats["diffs"] == [0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(lambda: w.float().sum())  # warned once per optimizer

    v = torch.ones(1000)
    fine = SeedZO([v], lr=1e-3, eps=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine.step(lambda: v.sum())
    assert fine.last_stats["unchanged_fraction"] == 0.0


def test_seed_zo_rejects_bad_input_and_restores_on_bad_loss():
    w = torch.randn(5)
    for kwargs, match in [({"lr": -1.0}, "lr must be a finite number >= 0"),
                          ({"eps": 0.0}, "eps must be a finite number > 0"),
                          ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
                          ({"num_directions": 0}, "num_directions must be an int >= 1")]:
        with pytest.raises(ValueError, match=match):
            SeedZO([w], **kwargs)
    opt = SeedZO([w], master_weights=True)
    with pytest.raises(ValueError, match="closure must be a callable"):
        opt.step()
    before = w.clone()
    calls = []

    def bad():
        calls.append(1)
        return w.pow(2).sum() * (math.inf if len(calls) == 2 else 1.0)

    with pytest.raises(ValueError, match="closure must return a finite value, got inf"):
        opt.step(bad)
    assert torch.equal(w, before)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        zo_backward(lambda: w.sum(), [w], eps=-1.0)


@pytest.mark.parametrize("fail_call, fail_at", [(1, 0), (1, 2), (2, 0), (2, 2), (2, 3)])
@pytest.mark.parametrize("master", [False, True])
def test_probe_undoes_exactly_the_shifts_made_before_a_failure(monkeypatch, fail_call,
                                                                fail_at, master):
    """The direction stream raises partway: in the +εz loop (call 1) or the −2εz loop (call 2),
    after ``fail_at`` parameters were shifted. Every parameter must come back: bit-exact with a
    master copy and for parameters never touched; replayed ones within 1 ulp of |θ| + ε|z|
    (bitwise equal to the replay arithmetic θ + εz − εz, or θ + εz − 2εz + εz). The old
    single-offset restore left the first parameters shifted (call 1) or at θ − 2εz (call 2)."""
    from kexue.estimators import zeroth

    real = zeroth._directions
    calls = []

    def failing(params, seed, method="gaussian"):
        calls.append(1)
        call = len(calls)
        for i, z in enumerate(real(params, seed, method)):
            if call == fail_call and i == fail_at:
                raise RuntimeError("direction stream failed")
            yield z

    monkeypatch.setattr(zeroth, "_directions", failing)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 5, generator=gen), torch.randn(11, generator=gen),
              torch.randn(3, 3, generator=gen), torch.randn(4, generator=gen)]
    before = [p.clone() for p in params]
    eps = 1e-2
    if master:
        opt = SeedZO(params, lr=0.0, eps=eps, master_weights=True, seed=3)
        with pytest.raises(RuntimeError, match="direction stream failed"):
            opt.step(lambda: sum(p.sum() for p in params))
        for p, b in zip(params, before):
            assert torch.equal(p, b)
        return
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(RuntimeError, match="direction stream failed"):
        zo_backward(lambda: sum(p.sum() for p in params), params, eps=eps,
                    generator=torch.Generator().manual_seed(5))  # draws `seed`
    zs = _z_of(params, seed)
    for i, (p, b, z) in enumerate(zip(params, before, zs)):
        if fail_call == 1 and i >= fail_at:  # never shifted
            assert torch.equal(p, b)
            continue
        expected = torch.add(b, z, alpha=eps)
        if fail_call == 2 and i < fail_at:  # reached θ − εz
            expected.add_(z, alpha=-2 * eps)
            expected.add_(z, alpha=eps)
        else:
            expected.add_(z, alpha=-eps)
        assert torch.equal(p, expected)
        bound = _ulp((b.to(F64).abs() + eps * z.to(F64).abs()).float())
        assert ((p.to(F64) - b.to(F64)).abs() <= bound).all()
    assert all(p.grad is None for p in params)  # nothing was accumulated
