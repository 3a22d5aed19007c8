"""Tests for kexue.train.penalties: R1, R2, the WGAN-GP gradient penalty and consensus.

References are written by hand, without autograd: for a quadratic discriminator
D(x) = ½ xᵀWx + bᵀx the input gradient is r(x) = Sx + b with S = (W + Wᵀ)/2, so

    R1 = γ/2 · mean_b ‖r_b‖²,   ∂R1/∂b = γ mean_b r_b,   ∂R1/∂W = ½(G + Gᵀ), G = γ mean_b r_b x_bᵀ
    GP = γ · mean_b (‖r(x̂_b)‖ − c)²,   ∂GP/∂b = 2γ mean_b (‖r_b‖ − c) r_b/‖r_b‖

(Mescheder et al. 2018, Gulrajani et al. 2017, kexue.fm/archives/6583). Float64 throughout.
"""

import importlib
import warnings

import pytest
import torch
from torch import nn

import kexue.train
from kexue.dynamics import consensus, dirac_gan
from kexue.train import penalties
from kexue.train.penalties import consensus_penalty, gradient_penalty, r1_penalty, r2_penalty

PENALTIES = ("consensus_penalty", "gradient_penalty", "r1_penalty", "r2_penalty")


class Quadratic(nn.Module):
    """D(x) = ½ xᵀWx + bᵀx on flattened x, one score per sample, shape (B,)."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(dim, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)  # (B, dim)
        return 0.5 * ((x @ self.weight) * x).sum(1) + x @ self.bias

    def input_grad(self, x: torch.Tensor) -> torch.Tensor:
        """r(x) = Sx + b by hand, shape (B, dim)."""
        w, b = self.weight.detach(), self.bias.detach()
        return x.reshape(x.shape[0], -1) @ (0.5 * (w + w.T)).T + b


def _linear_d():
    d = nn.Linear(3, 1).double()
    with torch.no_grad():
        d.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    return d


# -- R1 and R2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [r1_penalty, r2_penalty])
def test_r1_r2_on_quadratic_discriminator_match_hand_gradients(fn):
    d, gamma = Quadratic(4, seed=1), 0.7
    x = torch.randn(6, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = d.input_grad(x)  # (B, 4)
    pen = fn(d, x, gamma)
    torch.testing.assert_close(pen, gamma / 2 * r.pow(2).sum(1).mean(), rtol=1e-12, atol=0)
    pen.backward()
    g = gamma * (r[:, :, None] * x.reshape(6, 1, 4)).mean(0)  # ∂R/∂S = γ mean r xᵀ
    torch.testing.assert_close(d.weight.grad, 0.5 * (g + g.T), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d.bias.grad, gamma * r.mean(0), rtol=1e-12, atol=1e-14)
    assert not x.requires_grad


def test_r1_r2_on_linear_discriminator():
    d, gamma = _linear_d(), 0.6
    x = torch.randn(8, 3, dtype=torch.float64)
    w = d.weight.detach()[0]
    for fn in (r1_penalty, r2_penalty):
        d.zero_grad()
        pen = fn(d, x, gamma)
        torch.testing.assert_close(pen, gamma / 2 * w.pow(2).sum())
        pen.backward()  # ∂/∂w γ/2‖w‖² = γw
        torch.testing.assert_close(d.weight.grad[0], gamma * w)


def test_r2_keeps_a_fake_batch_that_requires_grad_in_the_graph():
    # R2 = γ/2 mean ‖Sx + b‖²: its gradient in x is γ/B · S(Sx + b) per sample.
    d, gamma = Quadratic(3, seed=3), 0.5
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(r2_penalty(d, x, gamma), x)
    s = 0.5 * (d.weight.detach() + d.weight.detach().T)
    torch.testing.assert_close(gx, gamma / 4 * d.input_grad(x.detach()) @ s.T)


# -- the gradient penalty ----------------------------------------------------------------------


@pytest.mark.parametrize("center", [1.0, 0.0, 2.5])
def test_gradient_penalty_closed_form_when_real_equals_fake(center):
    # x̂ = εx + (1 − ε)x = x for every ε: the interpolation points are known exactly.
    d, gamma = Quadratic(3, seed=4), 1.5
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = d.input_grad(x)
    norm = r.norm(dim=1)
    pen = gradient_penalty(d, x, x.clone(), gamma, center=center)
    torch.testing.assert_close(pen, gamma * (norm - center).pow(2).mean(), rtol=1e-12, atol=0)
    pen.backward()
    want_b = 2 * gamma * ((norm - center) / norm)[:, None] * r
    torch.testing.assert_close(d.bias.grad, want_b.mean(0), rtol=1e-12, atol=1e-14)


def test_gradient_penalty_at_the_interpolates_of_its_generator():
    d, gamma, seed = Quadratic(4, seed=6), 10.0, 7
    real = torch.randn(6, 4, dtype=torch.float64)
    fake = torch.randn(6, 4, dtype=torch.float64)
    pen = gradient_penalty(d, real, fake, gamma, generator=torch.Generator().manual_seed(seed))
    eps = torch.rand(6, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_hat = eps * real + (1 - eps) * fake
    want = gamma * (d.input_grad(x_hat).norm(dim=1) - 1).pow(2).mean()
    torch.testing.assert_close(pen, want, rtol=1e-12, atol=0)
    # Another stream draws other ε (the quadratic D makes the value depend on them).
    other = gradient_penalty(d, real, fake, gamma, generator=torch.Generator().manual_seed(8))
    assert (other - pen).abs() > 1e-6


def test_gradient_penalty_linear_closed_form_and_grad():
    d, gamma = _linear_d(), 2.0
    real, fake = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    w = d.weight.detach()[0]
    pen = gradient_penalty(d, real, fake, gamma, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pen, gamma * (w.norm() - 1) ** 2)
    pen.backward()
    torch.testing.assert_close(d.weight.grad[0], 2 * gamma * (w.norm() - 1) * w / w.norm())


@pytest.mark.parametrize("center", [1.0, 0.0])
def test_gradient_penalty_matches_manual_loop(center):
    d = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    real, fake = torch.randn(5, 1, 2, dtype=torch.float64), torch.randn(5, 1, 2).double()
    gamma, seed = 0.5, 123
    pen = gradient_penalty(lambda x: d(x).squeeze(-1), real, fake, gamma, center=center,
                           generator=torch.Generator().manual_seed(seed))
    eps = torch.rand(5, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    terms = []
    for b in range(5):
        xb = (eps[b] * real[b] + (1 - eps[b]) * fake[b]).requires_grad_(True)
        (g,) = torch.autograd.grad(d(xb).sum(), xb)
        terms.append((g.norm() - center) ** 2)
    torch.testing.assert_close(pen, gamma * torch.stack(terms).mean())
    pen.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d[0].parameters())


# -- consensus ---------------------------------------------------------------------------------


def test_consensus_penalty_on_tensors():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 3.0], dtype=torch.float64, requires_grad=True)
    gamma = 0.4
    pen = consensus_penalty([a @ b, -(a @ b)], [[a], [b]], gamma)  # ξ = (b, −a)
    torch.testing.assert_close(pen, gamma / 2 * (a.pow(2).sum() + b.pow(2).sum()))
    ga, gb = torch.autograd.grad(pen, [a, b])
    torch.testing.assert_close(ga, gamma * a.detach())
    torch.testing.assert_close(gb, gamma * b.detach())


def test_consensus_penalty_skips_frozen_parameters():
    torch.manual_seed(0)
    g_net, d_net = nn.Linear(2, 2).double(), nn.Linear(2, 1).double()
    g_net.bias.requires_grad_(False)  # a frozen layer
    z = torch.randn(5, 2, dtype=torch.float64)
    loss = d_net(g_net(z)).mean()
    pen = consensus_penalty([loss, -loss], [g_net.parameters(), d_net.parameters()], 0.6)
    trainable = [g_net.weight, *d_net.parameters()]
    grads = torch.autograd.grad(loss, trainable, retain_graph=True)
    want = 0.5 * 0.6 * sum(g.pow(2).sum() for g in grads)
    torch.testing.assert_close(pen, want)
    assert pen.requires_grad


# -- bad input ---------------------------------------------------------------------------------


def _calls(d, x):
    return {
        "r1_penalty": lambda **kw: r1_penalty(d, x, **{"gamma": 1.0, **kw}),
        "r2_penalty": lambda **kw: r2_penalty(d, x, **{"gamma": 1.0, **kw}),
        "gradient_penalty": lambda **kw: gradient_penalty(d, x, x, **{"gamma": 1.0, **kw}),
        "consensus_penalty": lambda **kw: consensus_penalty(
            [d(x).sum()], [d.parameters()], **{"gamma": 1.0, **kw}),
    }


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("gamma", [-1.0, float("nan"), float("inf"), True, "1"])
def test_bad_gamma_raises_naming_it(name, gamma):
    call = _calls(_linear_d(), torch.randn(4, 3, dtype=torch.float64))[name]
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        call(gamma=gamma)
    assert call(gamma=0).item() == 0.0


def test_bad_arguments_raise_naming_them():
    d, x = _linear_d(), torch.randn(4, 3, dtype=torch.float64)
    for center in (-0.5, float("nan"), False):
        with pytest.raises(ValueError, match="center"):
            gradient_penalty(d, x, x, 1.0, center=center)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        gradient_penalty(d, x, x, 1.0, generator=0)
    with pytest.raises(ValueError, match="fake_x must have the shape"):
        gradient_penalty(d, x, x[:2], 1.0)
    with pytest.raises(ValueError, match="real_x must be a floating-point tensor"):
        r1_penalty(d, x.long(), 1.0)
    with pytest.raises(ValueError, match="fake_x must be a non-empty batch"):
        r2_penalty(d, x[:0], 1.0)
    with pytest.raises(ValueError, match="discriminator must return scores that depend"):
        r1_penalty(lambda x: torch.ones(x.shape[0]), x, 1.0)
    a = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="losses\\[1\\]"):
        consensus_penalty([a.sum(), a.sum()], [[a], [torch.zeros(2, requires_grad=True)]], 1.0)
    with pytest.raises(ValueError, match="losses\\[0\\] must be a scalar"):
        consensus_penalty([a * 2], [[a]], 1.0)
    with pytest.raises(ValueError, match="one length"):
        consensus_penalty([a.sum()], [[a], [a]], 1.0)


@pytest.mark.parametrize("fn", [
    lambda d, x: r1_penalty(d, x, 1.0),
    lambda d, x: r2_penalty(d, x, 1.0),
    lambda d, x: gradient_penalty(d, x, x.flip(0), 1.0),
])
def test_penalties_reject_discriminators_without_one_score_per_sample(fn):
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"discriminator must return one score per sample, "
                                         r"shape \(4,\) or \(4, 1\), got \(\)"):
        fn(lambda x: (x @ w).mean(), x)  # a batch mean would shrink the penalty by B²
    with pytest.raises(ValueError, match=r"discriminator must return one score .* got \(4, 2\)"):
        fn(lambda x: torch.stack([x @ w, x @ w], dim=1), x)
    assert fn(lambda x: (x @ w)[:, None], x).ndim == 0  # (B, 1) is fine


# -- the old names -----------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["kexue.dynamics.games", "kexue.dynamics"])
@pytest.mark.parametrize("name", PENALTIES)
def test_old_names_warn_and_return_the_same_function(module, name):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} moved to "
                                                rf"kexue\.train\.penalties\.{name}"):
        old = getattr(mod, name)
    assert old is getattr(penalties, name) is getattr(kexue.train, name)
    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match="kexue.train.penalties"):
        exec(f"from {module} import {name} as imported", namespace)
    assert namespace["imported"] is old
    assert name in mod.__all__ if module == "kexue.dynamics" else name not in mod.__all__


def test_old_discriminator_alias_warns_and_unknown_names_still_fail():
    import kexue.dynamics.games as games

    with pytest.warns(DeprecationWarning, match="kexue.train.penalties.Discriminator"):
        assert games.Discriminator is penalties.Discriminator
    for mod in (games, importlib.import_module("kexue.dynamics"), kexue.train):
        with pytest.raises(AttributeError, match="no_such_name"):
            mod.no_such_name  # noqa: B018


def test_new_names_are_exported_and_the_games_use_them_without_warning():
    assert set(PENALTIES) <= set(kexue.train.__all__)
    assert set(PENALTIES) == set(penalties.__all__)
    phi = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for penalty in ("r1", "r2", "gp"):
            dirac_gan(penalty=penalty, gamma=1.0).gradient(phi)
        consensus(dirac_gan(), 1.0).gradient(phi)
