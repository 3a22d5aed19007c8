"""Tests for kexue.dynamics.games: Dirac-GAN dynamics and its regularised games.

The penalties themselves (R1, R2, WGAN-GP, consensus term) are tested in test_penalties.py.

Default setting (Mescheder et al. 2018, kexue.fm/archives/6583): Dirac-GAN with the standard
GAN loss f(t) = −log(1 + e^{−t}) (f'(0) = 1/2), simultaneous GD, 500 steps of size 0.2 from
(θ, ψ) = (1, 1), distance = ‖(θ, ψ)‖ at the end.
"""

import math

import pytest
import torch

from kexue.dynamics.games import (
    DIRAC_LOSSES,
    Game,
    alternating_gd,
    bilinear_game,
    consensus,
    dirac_gan,
    eigenvalues_at,
    jacobian,
    simultaneous_gd,
    with_penalty,
)

LR, STEPS, START = 0.2, 500, (1.0, 1.0)
F0 = 0.5  # f'(0) for f(t) = −log(1 + e^{−t})
ORIGIN = torch.zeros(2, dtype=torch.float64)


def final_distance(game: Game, **kw) -> float:
    return simultaneous_gd(game, START, LR, STEPS, **kw)[-1].norm().item()


def sorted_eig(values: list[complex]) -> torch.Tensor:
    return torch.tensor(sorted(values, key=lambda z: (z.real, z.imag)), dtype=torch.complex128)


# -- the field ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", sorted(DIRAC_LOSSES))
def test_dirac_field_matches_closed_form(loss):
    sig = torch.sigmoid
    phis = torch.randn(5, 2, dtype=torch.float64)
    for theta, psi in phis:
        if loss == "gan":  # v = (−ψ f'(θψ), θ f'(θψ)), f'(t) = σ(−t)
            want = [-psi * sig(-theta * psi), theta * sig(-theta * psi)]
        elif loss == "nsgan":  # L_G = −f(−ψθ): ∇_θ = ψ f'(−ψθ) = ψ σ(ψθ)
            want = [-psi * sig(theta * psi), theta * sig(-theta * psi)]
        else:  # f(t) = t
            want = [-psi, theta]
        got = dirac_gan(loss)(torch.stack([theta, psi]))
        torch.testing.assert_close(got, torch.stack(want), rtol=1e-12, atol=1e-12)


def test_gradient_matches_closed_form_xi_and_keeps_dtype():
    # ξ = (∇_θ L_G, ∇_ψ L_D) = (ψ f'(θψ), −θ f'(θψ)), f'(t) = σ(−t), for the GAN Dirac-GAN.
    game = dirac_gan()
    theta, psi = 0.3, -0.7
    s = 1.0 / (1.0 + math.exp(theta * psi))  # σ(−θψ)
    phi = torch.tensor([theta, psi])
    xi = game.gradient(phi)
    assert xi.dtype == torch.float32 and not xi.requires_grad
    torch.testing.assert_close(xi, torch.tensor([psi * s, -theta * s]))
    assert not game.field(phi).requires_grad


def test_gradient_with_create_graph_carries_a_graph_even_for_a_plain_phi():
    # As documented: create_graph=True gives a graph-carrying result whether or not phi
    # requires grad; create_graph=False gives a detached one.
    game = dirac_gan()
    phi = torch.tensor([0.3, -0.7], dtype=torch.float64)
    assert game.gradient(phi, create_graph=True).requires_grad
    assert not game.gradient(phi).requires_grad


def test_unregularised_field_is_orthogonal_to_phi():
    # φ·v = −θψf' + ψθf' = 0, so Euler steps can only move outwards.
    phis = torch.randn(20, 2, dtype=torch.float64) * 3
    dots = torch.stack([phi @ dirac_gan()(phi) for phi in phis])
    torch.testing.assert_close(dots, torch.zeros(20, dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("penalty,closed_form", [
    ("r1", lambda psi, g: g / 2 * psi**2),
    ("r2", lambda psi, g: g / 2 * psi**2),
    ("gp", lambda psi, g: g * (psi.abs() - 1) ** 2),
])
def test_dirac_penalties_add_closed_form_to_loss_d(penalty, closed_form):
    gamma = 0.7
    plain, reg = dirac_gan(), dirac_gan(penalty=penalty, gamma=gamma)
    theta, psi = torch.tensor([0.4], dtype=torch.float64), torch.tensor([-1.3], dtype=torch.float64)
    diff = reg.loss_d(theta, psi) - plain.loss_d(theta, psi)
    torch.testing.assert_close(diff, closed_form(psi, gamma).sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reg.loss_g(theta, psi), plain.loss_g(theta, psi))


def test_consensus_field_is_v_minus_gamma_grad_half_norm_sq():
    gamma = 0.8

    def v(phi):  # the closed-form GAN field
        t, p = phi
        return torch.stack([-p * torch.sigmoid(-t * p), t * torch.sigmoid(-t * p)])

    game = consensus(dirac_gan(), gamma)
    for phi in torch.randn(5, 2, dtype=torch.float64):
        x = phi.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(0.5 * v(x).pow(2).sum(), x)
        torch.testing.assert_close(game(phi), v(phi) - gamma * g, rtol=1e-12, atol=1e-12)


# -- the headline numbers --------------------------------------------------------------------


def test_unregularised_simultaneous_gd_spirals_out_monotonically():
    traj = simultaneous_gd(dirac_gan(), START, LR, STEPS)
    assert traj.shape == (STEPS + 1, 2) and traj.dtype == torch.float64
    r = traj.norm(dim=1)
    assert r[-1] >= 0.5
    assert bool((r[1:] > r[:-1]).all())  # ‖φ_{k+1}‖² = ‖φ_k‖² + h²‖v_k‖²
    torch.testing.assert_close(r[1:] ** 2 - r[:-1] ** 2,
                               LR**2 * torch.stack([dirac_gan()(p).pow(2).sum()
                                                    for p in traj[:-1]]))
    assert r[-1] > 2 * r[0]


def test_alternating_gd_neither_converges_nor_diverges():
    r_alt = alternating_gd(dirac_gan(), START, LR, STEPS).norm(dim=1)
    r0 = math.sqrt(2)
    assert 0.9 * r0 < r_alt.min() and r_alt.max() < 1.1 * r0  # measured band [1.406, 1.489]
    r_sim = simultaneous_gd(dirac_gan(), START, LR, STEPS).norm(dim=1)
    assert r_sim[-1] > 2 * r_alt.max()


def test_one_centred_gradient_penalty_does_not_converge():
    for gamma in (0.3, 1.0):
        assert final_distance(dirac_gan(penalty="gp", gamma=gamma)) >= 0.5


def test_r1_converges():
    assert final_distance(dirac_gan(penalty="r1", gamma=0.3)) < 1e-4  # measured 2.6e-6
    assert final_distance(dirac_gan(penalty="r1", gamma=1.0)) < 1e-12  # measured 9.5e-22


def test_consensus_optimisation_converges():
    assert final_distance(consensus(dirac_gan(), 1.0)) < 1e-8  # measured 2.6e-10


# -- Jacobian eigenvalues ----------------------------------------------------------------------


def test_unregularised_eigenvalues_are_pure_imaginary():
    lam = eigenvalues_at(dirac_gan(), ORIGIN)
    torch.testing.assert_close(lam, sorted_eig([-F0 * 1j, F0 * 1j]), rtol=0, atol=1e-12)
    torch.testing.assert_close(jacobian(dirac_gan(), ORIGIN),
                               torch.tensor([[0.0, -F0], [F0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("penalty", ["r1", "r2"])
@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_r1_eigenvalues_closed_form(penalty, gamma):
    # R1 adds γ/2 ψ² to L_D, so J = [[0, −a], [a, −γ]] (a = f'(0)); det(J − λ) = λ² + γλ + a²,
    # λ = −γ/2 ± √(γ²/4 − a²): complex for γ < 2a = 1, real for γ > 1.
    root = complex(gamma**2 / 4 - F0**2) ** 0.5
    want = sorted_eig([-gamma / 2 + root, -gamma / 2 - root])
    lam = eigenvalues_at(dirac_gan(penalty=penalty, gamma=gamma), ORIGIN)
    torch.testing.assert_close(lam, want, rtol=0, atol=1e-12)


def test_consensus_and_wgan_eigenvalues():
    gamma = 1.0
    lam = eigenvalues_at(consensus(dirac_gan(), gamma), ORIGIN)
    want = sorted_eig([-gamma * F0**2 - F0 * 1j, -gamma * F0**2 + F0 * 1j])
    torch.testing.assert_close(lam, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(eigenvalues_at(dirac_gan("wgan"), ORIGIN),
                               sorted_eig([-1j, 1j]), rtol=0, atol=1e-12)


# -- the bilinear game -------------------------------------------------------------------------


def test_bilinear_game_closed_forms():
    a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    mu = 0.3
    lam = eigenvalues_at(bilinear_game(a, mu, mu), torch.zeros(4, dtype=torch.float64))
    want = sorted_eig([-mu + s * sv * 1j for sv in (2.0, 0.5) for s in (1, -1)])
    torch.testing.assert_close(lam, want, rtol=0, atol=1e-12)

    game, h = bilinear_game(torch.eye(1, dtype=torch.float64)), 0.2
    r = simultaneous_gd(game, START, h, 50).norm(dim=1)
    torch.testing.assert_close(r, math.sqrt(2) * (1 + h**2) ** (torch.arange(51) / 2).double())
    x, y = alternating_gd(game, START, h, STEPS).T
    q = x**2 + y**2 + h * x * y  # the conserved quantity of alternating GD
    torch.testing.assert_close(q, torch.full_like(q, 2 + h), rtol=1e-12, atol=1e-12)


# -- TTUR --------------------------------------------------------------------------------------


def test_ttur_matches_simultaneous_when_equal_and_steps_each_player():
    game = dirac_gan()
    same = simultaneous_gd(game, START, lr_g=LR, lr_d=LR, steps=50)
    assert torch.equal(same, simultaneous_gd(game, START, LR, 50))
    lr_g, lr_d = 0.1, 0.4
    traj = simultaneous_gd(game, START, steps=STEPS, lr_g=lr_g, lr_d=lr_d)
    assert torch.isfinite(traj).all()
    xi = game.gradient(traj[0])
    torch.testing.assert_close(traj[1], traj[0] - torch.tensor([lr_g, lr_d]).double() * xi)
    # TTUR alone does not fix the Dirac-GAN; with R1 it converges (measured 1.9e-6).
    assert final_distance(game, lr_g=lr_g, lr_d=lr_d) >= 0.5
    assert final_distance(dirac_gan(penalty="r1", gamma=1.0), lr_g=lr_g, lr_d=lr_d) < 1e-4


def test_alternating_gd_updates_discriminator_first():
    game = dirac_gan()
    traj = alternating_gd(game, START, LR, 1, d_steps=2)
    phi = torch.tensor(START, dtype=torch.float64)
    for _ in range(2):
        phi[1] -= LR * game.gradient(phi)[1]
    phi[0] -= LR * game.gradient(phi)[0]
    torch.testing.assert_close(traj[1], phi)


# -- composing games ---------------------------------------------------------------------------


def test_with_penalty_on_generator():
    game = with_penalty(dirac_gan(), penalty_g=lambda t, p: (t**2).sum())
    phi = torch.tensor([0.3, 0.2], dtype=torch.float64)
    torch.testing.assert_close(game.gradient(phi), dirac_gan().gradient(phi)
                               + torch.tensor([0.6, 0.0], dtype=torch.float64))


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,name", [
    ({"lr": 0.0}, "lr"),
    ({"lr": -0.1}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"lr": True}, "lr"),
    ({"lr": 0.1, "lr_d": 0.0}, "lr_d"),
    ({"lr": None, "lr_g": 0.1}, "lr"),
    ({"lr": 0.1, "steps": -1}, "steps"),
    ({"lr": 0.1, "steps": 2.5}, "steps"),
    ({"lr": 0.1, "phi0": [1.0, 1.0, 1.0]}, "phi0"),
    ({"lr": 0.1, "phi0": torch.ones(1, 2)}, "phi0"),
])
@pytest.mark.parametrize("dynamics", [simultaneous_gd, alternating_gd])
def test_dynamics_reject_bad_arguments(dynamics, kwargs, name):
    kw = {"phi0": START, "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        dynamics(dirac_gan(), **kw)


def test_bad_games_raise():
    with pytest.raises(ValueError, match="gamma"):
        dirac_gan(penalty="r1", gamma=-1.0)
    with pytest.raises(ValueError, match="loss"):
        dirac_gan("lsgan")
    with pytest.raises(ValueError, match="penalty"):
        dirac_gan(penalty="r3", gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        consensus(dirac_gan(), -0.5)
    with pytest.raises(ValueError, match="center"):
        dirac_gan(penalty="gp", gamma=1.0, center=float("nan"))
    with pytest.raises(ValueError, match="reg_d"):
        bilinear_game(torch.eye(2), reg_d=True)
    with pytest.raises(ValueError, match="matrix"):
        bilinear_game(torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim_d"):
        Game(lambda t, p: t.sum(), lambda t, p: p.sum(), 1, 0)
    with pytest.raises(ValueError, match="dim_g"):
        Game(lambda t, p: t.sum(), lambda t, p: p.sum(), True, 1)


def test_loss_not_depending_on_player_raises():
    ignores_theta = Game(lambda t, p: p.pow(2).sum(), lambda t, p: (t * p).sum(), 1, 1)
    with pytest.raises(ValueError, match="loss_g.*theta"):
        ignores_theta.gradient(ORIGIN)
    constant_d = Game(lambda t, p: (t * p).sum(), lambda t, p: torch.tensor(1.0), 1, 1)
    with pytest.raises(ValueError, match="loss_d.*psi"):
        simultaneous_gd(constant_d, START, 0.1, 2)
    not_scalar = Game(lambda t, p: t * p, lambda t, p: (t * p).sum(), 2, 2)
    with pytest.raises(ValueError, match="loss_g"):
        not_scalar.gradient(torch.zeros(4))


# -- review fixes ------------------------------------------------------------------------------


def test_dirac_penalty_follows_psi_device():
    # The real batch is built on ψ's device: on the meta device this fails if it is on the CPU.
    for penalty in ("r1", "r2", "gp"):
        game = dirac_gan(penalty=penalty, gamma=1.0)
        theta = torch.zeros(1, device="meta", dtype=torch.float64, requires_grad=True)
        psi = torch.zeros(1, device="meta", dtype=torch.float64, requires_grad=True)
        assert game.loss_d(theta, psi).device.type == "meta"
