"""Zeroth-order gradients: the gradient of a Gaussian-smoothed objective from function values.

For any f (not necessarily differentiable) and the smoothed objective

    f_σ(θ) = E_{u∼N(0, I)}[f(θ + σu)],    ∇f_σ(θ) = E[f(θ + σu) u] / σ

which is REINFORCE for the Gaussian "policy" θ' ∼ N(θ, σ²I): ∇_θ log N(θ'; θ, σ²I) = u/σ.
Policy gradient and zeroth-order optimisation are one estimator. Here:

* :func:`zo_gradient` — the general estimator: Gaussian or Rademacher (SPSA) directions,
  one-sided with a baseline or antithetic pairs. Restores the parameters from a saved copy.
* :class:`SeedZO` — a MeZO-style optimizer: directions are regenerated from a seed each time
  they are needed, so memory is that of inference (no gradients, no stored directions).
* :func:`zo_backward` — the same seed-replay estimate written into ``.grad``, so any
  ``torch.optim`` optimizer (Adam, ...) can step on it.

Direction protocol (shared by all three, so runs can be replayed from a list of seeds): one
``torch.Generator(device=p.device).manual_seed(seed)`` per device; the parameters are visited
in order and each draws ``torch.randn(p.shape, dtype=promote_types(p.dtype, float32))`` (or
Rademacher ±1 from ``torch.randint(0, 2, ...)`` for SPSA). Seeds themselves are
``torch.randint(0, 2**63 - 1, (1,), generator=generator)``.

References:
    https://kexue.fm/archives/7737 (殊途同归的策略梯度与零阶优化)
    Nesterov & Spokoiny, "Random Gradient-Free Minimization of Convex Functions", 2017.
    Spall, "Multivariate Stochastic Approximation Using a Simultaneous Perturbation Gradient
    Approximation", 1992.
    Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement
    Learning", 2017 (antithetic sampling).
    Malladi et al., "Fine-Tuning Language Models with Just Forward Passes" (MeZO), 2023.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from kexue._checks import check_generator, check_int, check_real

__all__ = ["SeedZO", "zo_backward", "zo_gradient"]

_METHODS = ("gaussian", "spsa")
_BASELINES = ("value", "optimal", "none")
_SEED_HIGH = 2**63 - 1


# -- validation --------------------------------------------------------------------------------


def _params(params: Iterable[Tensor]) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    out = list(params)
    if not out:
        raise ValueError("params must hold at least one tensor, got an empty iterable")
    for i, p in enumerate(out):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            got = p.dtype if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"params[{i}] must be a floating-point tensor, got {got}")
    return out


def _evaluate(f: Callable[[], Any], name: str) -> float:
    """f() under no_grad as a Python float; it must be a finite scalar."""
    with torch.no_grad():
        value = f()
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must return a scalar, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    try:
        return check_real(name, value)
    except ValueError:
        raise ValueError(f"{name} must return a finite value, got {value!r} (expected a "
                         "finite scalar tensor or number)") from None


# -- directions from seeds ---------------------------------------------------------------------


def _draw_seed(generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, _SEED_HIGH, (1,), generator=generator, device=device))


def _directions(params: list[Tensor], seed: int, method: str = "gaussian") -> Iterator[Tensor]:
    """z for each parameter in turn, the same every time for the same seed (one at a time, so
    the whole direction is never held in memory)."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params:
        gen = gens.get(p.device)
        if gen is None:
            gen = gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        dtype = torch.promote_types(p.dtype, torch.float32)
        if method == "gaussian":
            yield torch.randn(p.shape, generator=gen, dtype=dtype, device=p.device)
        else:  # Rademacher ±1
            bits = torch.randint(0, 2, p.shape, generator=gen, dtype=dtype, device=p.device)
            yield bits.mul_(2).sub_(1)


# -- the general estimator ---------------------------------------------------------------------


def zo_gradient(
    f: Callable[[], Tensor | float],
    params: Iterable[Tensor],
    *,
    sigma: float,
    num_samples: int,
    method: str = "gaussian",
    antithetic: bool = True,
    baseline: str | float | None = None,
    generator: torch.Generator | None = None,
    accumulate_into_grad: bool = False,
) -> list[Tensor]:
    """Estimate ∇f_σ(θ), the gradient of f smoothed over θ + σu, from values of f alone.

    With N directions u_k (standard Gaussian, or Rademacher ±1 for ``method="spsa"``):

        antithetic:  g = (1/N) Σ_k (f(θ + σu_k) − f(θ − σu_k)) u_k / (2σ)
        one-sided:   g = (1/N) Σ_k (f(θ + σu_k) − b_k) u_k / σ

    Both are unbiased for ∇f_σ with f_σ(θ) = E_u[f(θ + σu)] (for SPSA u is Rademacher, so f_σ
    smooths over the vertices of a cube; for a quadratic f both smoothings have gradient
    exactly ∇f(θ)). Any b_k independent of u_k keeps the one-sided estimate unbiased; the
    baseline sets its variance:

    * ``"value"``: b = f(θ) (one extra evaluation). Taylor: (f(θ+σu) − f(θ))/σ = uᵀ∇f + O(σ),
      so the variance stays bounded as σ → 0; without a baseline it grows like f(θ)²/σ².
    * ``"optimal"``: the constant minimising tr Cov[(f − b)u] is b* = E[f ‖u‖²] / E[‖u‖²]
      (= E[f] for SPSA). It is estimated leave-one-out, b_k = Σ_{j≠k} f_j‖u_j‖² /
      Σ_{j≠k} ‖u_j‖², so b_k does not depend on u_k and the estimate stays unbiased; no
      extra evaluation, needs N ≥ 2.
    * ``"none"`` (b = 0) or a number (a fixed b).

    Antithetic pairs cancel every even-order term of f around θ (constants included), so
    they take no baseline.

    ``f`` is called under ``torch.no_grad`` with ``params`` perturbed in place; the original
    values are saved once and copied back after every evaluation and at the end (also when
    ``f`` raises), so the parameters are restored bit for bit. Memory: one saved copy and one
    gradient buffer (float32 or wider) per parameter; directions are regenerated from
    per-direction seeds rather than stored. Low-precision parameters see θ ± σu rounded to
    their dtype: check with :class:`SeedZO`'s ``unchanged_fraction`` that σ survives it.

    Args:
        f: ``f() -> scalar`` evaluated at the current values of ``params``.
        params: tensors (e.g. ``model.parameters()``) that f reads.
        sigma: smoothing scale σ > 0.
        num_samples: number of directions N ≥ 1 (antithetic: N pairs, 2N evaluations).
        method: ``"gaussian"`` (u ∼ N(0, I)) or ``"spsa"`` (u Rademacher ±1).
        antithetic: use the pairs f(θ ± σu).
        baseline: one-sided only: ``"value"`` (default), ``"optimal"``, ``"none"`` or a
            finite number; must be None when ``antithetic``.
        generator: draws the per-direction seeds (any device); None uses torch's global one.
        accumulate_into_grad: also add the estimate into each ``p.grad`` (created if None),
            like ``backward()``.

    Returns:
        The estimate, one tensor per parameter with its shape and dtype.

    Raises:
        ValueError: for σ ≤ 0 or non-finite, N < 1 (N < 2 with ``"optimal"``), an unknown
            method or baseline, a baseline with antithetic pairs, empty or non-float params,
            or when f returns a non-scalar or non-finite value.

    References:
        https://kexue.fm/archives/7737
        Nesterov & Spokoiny, 2017; Spall, 1992; Salimans et al., 2017.
    """
    sigma = check_real("sigma", sigma, low=0, low_open=True)
    n = check_int("num_samples", num_samples, low=1)
    check_generator("generator", generator)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if antithetic:
        if baseline is not None:
            raise ValueError(f"baseline must be None with antithetic=True (the pair difference "
                             f"cancels any constant), got {baseline!r}")
    else:
        baseline = "value" if baseline is None else baseline
        if isinstance(baseline, str):
            if baseline not in _BASELINES:
                raise ValueError(f"baseline must be one of {_BASELINES} or a finite number, "
                                 f"got {baseline!r}")
            if baseline == "optimal" and n < 2:
                raise ValueError(f"num_samples must be >= 2 for baseline='optimal' "
                                 f"(leave-one-out), got {n}")
        else:
            baseline = check_real("baseline", baseline)
    params = _params(params)

    seeds = [_draw_seed(generator) for _ in range(n)]
    saved = [p.detach().clone() for p in params]
    plus: list[float] = []
    minus: list[float] = []
    sq_norms: list[float] = []
    try:
        with torch.no_grad():
            b0 = _evaluate(f, "f") if baseline == "value" else None
            for seed in seeds:
                norm = 0.0
                for p, s, z in zip(params, saved, _directions(params, seed, method), strict=True):
                    p.copy_(torch.add(s, z, alpha=sigma))
                    if baseline == "optimal":
                        norm += float(z.pow(2).sum())
                plus.append(_evaluate(f, "f"))
                sq_norms.append(norm)
                if antithetic:
                    for p, s, z in zip(params, saved, _directions(params, seed, method),
                                       strict=True):
                        p.copy_(torch.add(s, z, alpha=-sigma))
                    minus.append(_evaluate(f, "f"))
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)

    if antithetic:
        coefs = [(fp - fm) / (2 * sigma) for fp, fm in zip(plus, minus, strict=True)]
    else:
        if baseline == "value":
            bases = [b0] * n
        elif baseline == "optimal":
            total_w = sum(sq_norms)
            total_fw = sum(v * w for v, w in zip(plus, sq_norms, strict=True))
            bases = [(total_fw - v * w) / (total_w - w)
                     for v, w in zip(plus, sq_norms, strict=True)]
        else:
            bases = [0.0 if baseline == "none" else float(baseline)] * n
        coefs = [(v - b) / sigma for v, b in zip(plus, bases, strict=True)]

    grads = [torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32),
                         device=p.device) for p in params]
    for seed, c in zip(seeds, coefs, strict=True):
        for g, z in zip(grads, _directions(params, seed, method), strict=True):
            g.add_(z, alpha=c / n)
    out = [g.to(p.dtype) for g, p in zip(grads, params, strict=True)]
    if accumulate_into_grad:
        for p, g in zip(params, out, strict=True):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
    return out


# -- seed replay (MeZO) ------------------------------------------------------------------------


def _probe(
    closure: Callable[[], Any],
    params: list[Tensor],
    masters: list[Tensor | None],
    eps: list[float],
    seed: int,
) -> tuple[float, float, int]:
    """Evaluate the loss at θ + εz and θ − εz by seed replay; return (L+, L−, #unchanged).

    Without a master, θ is shifted in place: +εz, −2εz, +εz (restored up to rounding). With a
    master copy, the parameter is recomputed from the never-perturbed master each time and
    restored by copy (bit-exact). #unchanged counts elements where θ + εz rounded to θ.

    ``shift[i]`` records the multiple s of ε z_i that parameter i carries (0, +1 or −1), set
    only once its write is done, so whatever raises (the closure, a write, the direction
    generator) the ``finally`` block undoes exactly the shifts that happened: −s·εz for a
    replayed parameter (within one ulp of |θ| + ε|z|), a copy from the master otherwise
    (bit-exact); parameters never touched stay as they were, bit for bit.
    """
    shift = [0] * len(params)
    counts: list[Tensor] = []
    try:
        directions = _directions(params, seed)
        for i, (p, m, e) in enumerate(zip(params, masters, eps, strict=True)):
            z = next(directions)
            new = torch.add(p if m is None else m, z, alpha=e).to(p.dtype)
            counts.append(torch.count_nonzero(new == p))  # not .sum(): an int64 copy
            p.copy_(new)
            shift[i] = 1
            # free z before the next one is drawn (one direction tensor alive at a time; zip
            # would keep the previous one in its cached tuple while drawing the next)
            del new, z
        loss_plus = _evaluate(closure, "closure")
        directions = _directions(params, seed)
        for i, (p, m, e) in enumerate(zip(params, masters, eps, strict=True)):
            z = next(directions)
            if m is None:
                p.add_(z, alpha=-2 * e)
            else:
                p.copy_(torch.add(m, z, alpha=-e))
            shift[i] = -1
            del z
        loss_minus = _evaluate(closure, "closure")
    finally:
        _restore(params, masters, eps, seed, shift)
    return loss_plus, loss_minus, sum(int(c) for c in counts)


def _restore(params: list[Tensor], masters: list[Tensor | None], eps: list[float], seed: int,
             shift: list[int]) -> None:
    """Undo θ_i + shift[i]·ε_i z_i: copy from the master where there is one, else replay z."""
    last = -1  # the last replayed parameter that needs z; the stream is drawn up to it only
    for i, (p, m, s) in enumerate(zip(params, masters, shift, strict=True)):
        if s and m is not None:
            p.copy_(m)
        elif s:
            last = i
    if last < 0:
        return
    n = last + 1
    directions = _directions(params[:n], seed)  # a prefix replays the same z's
    for p, m, e, s in zip(params[:n], masters[:n], eps[:n], shift[:n], strict=True):
        z = next(directions)
        if s and m is None:
            p.add_(z, alpha=-s * e)
        del z


def _warn_unchanged(fraction: float, threshold: float, stacklevel: int) -> None:
    warnings.warn(
        f"{fraction:.1%} of the parameter elements did not change under the perturbation "
        f"θ + εz (it rounds away in their dtype, threshold {threshold:.1%}); the zeroth-order "
        f"estimate is biased towards zero. Raise eps, or use SeedZO(master_weights=True) and "
        f"evaluate in a wider dtype.",
        RuntimeWarning, stacklevel=stacklevel,
    )


class SeedZO(torch.optim.Optimizer):
    """Zeroth-order SGD by seed replay (MeZO): memory of inference, two evaluations a direction.

    For each of K directions, a seed s_k is drawn from the optimizer's own generator and
    z_k ∼ N(0, I) is regenerated from it parameter by parameter whenever needed:

        θ ← θ + εz_k;  L+ = L(θ);  θ ← θ − 2εz_k;  L− = L(θ);  θ ← θ + εz_k   (restore)
        d_k = (L+ − L−) / 2                    (projected gradient (z_kᵀ∇L) times ε)
        θ ← θ − lr · (Σ_k d_k z_k / (K ε) + λ θ)

    Σ_k d_k z_k / (Kε) is the antithetic estimate of ∇L_ε, the gradient of L smoothed by
    N(0, ε²I) (see :func:`zo_gradient`); with per-group ε it is the gradient of L smoothed by
    N(0, diag(ε²)). Neither the directions nor a gradient is ever stored: beyond the model's
    inference memory the cost is one parameter-sized temporary. The trajectory is fully
    determined by the seeds and the d_k, which :attr:`last_stats` records.

    Precision. The replayed restore is exact up to rounding: three roundings leave each element
    within about one ulp of |θ| + ε|z| (measured: at most 1 ulp, on about half the elements in
    float32), in the parameter's own dtype, so bf16 parameters drift by bf16 ulps. Worse, in
    bf16 a shift ε|z| below half an ulp of θ (|θ|·2⁻⁹ to |θ|·2⁻⁸) rounds to nothing.
    ``master_weights=True`` keeps a master copy of each parameter in float32 (or its own dtype
    if wider): 4 bytes per element, i.e. 2× the memory of bf16 parameters and 1× more for
    float32 ones. The parameter is then recomputed as round(master ± εz) for each
    evaluation, restored by copy (bit-exact, any dtype) and the update is applied to the
    master, so updates far below a bf16 ulp still accumulate. The fraction of elements whose
    perturbation rounded to nothing is reported in ``last_stats["unchanged_fraction"]`` and
    warned about once (``RuntimeWarning``) when it exceeds ``warn_unchanged``.

    The closure is called under ``torch.no_grad`` and must return the loss (no backward).
    For Adam or any other update rule, use :func:`zo_backward` with that optimizer.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate (per group).
        eps: perturbation scale ε > 0 (per group).
        weight_decay: λ ≥ 0, coupled as in SGD (per group).
        num_directions: K ≥ 1 directions averaged in each step (all probed at the same θ).
        master_weights: keep float32 (or wider) master copies (per group).
        seed: seeds the optimizer's generator, which draws the per-direction seeds.
        warn_unchanged: warn when more than this fraction of elements did not move.

    Raises:
        ValueError: for lr < 0, ε ≤ 0, λ < 0, K < 1, a missing closure, or a closure that
            returns a non-scalar or non-finite loss (the parameters are restored first).

    References:
        https://kexue.fm/archives/7737
        Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", 2023.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        num_directions: int = 1,
        master_weights: bool = False,
        seed: int = 0,
        warn_unchanged: float = 0.5,
    ) -> None:
        check_real("lr", lr, low=0)
        check_real("eps", eps, low=0, low_open=True)
        check_real("weight_decay", weight_decay, low=0)
        self.num_directions = check_int("num_directions", num_directions, low=1)
        # torch.Generator.manual_seed's range
        seed = check_int("seed", seed, low=-(2**63), high=2**64 - 1)
        self.warn_unchanged = check_real("warn_unchanged", warn_unchanged, low=0)
        defaults = {"lr": lr, "eps": eps, "weight_decay": weight_decay,
                    "master_weights": bool(master_weights)}
        super().__init__(params, defaults)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_stats: dict[str, Any] = {}
        self._warned = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("lr", "weight_decay"):
            if key in param_group:
                check_real(key, param_group[key], low=0)
        if "eps" in param_group:
            check_real("eps", param_group["eps"], low=0, low_open=True)
        super().add_param_group(param_group)

    def _entries(self) -> tuple[list[Tensor], list[Tensor | None], list[dict[str, Any]]]:
        params, masters, groups = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                master = None
                if group["master_weights"]:
                    state = self.state[p]
                    if "master" not in state:
                        dtype = torch.promote_types(p.dtype, torch.float32)
                        state["master"] = p.detach().to(dtype, copy=True)
                    master = state["master"]
                params.append(p)
                masters.append(master)
                groups.append(group)
        return params, masters, groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """One zeroth-order step; returns mean_k (L+ + L−)/2 (≈ L_ε(θ)) as a float64 tensor."""
        if closure is None or not callable(closure):
            raise ValueError(f"closure must be a callable returning the loss, got {closure!r}")
        params, masters, groups = self._entries()
        eps = [g["eps"] for g in groups]
        k = self.num_directions
        seeds, diffs, losses = [], [], []
        unchanged = 0
        for _ in range(k):
            seed = _draw_seed(self.generator)
            loss_plus, loss_minus, count = _probe(closure, params, masters, eps, seed)
            seeds.append(seed)
            diffs.append((loss_plus - loss_minus) / 2)
            losses.append((loss_plus + loss_minus) / 2)
            unchanged += count

        targets = [p if m is None else m for p, m in zip(params, masters, strict=True)]
        for t, g in zip(targets, groups, strict=True):
            if g["weight_decay"]:
                t.mul_(1 - g["lr"] * g["weight_decay"])
        for seed, d in zip(seeds, diffs, strict=True):
            directions = _directions(params, seed)
            for t, g in zip(targets, groups, strict=True):
                z = next(directions)
                t.add_(z, alpha=-g["lr"] * d / (k * g["eps"]))
                del z
        for p, m in zip(params, masters, strict=True):
            if m is not None:
                p.copy_(m)

        numel = sum(p.numel() for p in params) * k
        fraction = unchanged / numel
        self.last_stats = {"loss": sum(losses) / k, "seeds": seeds, "diffs": diffs,
                           "unchanged_fraction": fraction}
        if fraction > self.warn_unchanged and not self._warned:
            self._warned = True
            _warn_unchanged(fraction, self.warn_unchanged, stacklevel=3)
        return torch.tensor(sum(losses) / k, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """The usual optimizer state (masters included) plus the seed generator's state."""
        out = super().state_dict()
        out["generator"] = self.generator.get_state()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; masters must stay float32.
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            saved = state_dict["state"].get(i, {})
            if "master" in saved:
                dtype = torch.promote_types(p.dtype, torch.float32)
                self.state[p]["master"] = saved["master"].to(p.device, dtype, copy=True)
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])


def zo_backward(
    closure: Callable[[], Any],
    params: Iterable[Tensor],
    *,
    eps: float,
    num_directions: int = 1,
    generator: torch.Generator | None = None,
    warn_unchanged: float = 0.5,
) -> Tensor:
    """Add the seed-replay zeroth-order gradient into ``p.grad``, like ``loss.backward()``.

        d_k = (L(θ + εz_k) − L(θ − εz_k)) / 2,    p.grad += Σ_k d_k z_k / (K ε)

    with the probes and restores of :class:`SeedZO` (in place, up to rounding) and z_k
    regenerated from its seed for the accumulation. Any ``torch.optim`` optimizer then steps on
    ``.grad``: ``zo_backward`` + ``torch.optim.SGD`` is :class:`SeedZO` with one more
    parameter-sized buffer (``.grad``); ``torch.optim.Adam`` adds its two moment buffers.

    Args:
        closure: ``closure() -> loss`` at the current parameters (called under no_grad).
        params: the parameters to perturb.
        eps: ε > 0.
        num_directions: K ≥ 1.
        generator: draws the per-direction seeds; None uses torch's global generator.
        warn_unchanged: warn when more than this fraction of elements did not move.

    Returns:
        mean_k (L+ + L−)/2 as a float64 tensor.

    Raises:
        ValueError: for ε ≤ 0, K < 1, or a closure returning a non-scalar or non-finite loss.

    References:
        https://kexue.fm/archives/7737
        Malladi et al., 2023.
    """
    eps = check_real("eps", eps, low=0, low_open=True)
    k = check_int("num_directions", num_directions, low=1)
    warn_unchanged = check_real("warn_unchanged", warn_unchanged, low=0)
    if not callable(closure):
        raise ValueError(f"closure must be a callable returning the loss, got {closure!r}")
    params = _params(params)
    masters: list[Tensor | None] = [None] * len(params)
    eps_list = [eps] * len(params)
    seeds, diffs, losses, unchanged = [], [], [], 0
    with torch.no_grad():
        for _ in range(k):
            seed = _draw_seed(generator)
            loss_plus, loss_minus, count = _probe(closure, params, masters, eps_list, seed)
            seeds.append(seed)
            diffs.append((loss_plus - loss_minus) / 2)
            losses.append((loss_plus + loss_minus) / 2)
            unchanged += count
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for seed, d in zip(seeds, diffs, strict=True):
            directions = _directions(params, seed)
            for p in params:
                z = next(directions)
                p.grad.add_(z, alpha=d / (k * eps))
                del z
    fraction = unchanged / (sum(p.numel() for p in params) * k)
    if fraction > warn_unchanged:
        _warn_unchanged(fraction, warn_unchanged, stacklevel=2)
    return torch.tensor(sum(losses) / k, dtype=torch.float64)
