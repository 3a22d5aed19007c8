"""Training on non-differentiable metrics: metric helpers against sklearn, both estimators
against exact expected-metric gradients, and maximize() on a real data set."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from kexue.estimators.metric import (
    PolicyGradient,
    ZerothOrder,
    accuracy,
    binary_f1,
    macro_f1,
    maximize,
)
from kexue.estimators.zeroth import zo_gradient

Z_MAX = 4.5  # per-component z-test bound at fixed seeds (two-sided normal tail ~7e-6)
F64 = torch.float64


# -- metric helpers --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn(seed):
    """Random labels, with some classes absent from y_true, y_pred or both. sklearn's
    convention: labels=range(C) (every class counts), zero_division=0 (0/0 scores 0)."""
    gen = torch.Generator().manual_seed(seed)
    c, n = 5, 1 + seed * 7
    hi_true, hi_pred = (3, 4) if seed % 2 else (c, 2)  # odd seeds: class 4 in neither
    y = torch.randint(0, hi_true, (n,), generator=gen)
    p = torch.randint(0, hi_pred, (n,), generator=gen)
    yn, pn = y.numpy(), p.numpy()
    assert accuracy(y, p).item() == pytest.approx(accuracy_score(yn, pn), abs=1e-6)
    expected = f1_score(yn, pn, labels=list(range(c)), average="macro", zero_division=0)
    assert macro_f1(y, p, c).item() == pytest.approx(expected, abs=1e-6)
    for positive in (0, 1, 4):
        expected = f1_score(yn == positive, pn == positive, average="binary", zero_division=0)
        assert binary_f1(y, p, positive).item() == pytest.approx(expected, abs=1e-6)


def test_metrics_score_a_batch_of_predictions_at_once():
    """(K, *S) predictions against S labels give K scores, each equal to its own call."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (4, 5), generator=gen)
    preds = torch.randint(0, 3, (6, 4, 5), generator=gen)
    for fn in (accuracy, functools.partial(macro_f1, num_classes=3), binary_f1):
        out = fn(y, preds)
        assert out.shape == (6,) and out.dtype == torch.get_default_dtype()
        torch.testing.assert_close(out, torch.stack([fn(y, q) for q in preds]))


def test_metrics_reject_bad_input():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="y_pred must be an integer or bool label tensor"):
        accuracy(y, torch.zeros(3))
    with pytest.raises(ValueError, match=r"y_pred must have shape \(\*B, \*\(3,\)\)"):
        accuracy(y, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y_true labels must lie in \[0, 2\), got range"):
        macro_f1(y, y, 2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        macro_f1(y, y, 0)


def test_metrics_of_an_empty_batch_of_predictions_are_empty():
    """B may hold no prediction vector: the result is an empty tensor of shape B (no reshape
    error). No labels at all (empty S) stays a ValueError, as in sklearn."""
    y = torch.tensor([0, 1])
    dtype = torch.get_default_dtype()
    for fn in (accuracy, functools.partial(macro_f1, num_classes=2), binary_f1):
        for pred, shape in ((torch.zeros(0, 2, dtype=torch.long), (0,)),
                            (torch.zeros(3, 0, 2, dtype=torch.long), (3, 0)),
                            (torch.zeros(0, 4, 2, dtype=torch.long), (0, 4))):
            out = fn(y, pred)
            assert out.shape == shape and out.dtype == dtype
        out = fn(torch.tensor(1), torch.zeros(0, dtype=torch.long))  # S = (): one label
        assert out.shape == (0,)
        assert fn(torch.tensor(1), torch.tensor([1, 0])).shape == (2,)
        for empty in (torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long)):
            with pytest.raises(ValueError, match="y_true must hold at least one label"):
                fn(torch.zeros(0, dtype=torch.long), empty)


# -- estimators against exact gradients ------------------------------------------------------


def _tiny_problem():
    """Three examples, two classes, a linear model: small enough to enumerate all 2³ joint
    predictions, so E_π[M] and its gradient are exact."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, generator=gen, dtype=F64)
    y = torch.tensor([0, 1, 1])
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 2, generator=gen, dtype=F64))
        model.bias.copy_(torch.randn(2, generator=gen, dtype=F64))
    return x, y, model


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_policy_gradient_is_unbiased_for_the_expected_metric():
    """.grad = −∇ Σ_ŷ π(ŷ) M(y, ŷ), summed over all 8 joint predictions by autograd."""
    x, y, model = _tiny_problem()
    metric = functools.partial(macro_f1, num_classes=2)
    log_probs = model(x).log_softmax(-1)  # (3, 2)
    expected = torch.zeros((), dtype=F64)
    for pred in itertools.product(range(2), repeat=3):
        pred = torch.tensor(pred)
        expected = expected + log_probs[torch.arange(3), pred].sum().exp() * metric(y, pred)
    exact = -torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected,
                                                                    model.parameters())])

    est = PolicyGradient(samples=4, generator=torch.Generator().manual_seed(1))
    draws = []
    for _ in range(400):
        model.zero_grad()
        est.backward(model, x, y, metric)
        draws.append(_grads(model))
    draws = torch.stack(draws)  # (R, P)
    z = (draws.mean(0) - exact) / (draws.std(0) / math.sqrt(len(draws)))
    assert z.abs().max() < Z_MAX


def test_zeroth_order_matches_the_smoothed_accuracy_gradient():
    """Two-class linear model, weights perturbed by σu: the logit margin moves by
    σ(u₁ − u₀)ᵀ[x, 1], a N(0, 2σ²‖[x, 1]‖²) shift, so the smoothed accuracy is
    mean_i Φ(s_i m_i / (σ√2 ‖[x_i, 1]‖)) with s_i = ±1 for y_i = 1/0 and m the margin."""
    x, y, model = _tiny_problem()
    sigma = 0.8
    xt = torch.cat([x, torch.ones(3, 1, dtype=F64)], 1)  # (n, d + 1)
    scale = sigma * math.sqrt(2) * xt.norm(dim=1)  # (n,)
    sign = 2.0 * y.to(F64) - 1
    w = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1)  # (2, d + 1)
    m = sign * (xt @ (w[1] - w[0])) / scale
    dens = torch.exp(-0.5 * m**2) / math.sqrt(2 * math.pi) * sign / scale / 3  # (n,)
    d_w1 = dens @ xt  # ∂/∂(w₁, b₁); ∂/∂(w₀, b₀) is its negative
    exact = -torch.cat([-d_w1[:2], d_w1[:2], -d_w1[2:], d_w1[2:]])  # weight (2,2), bias (2,)

    est = ZerothOrder(sigma, directions=8, generator=torch.Generator().manual_seed(2))
    draws = []
    for _ in range(300):
        model.zero_grad()
        est.backward(model, x, y, accuracy)
        draws.append(_grads(model))
    draws = torch.stack(draws)
    z = (draws.mean(0) - exact) / (draws.std(0) / math.sqrt(len(draws)))
    assert z.abs().max() < Z_MAX


def test_estimators_reject_bad_input():
    with pytest.raises(ValueError, match="samples must be an int >= 2 for baseline='loo'"):
        PolicyGradient(samples=1)
    PolicyGradient(samples=1, baseline="none")
    with pytest.raises(ValueError, match="baseline must be 'loo' or 'none'"):
        PolicyGradient(baseline="mean")
    for sigma in (0.0, -0.1, math.inf):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            ZerothOrder(sigma)
    with pytest.raises(ValueError, match="directions must be an int >= 1, got 0"):
        ZerothOrder(0.1, directions=0)
    x, y, model = _tiny_problem()
    with pytest.raises(ValueError, match="metric_fn must return a finite scalar"):
        PolicyGradient().backward(model, x, y, lambda t, p: torch.tensor(math.nan))
    with pytest.raises(ValueError, match=r"model\(x\) must return logits of shape"):
        PolicyGradient().backward(model, x, y[:2], accuracy)


class _Logits(nn.Module):
    """A "model" whose logits are its parameter, whatever x is."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x) -> torch.Tensor:
        return self.logits


def test_policy_gradient_of_a_bf16_model_matches_float32():
    """Rewards 0.950..0.956 lie within two bf16 ulps (2⁻⁸ ≈ 0.0039 at 0.95): computed in bf16
    they round to one or two values and the leave-one-out advantages are wrong. Promoted to
    float32, a bf16 model (bf16-exact logits) samples, scores and differentiates exactly as the
    float32 one; its gradient is the float32 gradient rounded to bf16."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 3, generator=gen).bfloat16()
    y = torch.randint(0, 3, (6,), generator=gen)

    def metric(t, p):
        return 0.95 + 0.001 * (p == t).sum()

    grads, means = {}, {}
    for dtype in (torch.bfloat16, torch.float32):
        model = _Logits(base.to(dtype))
        est = PolicyGradient(samples=8, generator=torch.Generator().manual_seed(4))
        means[dtype] = est.backward(model, None, y, metric)
        grads[dtype] = model.logits.grad
    assert grads[torch.bfloat16].dtype == torch.bfloat16
    assert grads[torch.float32].abs().sum() > 0  # the rewards did differ
    assert torch.equal(grads[torch.bfloat16], grads[torch.float32].bfloat16())
    for mean in means.values():
        assert mean.shape == () and mean.dtype == F64 and mean.device.type == "cpu"
    assert means[torch.bfloat16].item() == means[torch.float32].item()
    assert 0.95 <= means[torch.float32].item() <= 0.956


def test_policy_gradient_rejects_a_generator_of_another_device_type():
    """'meta' logits stand in for CUDA ones on a CPU-only machine."""
    model = nn.Linear(2, 3, device="meta")
    x, y = torch.empty(4, 2, device="meta"), torch.zeros(4, dtype=torch.long)
    est = PolicyGradient(generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator must be on the tensors' device type, got a "
                                         "generator on cpu for tensors on meta"):
        est.backward(model, x, y, accuracy)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        PolicyGradient(generator=0)


@pytest.mark.parametrize("antithetic", [False, True])
def test_zeroth_order_returns_the_mean_over_perturbed_models_only(antithetic):
    """The metric is 1 at the unperturbed weights and 0 anywhere else, so the returned mean
    reward is 0 exactly when M(θ), the one-sided baseline, is left out. The gradient is that of
    zo_gradient with baseline "value" (the same seeds)."""
    x, y, model = _tiny_problem()
    w0 = model.weight.detach().clone()

    def at_theta(t, p):
        return float(torch.equal(model.weight, w0))

    est = ZerothOrder(0.5, directions=4, antithetic=antithetic,
                      generator=torch.Generator().manual_seed(6))
    mean = est.backward(model, x, y, at_theta)
    assert mean.shape == () and mean.dtype == F64 and mean.device.type == "cpu"
    assert mean.item() == 0.0
    got = _grads(model)
    params = list(model.parameters())
    expected = zo_gradient(lambda: -accuracy(y, model(x).argmax(-1)), params, sigma=0.5,
                           num_samples=4, antithetic=antithetic,
                           generator=torch.Generator().manual_seed(6))
    model.zero_grad()
    ZerothOrder(0.5, directions=4, antithetic=antithetic,
                generator=torch.Generator().manual_seed(6)).backward(model, x, y, accuracy)
    torch.testing.assert_close(_grads(model), torch.cat([g.reshape(-1) for g in expected]),
                               rtol=0, atol=0)
    assert torch.isfinite(got).all()


# -- maximize --------------------------------------------------------------------------------


@functools.cache
def _breast_cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    return x, torch.tensor(y)


@pytest.mark.parametrize("method", ["pg", "zo"])
def test_maximize_raises_training_macro_f1(method):
    """Zero-initialised linear model (predicts one class: macro-F1 0.27); 200 Adam steps on
    batches of 64 reach > 0.95 training macro-F1 with either estimator."""
    x, y = _breast_cancer()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    batches = [(x[i], y[i]) for i in perm.split(64)]
    metric = functools.partial(macro_f1, num_classes=2)
    model = nn.Linear(30, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    with torch.no_grad():
        before = metric(y, model(x).argmax(-1)).item()
    gen = torch.Generator().manual_seed(1)
    estimator = (PolicyGradient(samples=8, generator=gen) if method == "pg"
                 else ZerothOrder(sigma=0.5, directions=4, generator=gen))
    seen = []
    history = maximize(metric, model, batches, estimator=estimator,
                       optimizer=torch.optim.Adam(model.parameters(), lr=0.05), steps=200,
                       callback=seen.append)
    with torch.no_grad():
        after = metric(y, model(x).argmax(-1)).item()
    assert before < 0.3 and after > 0.95
    assert len(history) == 200 and seen == history
    assert [h["step"] for h in history] == list(range(200))
    assert history[-1]["epoch"] == 199 // len(batches)
    assert sum(h["reward"] for h in history[-20:]) / 20 > 0.9


def test_maximize_epochs_and_bad_input():
    x, y, model = _tiny_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    est = PolicyGradient(samples=2, generator=torch.Generator().manual_seed(0))
    history = maximize(accuracy, model, [(x, y)] * 3, estimator=est, optimizer=opt, epochs=2)
    assert [(h["step"], h["epoch"]) for h in history] == [(0, 0), (1, 0), (2, 0), (3, 1),
                                                           (4, 1), (5, 1)]
    with pytest.raises(ValueError, match="data yielded no batches"):
        maximize(accuracy, model, [], estimator=est, optimizer=opt)
    with pytest.raises(ValueError, match=r"data must yield \(x, y\) pairs"):
        maximize(accuracy, model, [x], estimator=est, optimizer=opt)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        maximize(accuracy, model, [(x, y)], estimator=est, optimizer=None)
    with pytest.raises(ValueError, match="estimator must have backward"):
        maximize(accuracy, model, [(x, y)], estimator=object(), optimizer=opt)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        maximize(accuracy, model, [(x, y)], estimator=est, optimizer=opt, steps=0)
