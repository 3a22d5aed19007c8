"""Explicit gradient regularisation: the three backends against a full-Hessian reference, the
extra-gradient's O(λ²) error, Smith et al.'s minibatch penalty by hand, the midpoint step's
O(h²) tracking of the plain flow, any optimizer, exact restores, bad input and the rename of
the result record (GradientPenalty → RegularizedStep)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from kexue.dynamics.flow import flow_error, modified_loss
from kexue.train.regularizers import (
    BACKENDS,
    RegularizedStep,
    gradient_penalty_loss,
    implicit_lambda,
    midpoint_backward,
    minibatch_regularized_backward,
    regularized_backward,
)

F64 = torch.float64


def _problem(seed: int = 0):
    """A tiny float64 MLP (4 parameter tensors) on fixed data, its closure, and the same loss
    as a function of the flat parameter vector."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    x = torch.randn(8, 3, generator=gen, dtype=F64)
    y = torch.randn(8, 2, generator=gen, dtype=F64)

    def closure():
        return nn.functional.mse_loss(model(x), y)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def flat_loss(flat):
        chunks = flat.split([math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return nn.functional.mse_loss(functional_call(model, params, (x,)), y)

    return model, closure, flat_loss


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _reference(flat_loss, theta: torch.Tensor, lam: float):
    """g + 2λHg with H from torch.autograd.functional.hessian (independent of the library)."""
    g = torch.autograd.functional.jacobian(flat_loss, theta)
    hess = torch.autograd.functional.hessian(flat_loss, theta)  # (d, d)
    return g, g + 2 * lam * hess @ g


def _expected(backend: str, lam: float) -> torch.Tensor:
    """What each backend computes, from the flat reference: g + 2λHg (exact or to O(ε²)), or
    ∇L(θ + 2λg) for the extra gradient."""
    model, _, flat_loss = _problem()
    theta = _flat(p.detach() for p in model.parameters())
    g, ref = _reference(flat_loss, theta, lam)
    if backend == "extra_gradient":
        return torch.func.grad(flat_loss)(theta + 2 * lam * g)
    return ref


def _grad_with(backend: str, lam: float, eps: float | None = None, seed: int = 0):
    model, closure, _ = _problem(seed)
    out = regularized_backward(closure, model.parameters(), lam, backend=backend, eps=eps)
    return _flat(p.grad for p in model.parameters()), out


# -- exactness against the Hessian reference ----------------------------------------------


@pytest.mark.parametrize(("backend", "tol"), [("double_backprop", 1e-12),
                                              ("finite_difference", 1e-8)])
def test_regularized_gradient_matches_full_hessian_reference(backend, tol):
    lam = 0.3
    model, _, flat_loss = _problem()
    theta = _flat(p.detach() for p in model.parameters())
    g, ref = _reference(flat_loss, theta, lam)
    grad, out = _grad_with(backend, lam)
    torch.testing.assert_close(grad, ref, rtol=tol, atol=tol)
    assert isinstance(out, RegularizedStep) and out.lam == lam and out.variance is None
    torch.testing.assert_close(out.loss, flat_loss(theta), rtol=1e-14, atol=0.0)
    torch.testing.assert_close(out.grad_sq_norm, g @ g, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(out.objective, flat_loss(theta) + lam * g @ g)


def test_finite_difference_hvp_matches_double_backprop_with_second_order_error():
    """Default ε (6e-6 in float64): agreement to ~1e-10. Explicit ε: the error of the central
    difference is O(ε²), so it quarters when ε halves."""
    exact, _ = _grad_with("double_backprop", 1.0)
    fd, _ = _grad_with("finite_difference", 1.0)
    torch.testing.assert_close(fd, exact, rtol=1e-9, atol=1e-9)
    errs = [(_grad_with("finite_difference", 1.0, eps=e)[0] - exact).norm().item()
            for e in (4e-2, 2e-2, 1e-2)]
    for coarse, fine in zip(errs, errs[1:]):
        assert 3.5 <= coarse / fine <= 4.5


def test_extra_gradient_error_is_second_order_in_lambda():
    """∇L(θ + 2λg) − (g + 2λHg) = 2λ² ∇³L[g, g] + O(λ³): ratio 4 per halving of λ (measured
    4.15, 4.08), and the leading term itself, from nested autograd jvp/hvp."""
    model, _, flat_loss = _problem()
    theta = _flat(p.detach() for p in model.parameters())
    g = torch.func.grad(flat_loss)(theta)
    # ∇³L[g, g] = d²/ds² ∇L(θ + s g) at s = 0
    third = torch.autograd.functional.jvp(
        lambda t: torch.autograd.functional.hvp(flat_loss, t, g, create_graph=True)[1],
        theta, g)[1]
    errs = []
    for lam in (1e-2, 5e-3, 2.5e-3):
        exact, _ = _grad_with("double_backprop", lam)
        approx, _ = _grad_with("extra_gradient", lam)
        diff = approx - exact
        errs.append(diff.norm().item())
        leading = 2 * lam**2 * third
        # the remainder is O(λ³): relative to the leading term O(λ) (measured ≈ 10λ)
        assert (diff - leading).norm() <= 15 * lam * leading.norm()
    for coarse, fine in zip(errs, errs[1:]):
        assert 3.5 <= coarse / fine <= 4.5


def test_backends_are_exact_for_a_quadratic_loss():
    """For least squares ∇³L = 0: the extra gradient and the central difference are exact."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=gen, dtype=F64)
    y = torch.randn(6, generator=gen, dtype=F64)
    w0 = torch.randn(3, generator=gen, dtype=F64)
    g = x.T @ (x @ w0 - y) / 6
    hess = x.T @ x / 6
    lam = 0.7
    for backend in BACKENDS:
        w = w0.clone().requires_grad_()
        regularized_backward(lambda w=w: 0.5 * (x @ w - y).pow(2).mean(), [w], lam,
                             backend=backend)
        torch.testing.assert_close(w.grad, g + 2 * lam * hess @ g, rtol=1e-9, atol=1e-9)


def test_gradient_penalty_loss_backward_equals_regularized_backward():
    lam = 0.2
    exact, _ = _grad_with("double_backprop", lam)
    model, closure, _ = _problem()
    gradient_penalty_loss(closure(), model.parameters(), lam).backward()
    torch.testing.assert_close(_flat(p.grad for p in model.parameters()), exact,
                               rtol=1e-13, atol=1e-13)


def test_implicit_lambda_reproduces_the_modified_loss_of_the_flow_module():
    """λ = h/4: the written gradient is ∇L̃ of kexue.dynamics.flow.modified_loss."""
    h = 0.1
    assert implicit_lambda(h) == 0.025
    model, _, flat_loss = _problem()
    theta = _flat(p.detach() for p in model.parameters())
    grad, _ = _grad_with("double_backprop", implicit_lambda(h))
    torch.testing.assert_close(grad, torch.func.grad(modified_loss(flat_loss, h))(theta),
                               rtol=1e-12, atol=1e-12)


def test_lambda_zero_is_plain_backward():
    model, closure, _ = _problem()
    closure().backward()
    plain = _flat(p.grad for p in model.parameters())
    for backend in BACKENDS:
        torch.testing.assert_close(_grad_with(backend, 0.0)[0], plain, rtol=0.0, atol=0.0)


# -- minibatch (SGD) penalty ---------------------------------------------------------------


def test_minibatch_penalty_by_hand():
    """Two one-point batches L_k = ½(a_k w − b_k)², a = (1, 2), b = (1, 0), at w = 1:
    g = (0, 4), H = (1, 4). ∇[(1/2) Σ_k (L_k + λ g_k²)] = ½ Σ_k g_k(1 + 2λH_k) = 2 + 16λ = 6
    for λ = ¼; mean g_k² = 8, ‖mean g_k‖² = 4, variance 4; mean L_k = 1."""
    for backend in BACKENDS:
        w = torch.ones((), dtype=F64, requires_grad=True)
        closures = [lambda a=a, b=b, w=w: 0.5 * (a * w - b) ** 2
                    for a, b in ((1.0, 1.0), (2.0, 0.0))]
        out = minibatch_regularized_backward(closures, [w], 0.25, backend=backend)
        torch.testing.assert_close(w.grad, torch.tensor(6.0, dtype=F64), rtol=1e-9, atol=1e-9)
        assert out.loss.item() == 1.0 and out.grad_sq_norm.item() == 8.0
        assert out.variance.item() == 4.0 and out.objective.item() == 3.0


def test_minibatch_penalty_equals_smith_formula_and_its_variance_form():
    """L + (λ/m) Σ‖∇L_k‖² = L + λ‖∇L‖² + (λ/m) Σ‖∇L_k − ∇L‖², differentiated by the Hessian
    reference of the full tiny model on 4 microbatches of 2 points."""
    lam = 0.05
    model, _, _ = _problem()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=gen, dtype=F64)
    y = torch.randn(8, 2, generator=gen, dtype=F64)
    batches = list(zip(x.split(2), y.split(2)))  # 4 × ((2, 3), (2, 2))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = _flat(p.detach() for p in model.parameters())

    def batch_loss(flat, xb, yb):
        chunks = flat.split([math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return nn.functional.mse_loss(functional_call(model, params, (xb,)), yb)

    def smith(flat):
        grads = [torch.func.grad(batch_loss)(flat, xb, yb) for xb, yb in batches]
        full = torch.stack(grads).mean(0)
        mean_loss = torch.stack([batch_loss(flat, xb, yb) for xb, yb in batches]).mean()
        variance = torch.stack([(gk - full).pow(2).sum() for gk in grads]).mean()
        return mean_loss + lam * full @ full + lam * variance

    ref = torch.autograd.functional.jacobian(smith, theta)
    out = minibatch_regularized_backward(
        [lambda xb=xb, yb=yb: nn.functional.mse_loss(model(xb), yb) for xb, yb in batches],
        model.parameters(), lam)
    torch.testing.assert_close(_flat(p.grad for p in model.parameters()), ref,
                               rtol=1e-12, atol=1e-12)
    grads = [torch.func.grad(batch_loss)(theta, xb, yb) for xb, yb in batches]
    full = torch.stack(grads).mean(0)
    torch.testing.assert_close(out.variance, torch.stack([(gk - full).pow(2).sum()
                                                          for gk in grads]).mean())


# -- midpoint step -------------------------------------------------------------------------


def test_midpoint_step_tracks_plain_flow_to_second_order():
    """SGD(lr=h) on ∇L(θ − (h/2)∇L) is the explicit midpoint method: error against the plain
    gradient flow at T = 1 quarters when h halves (GD's only halves)."""

    def loss(theta):
        return 0.5 * (theta[0] * theta[1] - 1) ** 2 + 0.05 * torch.sin(theta[0] + 2 * theta[1])

    errs = []
    for h in (0.04, 0.02, 0.01):
        theta = nn.Parameter(torch.tensor([1.5, 0.2], dtype=F64))
        opt = torch.optim.SGD([theta], lr=h)
        iterates = [theta.detach().clone()]
        for _ in range(round(1.0 / h)):
            opt.zero_grad()
            midpoint_backward(lambda theta=theta: loss(theta), [theta], h)
            opt.step()
            iterates.append(theta.detach().clone())
        errs.append(flow_error(torch.stack(iterates), loss, h)[-1].item())
    for coarse, fine in zip(errs, errs[1:]):
        assert 3.5 <= coarse / fine <= 4.5


def test_midpoint_gradient_by_hand():
    """L = ½ a w²: ∇L(w − (h/2) a w) = a w (1 − h a / 2)."""
    w = torch.tensor(2.0, dtype=F64, requires_grad=True)
    loss = midpoint_backward(lambda: 0.5 * 3.0 * w**2, [w], 0.1)
    assert loss.item() == 6.0 and w.item() == 2.0
    torch.testing.assert_close(w.grad, torch.tensor(3.0 * 2.0 * (1 - 0.1 * 3.0 / 2), dtype=F64))


# -- any optimizer, exact restores, .grad semantics ----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_and_adam_step_on_the_regularized_gradient(backend):
    """The optimizer only reads .grad: SGD steps by lr·grad, Adam's first step by lr·sign."""
    lam, lr = 0.1, 0.01
    ref = _expected(backend, lam)
    for make in (lambda ps: torch.optim.SGD(ps, lr=lr),
                 lambda ps: torch.optim.Adam(ps, lr=lr, eps=1e-12)):
        model, closure, _ = _problem()
        before = _flat(p.detach() for p in model.parameters()).clone()
        opt = make(model.parameters())
        regularized_backward(closure, model.parameters(), lam, backend=backend)
        opt.step()
        step = before - _flat(p.detach() for p in model.parameters())
        if isinstance(opt, torch.optim.SGD):
            expected = lr * ref
        else:  # Adam's first step: lr · m̂ / (√v̂ + eps) = lr · sign(g)
            expected = lr * ref.sign()
        torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)


def test_adam_training_with_penalty_lowers_the_penalised_objective():
    model, closure, _ = _problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    first = None
    for _ in range(40):
        opt.zero_grad()
        out = regularized_backward(closure, model.parameters(), 0.05,
                                   backend="finite_difference")
        first = out.objective if first is None else first
        opt.step()
    assert out.objective < 0.5 * first


@pytest.mark.parametrize("backend", ["finite_difference", "extra_gradient", "midpoint"])
def test_probes_restore_parameters_bit_for_bit(backend):
    model, closure, _ = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    if backend == "midpoint":
        midpoint_backward(closure, model.parameters(), 0.3)
    else:
        regularized_backward(closure, model.parameters(), 0.3, backend=backend)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)

    calls = {"n": 0}

    def failing():
        calls["n"] += 1
        if calls["n"] == 2:  # inside the first probe, with the parameters shifted
            raise RuntimeError("boom")
        return closure()

    with pytest.raises(RuntimeError, match="boom"):
        if backend == "midpoint":
            midpoint_backward(failing, model.parameters(), 0.3)
        else:
            regularized_backward(failing, model.parameters(), 0.3, backend=backend)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)


def test_grad_accumulates_and_skips_frozen_and_unused_parameters():
    lam = 0.1
    model, closure, _ = _problem()
    unused = nn.Parameter(torch.zeros(3, dtype=F64))
    frozen = nn.Parameter(torch.zeros(2, dtype=F64), requires_grad=False)
    for backend in BACKENDS:
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        regularized_backward(closure, [*model.parameters(), unused, frozen], lam,
                             backend=backend)
        torch.testing.assert_close(_flat(p.grad for p in model.parameters()),
                                   _expected(backend, lam) + 1, rtol=1e-9, atol=1e-9)
        assert unused.grad is None and frozen.grad is None


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0.0, -1.0, math.nan, math.inf, True])
def test_bad_step_size(h):
    with pytest.raises(ValueError, match="h must be a finite number > 0"):
        implicit_lambda(h)
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="h must be a finite number > 0"):
        midpoint_backward(lambda: w.sum(), [w], h)


def test_bad_arguments():
    model, closure, _ = _problem()
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0, got -0\.1"):
        regularized_backward(closure, params, -0.1)
    with pytest.raises(ValueError, match="lam must be"):
        gradient_penalty_loss(closure(), params, math.nan)
    with pytest.raises(ValueError, match="lam must be"):
        minibatch_regularized_backward([closure], params, -1.0)
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'hessian'"):
        regularized_backward(closure, params, 0.1, backend="hessian")
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        regularized_backward(closure, params, 0.1, backend="finite_difference", eps=0.0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        minibatch_regularized_backward([closure], params, 0.1, eps=math.inf)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0, got True"):
        regularized_backward(closure, params, True)
    with pytest.raises(ValueError, match="closures must hold at least one"):
        minibatch_regularized_backward([], params, 0.1)
    with pytest.raises(ValueError, match="params must hold at least one tensor"):
        regularized_backward(closure, [], 0.1)
    with pytest.raises(ValueError, match="loss returned by closure must be a scalar"):
        regularized_backward(lambda: model(torch.ones(2, 3, dtype=F64)), params, 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_that_does_not_depend_on_params(backend):
    model, _, _ = _problem()
    params = list(model.parameters())
    other = torch.ones(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="loss returned by closure does not depend on params"):
        regularized_backward(lambda: torch.tensor(1.0), params, 0.1, backend=backend)
    with pytest.raises(ValueError, match="loss returned by closure does not depend on params"):
        regularized_backward(lambda: other.pow(2).sum(), params, 0.1, backend=backend)
    with pytest.raises(ValueError, match="loss passed as loss does not depend on params"):
        gradient_penalty_loss(other.pow(2).sum(), params, 0.1)
    assert all(p.grad is None for p in params)


# -- review fixes ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tensor_passed_twice_gets_its_gradient_once(backend):
    def run(params_of):
        v = torch.tensor([0.3, -1.2, 0.7], dtype=F64, requires_grad=True)
        out = regularized_backward(lambda: (v.sin() * v).sum(), params_of(v), 0.1,
                                   backend=backend)
        return v.grad, out.grad_sq_norm

    once, twice = run(lambda v: [v]), run(lambda v: [v, v])
    torch.testing.assert_close(twice[0], once[0], rtol=0, atol=0)
    torch.testing.assert_close(twice[1], once[1], rtol=0, atol=0)


def test_finite_difference_survives_an_underflowing_grad_norm():
    # ‖g‖² = 3e-46 underflows to 0 in float32 while g = 1e-23 ≠ 0.
    def grad_of(backend):
        w = torch.zeros(3, requires_grad=True)
        regularized_backward(lambda: 1e-23 * torch.exp(w).sum(), [w], 0.1, backend=backend)
        return w.grad

    fd, exact = grad_of("finite_difference"), grad_of("double_backprop")
    assert torch.isfinite(fd).all()
    torch.testing.assert_close(fd, exact, rtol=1e-5, atol=0)


def test_finite_difference_with_zero_gradient_returns_zero():
    w = torch.zeros(3, dtype=F64, requires_grad=True)
    regularized_backward(lambda: (w**2).sum(), [w], 0.1, backend="finite_difference")
    assert torch.equal(w.grad, torch.zeros(3, dtype=F64))


def test_sq_norm_accumulates_in_the_widest_gradient_dtype():
    a = torch.ones(2, dtype=torch.float32, requires_grad=True)  # params[0] is float32
    b = torch.ones(1, dtype=F64, requires_grad=True)
    c = 1 + 1e-10  # lost in float32

    def closure():
        return a.double().sum() + c * b.sum()

    out = regularized_backward(closure, [a, b], 0.0)
    assert out.grad_sq_norm.dtype == F64
    torch.testing.assert_close(out.grad_sq_norm, torch.tensor(2 + c * c, dtype=F64),
                               rtol=1e-15, atol=0)


# -- the rename --------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["kexue.train", "kexue.train.regularizers"])
def test_gradient_penalty_record_is_renamed_regularized_step(module):
    import importlib

    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=r"GradientPenalty was renamed RegularizedStep"):
        old = mod.GradientPenalty
    assert old is RegularizedStep
    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match="kexue.train.RegularizedStep"):
        exec(f"from {module} import GradientPenalty", namespace)
    assert namespace["GradientPenalty"] is RegularizedStep
    import kexue.train

    assert kexue.train.RegularizedStep is RegularizedStep
    assert "RegularizedStep" in kexue.train.__all__
    assert ("GradientPenalty" in mod.__all__) == (module == "kexue.train")  # 0.1's import *
