"""Small two-player games as vector fields, their gradient dynamics and local analysis.

A two-player game is two losses over the joint parameter φ = (θ, ψ): the generator descends
L_G(θ, ψ) in θ, the discriminator descends L_D(θ, ψ) in ψ. Their simultaneous gradient and
the vector field of the training flow φ' = v(φ) are

    ξ(φ) = (∇_θ L_G, ∇_ψ L_D),        v(φ) = −ξ(φ)

so a new game is just two losses (:class:`Game`). Gradient descent is the Euler scheme of the
flow: :func:`simultaneous_gd` steps both players from the same φ_k, :func:`alternating_gd`
lets the generator see the discriminator's new ψ; separate step sizes give TTUR. Local
behaviour at an equilibrium φ* is read from the eigenvalues of the Jacobian ∂v/∂φ
(:func:`jacobian`, :func:`eigenvalues_at`): the flow is locally attracted if all real parts are
negative (sufficient; a zero real part leaves it undecided by the linearisation), and Euler
with step h if every |1 + hλ| < 1.

The Dirac-GAN (:func:`dirac_gan`) is the smallest GAN: p_θ = δ_θ, data δ_0, discriminator
D_ψ(x) = ψx. With f(t) = −log(1 + e^{−t}) the GAN objective is L(θ, ψ) = f(ψθ) + f(0), the
generator minimises it and the discriminator maximises it, so

    v(θ, ψ) = (−ψ f'(θψ), θ f'(θψ)),    ∂v/∂φ at (0, 0) = [[0, −f'(0)], [f'(0), 0]]

with eigenvalues ±i f'(0) = ±i/2: v ⟂ φ everywhere, so simultaneous GD spirals outwards
(‖φ_{k+1}‖² = ‖φ_k‖² + h²‖v_k‖²) and alternating GD circles without converging. A penalty
added to L_D (:func:`with_penalty`) moves the eigenvalues into the left half-plane, e.g. R1
on the real point x = 0 adds γ/2 ψ², giving λ = −γ/2 ± √(γ²/4 − f'(0)²); :func:`consensus`
transforms the whole game. The sample-space penalties themselves (R1, R2, WGAN-GP and the
consensus term) live in :mod:`kexue.train.penalties`, so the same functions regularise the
Dirac-GAN here and a real GAN made of ``nn.Module``s; their old names here still work and warn.

References:
    https://kexue.fm/archives/6583 (从动力学角度看优化算法(四):GAN的第三个阶段)
    Mescheder, Geiger & Nowozin, "Which Training Methods for GANs do actually Converge?", 2018.
    Mescheder, Nowozin & Geiger, "The Numerics of GANs", 2017 (consensus optimisation).
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", 2017 (TTUR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kexue._checks import check_float_tensor, check_int, check_real
from kexue._deprecation import old_names
from kexue.train import penalties as _penalties

__all__ = [
    "DIRAC_LOSSES",
    "Game",
    "alternating_gd",
    "bilinear_game",
    "consensus",
    "dirac_gan",
    "eigenvalues_at",
    "jacobian",
    "simultaneous_gd",
    "with_penalty",
]

Loss = Callable[[Tensor, Tensor], Tensor]

# Names that moved to kexue.train.penalties (issue 15); served with a DeprecationWarning.
_MOVED = ("Discriminator", "consensus_penalty", "gradient_penalty", "r1_penalty", "r2_penalty")


__getattr__ = old_names(__name__, {name: f"kexue.train.penalties.{name}" for name in _MOVED},
                        also="kexue.train")


# -- validation --------------------------------------------------------------------------------


def _scalar(name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {got}")
    return value.reshape(())


def _phi(name: str, phi: Any, dim: int) -> Tensor:
    if not isinstance(phi, Tensor):
        phi = torch.as_tensor(phi, dtype=torch.float64)
    if phi.shape != (dim,):
        raise ValueError(f"{name} must have shape ({dim},) = (dim_g + dim_d,), got "
                         f"{tuple(phi.shape)}")
    if not phi.is_floating_point():
        phi = phi.to(torch.float64)
    return phi


def _step_size(name: str, value: Any) -> float:
    return check_real(name, value, low=0, low_open=True)


def _lrs(lr: float | None, lr_g: float | None, lr_d: float | None) -> tuple[float, float]:
    if lr is None and (lr_g is None or lr_d is None):
        raise ValueError(f"lr must be given unless both lr_g and lr_d are, got lr=None, "
                         f"lr_g={lr_g!r}, lr_d={lr_d!r}")
    eta_g = _step_size("lr", lr) if lr_g is None else _step_size("lr_g", lr_g)
    eta_d = _step_size("lr", lr) if lr_d is None else _step_size("lr_d", lr_d)
    return eta_g, eta_d


# -- games -------------------------------------------------------------------------------------


def _player_grads(loss_g: Loss, loss_d: Loss, theta: Tensor, psi: Tensor,
                  create_graph: bool) -> tuple[Tensor, Tensor]:
    """(∇_θ L_G, ∇_ψ L_D) at tensors θ, ψ that require grad (leaves or views of φ)."""
    out = []
    for name, loss, x, pname in (("loss_g", loss_g, theta, "theta"),
                                 ("loss_d", loss_d, psi, "psi")):
        value = _scalar(name, loss(theta, psi))
        g = None
        if value.requires_grad:
            (g,) = torch.autograd.grad(value, x, create_graph=create_graph, allow_unused=True)
        if g is None:
            raise ValueError(f"{name} must depend on its player's parameters {pname}, but its "
                             f"graph does not reach {pname}")
        out.append(g)
    return out[0], out[1]


@dataclass(frozen=True)
class Game:
    """A two-player game given by each player's loss; each player descends its own loss.

    φ = (θ, ψ) with θ = φ[:dim_g] (generator) and ψ = φ[dim_g:] (discriminator):

        ξ(φ) = (∇_θ L_G(θ, ψ), ∇_ψ L_D(θ, ψ)),    v(φ) = −ξ(φ)   (the flow φ' = v(φ))

    A zero-sum game has L_D = −L_G. ``game(phi)`` is v; gradients come from autograd, so the
    losses may be any differentiable torch code (including gradients of other losses, as in
    :func:`consensus`).

    Attributes:
        loss_g: ``loss_g(theta, psi) -> scalar`` descended by the generator in θ.
        loss_d: ``loss_d(theta, psi) -> scalar`` descended by the discriminator in ψ.
        dim_g: number of generator parameters (θ has shape ``(dim_g,)``).
        dim_d: number of discriminator parameters (ψ has shape ``(dim_d,)``).
        name: a label for plots and reports.
    """

    loss_g: Loss
    loss_d: Loss
    dim_g: int
    dim_d: int
    name: str = "game"

    def __post_init__(self) -> None:
        check_int("dim_g", self.dim_g, low=1)
        check_int("dim_d", self.dim_d, low=1)

    @property
    def dim(self) -> int:
        """dim_g + dim_d, the length of φ."""
        return self.dim_g + self.dim_d

    def split(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """(θ, ψ) as views of φ."""
        return phi[: self.dim_g], phi[self.dim_g:]

    def gradient(self, phi: Tensor, create_graph: bool = False) -> Tensor:
        """ξ(φ) = (∇_θ L_G, ∇_ψ L_D), shape ``(dim,)``.

        With ``create_graph=False`` the result is detached. With ``create_graph=True`` it
        carries a graph: to φ when ``phi`` requires grad (used by :func:`jacobian`), otherwise
        to a detached copy of φ and to any tensors the losses close over.

        Raises:
            ValueError: if ``phi`` does not have shape ``(dim,)``, a loss is not a scalar or
                does not depend on its player's parameters.
        """
        phi = _phi("phi", phi, self.dim)
        with torch.enable_grad():
            if not (create_graph and phi.requires_grad):
                phi = phi.detach().requires_grad_(True)
            theta, psi = self.split(phi)
            g_theta, g_psi = _player_grads(self.loss_g, self.loss_d, theta, psi, create_graph)
        xi = torch.cat([g_theta.reshape(-1), g_psi.reshape(-1)])  # (dim,)
        return xi if create_graph else xi.detach()

    def field(self, phi: Tensor, create_graph: bool = False) -> Tensor:
        """v(φ) = −ξ(φ), the direction both players move in, shape ``(dim,)``."""
        return -self.gradient(phi, create_graph=create_graph)

    def __call__(self, phi: Tensor) -> Tensor:
        return self.field(phi)


def with_penalty(game: Game, penalty_d: Loss | None = None, penalty_g: Loss | None = None,
                 name: str | None = None) -> Game:
    """The game with L_D + penalty_d(θ, ψ) and L_G + penalty_g(θ, ψ).

    Args:
        game: the game to regularise.
        penalty_d: ``penalty_d(theta, psi) -> scalar`` added to the discriminator's loss.
        penalty_g: ``penalty_g(theta, psi) -> scalar`` added to the generator's loss.
        name: name of the new game (default: the old one with ``+penalty``).

    Returns:
        A new :class:`Game` with the same dimensions.
    """
    loss_g, loss_d = game.loss_g, game.loss_d

    def new_g(theta: Tensor, psi: Tensor) -> Tensor:
        out = loss_g(theta, psi)
        return out if penalty_g is None else out + penalty_g(theta, psi)

    def new_d(theta: Tensor, psi: Tensor) -> Tensor:
        out = loss_d(theta, psi)
        return out if penalty_d is None else out + penalty_d(theta, psi)

    return Game(new_g, new_d, game.dim_g, game.dim_d, name or f"{game.name}+penalty")


def consensus(game: Game, gamma: float) -> Game:
    """Consensus optimisation: both players also descend γ · ½‖ξ(φ)‖².

        v_CO(φ) = v(φ) − γ ∇_φ ½‖v(φ)‖²

    The extra term is −γ Jᵀv with J = ∂v/∂φ; at an equilibrium (v = 0) the Jacobian becomes
    J − γJᵀJ. For a unit eigenvector w, Re λ = ½ w*(J + Jᵀ)w − γ‖Jw‖², so whenever
    J + Jᵀ ≼ 0 (a zero-sum game at a local Nash equilibrium) Re λ ≤ −γ σ_min(J)² < 0 for
    invertible J. For the Dirac-GAN J − γJᵀJ = [[−γa², −a], [a, −γa²]] with a = f'(0), so
    λ = −γ f'(0)² ± i f'(0).

    Args:
        game: the game.
        gamma: weight γ ≥ 0.

    Returns:
        A new :class:`Game` whose losses are L_G + γL, L_D + γL with L = ½‖ξ‖², the term
        being :func:`kexue.train.penalties.consensus_penalty`.

    Raises:
        ValueError: if γ < 0 or not finite.

    References:
        https://kexue.fm/archives/6583
        Mescheder, Nowozin & Geiger, "The Numerics of GANs", 2017.
    """
    gamma = check_real("gamma", gamma, low=0)
    loss_g, loss_d = game.loss_g, game.loss_d

    def penalty(theta: Tensor, psi: Tensor) -> Tensor:
        return _penalties.consensus_penalty([loss_g(theta, psi), loss_d(theta, psi)],
                                            [[theta], [psi]], gamma)

    return with_penalty(game, penalty_d=penalty, penalty_g=penalty,
                        name=f"{game.name}+consensus(γ={gamma:g})")


def _sigmoid_f(t: Tensor) -> Tensor:
    return -F.softplus(-t)  # f(t) = −log(1 + e^{−t}) = log σ(t), stable for large |t|


def _linear_f(t: Tensor) -> Tensor:
    return t


# Name -> (f, non-saturating generator loss)
DIRAC_LOSSES: dict[str, tuple[Callable[[Tensor], Tensor], bool]] = {
    "gan": (_sigmoid_f, False),
    "nsgan": (_sigmoid_f, True),
    "wgan": (_linear_f, False),
}

_DIRAC_PENALTIES = ("r1", "r2", "gp")


def _dirac_discriminator(psi: Tensor) -> _penalties.Discriminator:
    def d(x: Tensor) -> Tensor:
        return x * psi  # (B, 1): D_ψ(x) = ψx
    return d


def dirac_gan(loss: str = "gan", penalty: str | None = None, gamma: float = 0.0,
              center: float = 1.0) -> Game:
    """The Dirac-GAN: generator δ_θ, data δ_0, discriminator D_ψ(x) = ψx (θ, ψ scalars).

    With the objective L(θ, ψ) = f(D_ψ(θ)) + f(−D_ψ(0)) = f(ψθ) + f(0):

    * ``"gan"``: f(t) = −log(1 + e^{−t}); L_G = L, L_D = −L; v = (−ψf'(θψ), θf'(θψ)),
      f'(0) = 1/2.
    * ``"nsgan"``: the same L_D, non-saturating generator L_G = −f(−ψθ); same Jacobian at 0.
    * ``"wgan"``: f(t) = t, so L = ψθ and v = (−ψ, θ) (no weight clipping).

    ``penalty`` adds a regulariser to L_D, computed by the same functions that regularise
    ``nn.Module`` discriminators, on the real batch x = 0 and the fake batch x = θ:

    * ``"r1"``: :func:`~kexue.train.penalties.r1_penalty`, = γ/2 ψ²;
    * ``"r2"``: :func:`~kexue.train.penalties.r2_penalty`, = γ/2 ψ²;
    * ``"gp"``: :func:`~kexue.train.penalties.gradient_penalty` with ``center`` c,
      = γ(|ψ| − c)² (c = 1 is WGAN-GP).

    Args:
        loss: a key of :data:`DIRAC_LOSSES`.
        penalty: None, ``"r1"``, ``"r2"`` or ``"gp"``.
        gamma: penalty weight γ ≥ 0.
        center: target gradient norm c ≥ 0 of ``"gp"``.

    Returns:
        A :class:`Game` with ``dim_g = dim_d = 1``; its equilibrium is (0, 0).

    Raises:
        ValueError: for an unknown loss or penalty, or γ, c negative or not finite.

    References:
        https://kexue.fm/archives/6583
        Mescheder, Geiger & Nowozin, 2018, Sec. 2.
    """
    if loss not in DIRAC_LOSSES:
        raise ValueError(f"loss must be one of {tuple(DIRAC_LOSSES)}, got {loss!r}")
    if penalty is not None and penalty not in _DIRAC_PENALTIES:
        raise ValueError(f"penalty must be None or one of {_DIRAC_PENALTIES}, got {penalty!r}")
    gamma = check_real("gamma", gamma, low=0)
    center = check_real("center", center, low=0)
    f, non_saturating = DIRAC_LOSSES[loss]

    def objective(theta: Tensor, psi: Tensor) -> Tensor:
        return (f(psi * theta) + f(-psi * 0.0)).sum()

    def loss_g(theta: Tensor, psi: Tensor) -> Tensor:
        return -f(-psi * theta).sum() if non_saturating else objective(theta, psi)

    def loss_d(theta: Tensor, psi: Tensor) -> Tensor:
        return -objective(theta, psi)

    game = Game(loss_g, loss_d, 1, 1, f"dirac-{loss}")
    if penalty is None:
        return game
    # ε does not change the value (∇_x D = ψ everywhere); a fixed generator keeps it pure.
    gen = torch.Generator().manual_seed(0)

    def reg(theta: Tensor, psi: Tensor) -> Tensor:
        d = _dirac_discriminator(psi)
        real = torch.zeros(1, 1, dtype=psi.dtype, device=psi.device)  # (B=1, 1)
        fake = theta.reshape(1, 1)  # (B=1, 1)
        if penalty == "r1":
            return _penalties.r1_penalty(d, real, gamma)
        if penalty == "r2":
            return _penalties.r2_penalty(d, fake, gamma)
        return _penalties.gradient_penalty(d, real, fake, gamma, center=center, generator=gen)

    return with_penalty(game, penalty_d=reg, name=f"dirac-{loss}+{penalty}(γ={gamma:g})")


def bilinear_game(matrix: Tensor, reg_g: float = 0.0, reg_d: float = 0.0) -> Game:
    """The quadratic-bilinear game min_x max_y  reg_g/2 ‖x‖² + xᵀAy − reg_d/2 ‖y‖².

        L_G = reg_g/2 ‖x‖² + xᵀAy,   L_D = −xᵀAy + reg_d/2 ‖y‖²
        v = (−reg_g x − Ay, Aᵀx − reg_d y),   ∂v/∂φ = [[−reg_g I, −A], [Aᵀ, −reg_d I]]

    With reg_g = reg_d = 0 the eigenvalues are ±i σ_k(A) (pure rotation: simultaneous GD
    grows ‖φ‖ by √(1 + h²σ²) per step in each singular direction); with reg_g = reg_d = μ > 0
    they are −μ ± iσ_k(A). For a non-square A there are also |dim_g − dim_d| eigenvalues 0
    (−reg_g if dim_g > dim_d, −reg_d if dim_d > dim_g), from the null directions of A or Aᵀ.

    Args:
        matrix: A, shape ``(dim_g, dim_d)``.
        reg_g: reg_g ≥ 0.
        reg_d: reg_d ≥ 0.

    Returns:
        A :class:`Game` with equilibrium 0.

    Raises:
        ValueError: if ``matrix`` is not a 2-D floating tensor, or a reg is < 0 or not finite.

    References:
        https://kexue.fm/archives/6583
    """
    matrix = check_float_tensor("matrix", matrix, ndim=2)  # (dim_g, dim_d)
    reg_g = check_real("reg_g", reg_g, low=0)
    reg_d = check_real("reg_d", reg_d, low=0)
    a = matrix.detach()

    def coupling(x: Tensor, y: Tensor) -> Tensor:
        return x @ a.to(x.dtype) @ y

    def loss_g(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * reg_g * (x * x).sum() + coupling(x, y)

    def loss_d(x: Tensor, y: Tensor) -> Tensor:
        return -coupling(x, y) + 0.5 * reg_d * (y * y).sum()

    return Game(loss_g, loss_d, a.shape[0], a.shape[1], "bilinear")


# -- dynamics ----------------------------------------------------------------------------------


def _step_sizes(game: Game, lr_g: float, lr_d: float, like: Tensor) -> Tensor:
    return torch.cat([torch.full((game.dim_g,), lr_g, dtype=like.dtype, device=like.device),
                      torch.full((game.dim_d,), lr_d, dtype=like.dtype, device=like.device)])


def simultaneous_gd(game: Game, phi0: Tensor | Sequence[float], lr: float | None = None,
                    steps: int = 100, *, lr_g: float | None = None,
                    lr_d: float | None = None) -> Tensor:
    """Simultaneous gradient descent: both players step from the same point.

        θ_{k+1} = θ_k − η_G ∇_θ L_G(θ_k, ψ_k),   ψ_{k+1} = ψ_k − η_D ∇_ψ L_D(θ_k, ψ_k)

    i.e. φ_{k+1} = φ_k + η ⊙ v(φ_k), the Euler scheme of φ' = v(φ). η_G ≠ η_D is TTUR.

    Args:
        game: the game.
        phi0: start φ_0, shape ``(dim,)``; non-tensors and integer tensors become float64.
        lr: step size of both players (η_G = η_D = lr) unless overridden.
        steps: number of steps ≥ 0.
        lr_g: generator step size η_G > 0 (default ``lr``).
        lr_d: discriminator step size η_D > 0 (default ``lr``).

    Returns:
        The trajectory φ_0, …, φ_steps, shape ``(steps + 1, dim)``, dtype of ``phi0``.

    Raises:
        ValueError: for a step size ≤ 0, non-finite or missing, steps < 0, or phi0 of the
            wrong shape.

    References:
        https://kexue.fm/archives/6583
        Heusel et al., 2017 (TTUR).
    """
    phi = _phi("phi0", phi0, game.dim).detach().clone()
    eta_g, eta_d = _lrs(lr, lr_g, lr_d)
    steps = check_int("steps", steps, low=0)
    eta = _step_sizes(game, eta_g, eta_d, phi)  # (dim,)
    out = phi.new_empty(steps + 1, game.dim)
    out[0] = phi
    for k in range(steps):
        phi = phi - eta * game.gradient(phi)
        out[k + 1] = phi
    return out


def alternating_gd(game: Game, phi0: Tensor | Sequence[float], lr: float | None = None,
                   steps: int = 100, *, lr_g: float | None = None, lr_d: float | None = None,
                   d_steps: int = 1) -> Tensor:
    """Alternating gradient descent: the discriminator moves first, the generator sees it.

        ψ ← ψ − η_D ∇_ψ L_D(θ_k, ψ)   (``d_steps`` times, ψ_k → ψ_{k+1})
        θ_{k+1} = θ_k − η_G ∇_θ L_G(θ_k, ψ_{k+1})

    For the bilinear game L_G = xy = −L_D (v = (−y, x)) with one step size h a round is
    y' = y + hx, x' = x − hy': two shears, so area is preserved, and x² + y² + hxy is exactly
    conserved (x'² + hx'y' = x'x and y'² − hxy' = y'y), so the iterates stay on an ellipse
    instead of spiralling out as simultaneous GD does.

    Args:
        game: the game.
        phi0: start φ_0, shape ``(dim,)``.
        lr: step size of both players unless overridden.
        steps: number of rounds ≥ 0.
        lr_g: generator step size η_G > 0 (default ``lr``).
        lr_d: discriminator step size η_D > 0 (default ``lr``).
        d_steps: discriminator steps per round ≥ 1.

    Returns:
        φ after each round, shape ``(steps + 1, dim)``.

    Raises:
        ValueError: for a step size ≤ 0, non-finite or missing, steps < 0, d_steps < 1, or
            phi0 of the wrong shape.

    References:
        https://kexue.fm/archives/6583
        Mescheder, Geiger & Nowozin, 2018, Sec. 2.2.
    """
    phi = _phi("phi0", phi0, game.dim).detach().clone()
    eta_g, eta_d = _lrs(lr, lr_g, lr_d)
    steps = check_int("steps", steps, low=0)
    d_steps = check_int("d_steps", d_steps, low=1)
    dg = game.dim_g
    out = phi.new_empty(steps + 1, game.dim)
    out[0] = phi
    for k in range(steps):
        for _ in range(d_steps):
            phi = torch.cat([phi[:dg], phi[dg:] - eta_d * game.gradient(phi)[dg:]])
        phi = torch.cat([phi[:dg] - eta_g * game.gradient(phi)[:dg], phi[dg:]])
        out[k + 1] = phi
    return out


# -- local analysis ----------------------------------------------------------------------------


def jacobian(game: Game, phi: Tensor | Sequence[float]) -> Tensor:
    """J = ∂v/∂φ at φ, shape ``(dim, dim)``, from ``torch.autograd.functional.jacobian``.

    Row i is the gradient of v_i = −ξ_i; the blocks are [[−∇²_θθ L_G, −∇²_θψ L_G],
    [−∇²_ψθ L_D, −∇²_ψψ L_D]].

    Raises:
        ValueError: if ``phi`` does not have shape ``(dim,)``.
    """
    phi = _phi("phi", phi, game.dim).detach()
    return torch.autograd.functional.jacobian(
        lambda p: game.field(p, create_graph=True), phi, create_graph=False)


def eigenvalues_at(game: Game, phi: Tensor | Sequence[float]) -> Tensor:
    """Eigenvalues of ∂v/∂φ at φ (complex, shape ``(dim,)``), sorted by (real, imag).

    All real parts < 0 is sufficient for φ to be locally attracting for the flow (a zero real
    part leaves it undecided by the linearisation), and all |1 + hλ| < 1 for GD with step h.
    """
    lam = torch.linalg.eigvals(jacobian(game, phi))
    key = sorted(range(lam.numel()), key=lambda i: (lam[i].real.item(), lam[i].imag.item()))
    return lam[key]
