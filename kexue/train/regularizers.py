"""Explicit gradient regularisation for any model and any ``torch.optim`` optimizer.

Gradient descent with step h follows, to O(h²), the gradient flow of the modified loss

    L̃ = L + λ ‖∇L‖²,    λ = h/4                      (:func:`implicit_lambda`)

(Barrett & Dherin, 2021; see :mod:`kexue.dynamics.flow`). This module makes the penalty an
explicit training option, with a strength of one's choosing, and provides its opposite, a step
without it. Everything writes gradients into ``p.grad`` (accumulating, like ``backward()``), so
the user's optimizer steps as usual::

    out = regularized_backward(lambda: criterion(model(x), y), model.parameters(), lam=0.01)
    optimizer.step(); optimizer.zero_grad()

The gradient of the penalised loss is

    ∇(L + λ‖g‖²) = g + 2λ H g,     g = ∇L(θ), H = ∇²L(θ)

and the three backends differ in how they get the Hessian-vector product H g:

* ``"double_backprop"`` — exact: g with ``create_graph=True``, then one backward pass of g·g
  through the gradient graph. One forward, two backward passes; the memory of the graph of g.
* ``"finite_difference"`` — central difference along v = g/‖g‖, with ε a distance in parameter
  space: H g ≈ ‖g‖ (∇L(θ + εv) − ∇L(θ − εv)) / (2ε), error O(ε²). Three gradients, no
  second-order graph (works with ops that have no double backward, e.g. fused kernels).
* ``"extra_gradient"`` — one extra gradient at a shifted point replaces g + 2λHg altogether:
  ∇L(θ + 2λg) = g + 2λHg + 2λ² ∇³L[g, g] + O(λ³), error O(λ²). Two gradients. This is the
  SAM-like shortcut; SAM itself steps to θ + ρ g/‖g‖ and so penalises ρ‖g‖, not λ‖g‖².

Finite-difference and extra-gradient probes move the parameters in place and restore them
from a saved copy (bit for bit, also when the closure raises). They call the closure again,
so it must recompute the same loss: fixed batch, no fresh dropout masks (or the same
generator state), and note that ``BatchNorm`` in train mode updates its running statistics
at every call.

For SGD on m microbatches per epoch, Smith et al. (2021) find the modified loss
L + (h/4m) Σ_k ‖∇L_k‖²; :func:`minibatch_regularized_backward` applies that penalty.
:func:`midpoint_backward` gives the explicit-midpoint (RK2) gradient, whose SGD step follows
the plain gradient flow to O(h²), i.e. without the implicit term.

Data-parallel training. The penalty is on the gradient of the whole batch, g = mean over
ranks of the ranks' gradients, not on each rank's own. With ``process_group`` every gradient
is averaged over the group's ranks where the maths needs it (g before it is used as the
Hessian-vector product's vector or the probe direction, then the result), so each rank writes
the single-process result for the concatenated batch (same mean loss per rank, equal batch
sizes). This replaces DDP's own averaging: the closure must call the unwrapped module
(``ddp_model.module``), since DDP does not take part in ``torch.autograd.grad``. FSDP2
(``fully_shard``) parameters are refused: FSDP2 computes gradients of the gathered
parameters inside its own hooks, which ``torch.autograd.grad`` with respect to the sharded
parameters does not reach.

References:
    https://kexue.fm/archives/7787 (从动力学角度看优化算法（五）：为什么学习率不宜过小？)
    Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    Smith, Dherin, Barrett & De, "On the Origin of Implicit Regularization in Stochastic
    Gradient Descent", ICLR 2021.
    Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", 2021.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kexue._checks import check_real
from kexue._deprecation import old_names
from kexue.train._dtensor import is_dtensor

__all__ = [
    "BACKENDS",
    "RegularizedStep",
    "gradient_penalty_loss",
    "implicit_lambda",
    "midpoint_backward",
    "minibatch_regularized_backward",
    "regularized_backward",
]

BACKENDS = ("double_backprop", "finite_difference", "extra_gradient")

Closure = Callable[[], Tensor]
Grads = list[Tensor | None]


@dataclass(frozen=True)
class RegularizedStep:
    """What a regularised backward pass computed (all detached); was ``GradientPenalty``.

    Attributes:
        loss: L(θ); for microbatches the mean (1/m) Σ_k L_k(θ).
        grad_sq_norm: the penalised quantity ‖∇L(θ)‖²; for microbatches (1/m) Σ_k ‖∇L_k(θ)‖².
        lam: the strength λ.
        variance: microbatches only: (1/m) Σ_k ‖∇L_k − ∇L‖² = grad_sq_norm − ‖∇L‖², with
            ∇L = (1/m) Σ_k ∇L_k; None otherwise.
    """

    loss: Tensor
    grad_sq_norm: Tensor
    lam: float
    variance: Tensor | None = None

    @property
    def objective(self) -> Tensor:
        """L + λ · grad_sq_norm, the penalised objective.

        Its gradient is what ``"double_backprop"`` writes into ``.grad``; the
        ``"finite_difference"`` and ``"extra_gradient"`` backends write only an approximation
        of it (errors O(λε²) and O(λ²)).
        """
        return self.loss + self.lam * self.grad_sq_norm


# GradientPenalty was renamed (issue 15): it collided with the WGAN-GP gradient_penalty.
__getattr__ = old_names(__name__, {"GradientPenalty": "kexue.train.RegularizedStep"})


# -- validation --------------------------------------------------------------------------------


def _params(params: Iterable[Tensor]) -> list[Tensor]:
    """The tensors that require grad (frozen ones are skipped, as ``backward`` skips them).

    A tensor listed more than once (tied weights, concatenated parameter lists) is kept once,
    at its first occurrence, so its gradient is not added twice.
    """
    if isinstance(params, Tensor):
        params = [params]
    out = []
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            got = p.dtype if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"params[{i}] must be a floating-point tensor, got {got}")
        if is_dtensor(p):
            raise ValueError(
                f"params[{i}] is a DTensor (FSDP2 fully_shard): regularized gradients are "
                "taken with torch.autograd.grad, which does not reach FSDP2's sharded "
                "parameters; use DDP-style replicas with process_group=..., or no sharding"
            )
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError("params must hold at least one tensor with requires_grad=True, got none")
    return out


def _check_group(group: Any) -> Any:
    if group is not None and not (torch.distributed.is_available()
                                  and isinstance(group, torch.distributed.ProcessGroup)):
        raise ValueError(f"process_group must be a torch.distributed.ProcessGroup (e.g. "
                         f"torch.distributed.group.WORLD) or None, got {group!r}")
    return group


def _mean_over_ranks(grads: Grads, params: list[Tensor], group: Any,
                     loss: Tensor | None = None) -> tuple[Grads, Tensor | None]:
    """Average ``grads`` (and ``loss``) over the ranks of ``group``; None where every rank has
    None. One all-reduce per parameter dtype/device (gradients flattened into one tensor)
    and one for the used-flags and the loss."""
    if group is None:
        return grads, loss
    dist = torch.distributed
    world = dist.get_world_size(group)
    device = params[0].device
    extra = [torch.tensor([float(g is not None) for g in grads], dtype=torch.float64,
                          device=device)]  # (n,)
    if loss is not None:
        extra.append(loss.detach().reshape(1).to(device, torch.float64))
    extra = torch.cat(extra)  # (n,) or (n + 1,)
    dist.all_reduce(extra, group=group)
    used = (extra[:len(grads)] > 0).tolist()
    by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        if used[i]:
            by_kind.setdefault((p.device, p.dtype), []).append(i)
    out: Grads = [None] * len(grads)
    for idx in by_kind.values():
        flat = torch.cat([(params[i].new_zeros(params[i].shape) if grads[i] is None
                           else grads[i].to(params[i].dtype)).reshape(-1)
                          for i in idx])  # (Σ numel,)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for i, v in zip(idx, flat.split([params[i].numel() for i in idx]), strict=True):
            out[i] = v.view_as(params[i])
    return out, None if loss is None else (extra[-1] / world).to(loss.dtype)


def _backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_loss(loss: Any, where: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss {where} must be a scalar tensor, got {got}")
    if not loss.requires_grad:
        raise ValueError(f"loss {where} does not depend on params (it has no grad_fn); build "
                         f"it from the parameters with autograd enabled")
    return loss.reshape(())


# -- gradients ---------------------------------------------------------------------------------


def _grad(loss: Tensor, params: list[Tensor], where: str, create_graph: bool = False) -> Grads:
    grads = torch.autograd.grad(loss, params, allow_unused=True, create_graph=create_graph)
    if all(g is None for g in grads):
        raise ValueError(f"loss {where} does not depend on params (every gradient is None)")
    return list(grads)


def _closure_grad(closure: Closure, params: list[Tensor]) -> tuple[Tensor, Grads]:
    with torch.enable_grad():
        loss = _check_loss(closure(), "returned by closure")
        return loss.detach(), [None if g is None else g.detach()
                               for g in _grad(loss, params, "returned by closure")]


def _sq_norm(grads: Grads, like: Tensor) -> Tensor:
    """Σ ‖g_i‖² in the widest gradient dtype (float32 or wider), on ``like``'s device."""
    acc = torch.float32
    for g in grads:
        if g is not None:
            acc = torch.promote_types(acc, g.dtype)
    total = torch.zeros((), dtype=acc, device=like.device)
    for g in grads:
        if g is not None:
            total = total + g.to(acc).pow(2).sum().to(like.device)
    return total


def _robust_norm(grads: Grads, like: Tensor) -> Tensor:
    """‖g‖ in float64 after scaling by max |g_i| (no underflow of ‖g‖² for tiny g), on ``like``'s
    device; exactly 0 only when every entry of g is 0."""
    big = torch.zeros((), dtype=torch.float64, device=like.device)
    for g in grads:
        if g is not None and g.numel():
            big = torch.maximum(big, g.detach().abs().max().to(big))
    if big == 0 or not torch.isfinite(big):
        return big
    total = torch.zeros((), dtype=torch.float64, device=like.device)
    for g in grads:
        if g is not None:
            total = total + (g.detach().to(torch.float64).to(like.device) / big).pow(2).sum()
    return big * total.sqrt()


def _scaled(alpha: Tensor | float, d: Tensor) -> Tensor:
    """α·d in d's dtype; a tensor α (on the first parameter's device) follows d's device."""
    if isinstance(alpha, Tensor):
        alpha = alpha.to(d.device)
    return (alpha * d).to(d.dtype)


def _shifted_grad(closure: Closure, params: list[Tensor], saved: list[Tensor],
                  direction: Grads, alpha: Tensor | float) -> Grads:
    """∇L(θ + α·direction); the caller restores θ from ``saved``."""
    with torch.no_grad():
        for p, s, d in zip(params, saved, direction, strict=True):
            if d is None:
                p.copy_(s)
            else:
                p.copy_(s + _scaled(alpha, d).to(p.dtype))
    return _closure_grad(closure, params)[1]


def _probing(closure: Closure, params: list[Tensor],
             probes: Sequence[tuple[Grads, Tensor | float]]) -> list[Grads]:
    """Gradients at θ + α_j·d_j for each probe, restoring θ bit for bit afterwards."""
    saved = [p.detach().clone() for p in params]
    try:
        return [_shifted_grad(closure, params, saved, d, a) for d, a in probes]
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def _combine(g: Grads, other: Grads, alpha: Tensor | float) -> Grads:
    """g + α·other, keeping None where g is None (parameters the loss does not use)."""
    return [None if a is None else (a if b is None else a + _scaled(alpha, b).to(a.dtype))
            for a, b in zip(g, other, strict=True)]


def _regularized_grad(closure: Closure, params: list[Tensor], lam: float, backend: str,
                      eps: float | None, group: Any = None) -> tuple[Tensor, Grads, Grads]:
    """(L, g, ∇(L + λ‖g‖²)) at the current parameters, g = ∇L (all detached).

    With ``group`` L and g are the means over its ranks, and so is the result: each rank's
    local term (its Hessian times the mean g, or its gradient at the probe) is averaged.
    """
    if backend == "double_backprop":
        with torch.enable_grad():
            loss = _check_loss(closure(), "returned by closure")
            g = _grad(loss, params, "returned by closure", create_graph=lam > 0)
            mean_g, mean_loss = _mean_over_ranks(
                [None if gi is None else gi.detach() for gi in g], params, group, loss)
            hg: Grads = [None] * len(params)
            # H g = ∇(½ g·g): one backward pass of the graph of g with g as the cotangent. An
            # entry of g without grad_fn (L linear in that parameter) contributes nothing.
            live = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
            if lam > 0 and live:
                hg = list(torch.autograd.grad([g[i] for i in live], params,
                                              grad_outputs=[mean_g[i] for i in live],
                                              allow_unused=True))
        if group is None:
            return loss.detach(), mean_g, _combine(mean_g, hg, 2 * lam)
        # mean over ranks of (ḡ + 2λ H_r ḡ) = ḡ + 2λ H ḡ
        total, _ = _mean_over_ranks(_combine(mean_g, hg, 2 * lam), params, group)
        return mean_loss, mean_g, total

    loss, g = _closure_grad(closure, params)
    g, loss = _mean_over_ranks(g, params, group, loss)
    if lam == 0:
        return loss, g, g
    if backend == "extra_gradient":
        (shifted,) = _probing(closure, params, [(g, 2 * lam)])
        # keep None for parameters unused at θ, as backward() would
        shifted = [None if a is None else b for a, b in zip(g, shifted, strict=True)]
        return loss, g, _mean_over_ranks(shifted, params, group)[0]
    # finite_difference: H g ≈ ‖g‖ (∇L(θ + εv) − ∇L(θ − εv)) / (2ε), v = g / ‖g‖
    if eps is None:
        eps = max(torch.finfo(p.dtype).eps for p in params) ** (1 / 3)
    norm = _robust_norm(g, params[0])
    if norm == 0:  # g = 0 → H g = 0
        return loss, g, g
    inv = 1.0 / norm
    plus, minus = _probing(closure, params, [(g, eps * inv), (g, -eps * inv)])
    # g + 2λ H g ≈ g + λ ‖g‖ (g₊ − g₋) / ε
    total = _combine(g, _combine(plus, minus, -1.0), lam * norm / eps)
    return loss, g, _mean_over_ranks(total, params, group)[0]


def _add(total: Grads, grads: Grads) -> Grads:
    return [b if a is None else (a if b is None else a + b)
            for a, b in zip(total, grads, strict=True)]


def _accumulate(params: list[Tensor], grads: Grads, weight: float = 1.0) -> None:
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            g = g.to(p.dtype) if weight == 1.0 else (weight * g).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)


# -- public API --------------------------------------------------------------------------------


def implicit_lambda(h: float) -> float:
    """The strength of the implicit gradient penalty of gradient descent with step h: λ = h/4.

    GD θ_{n+1} = θ_n − h∇L follows the flow of L + (h/4)‖∇L‖² to O(h²).

    Args:
        h: learning rate, > 0.

    Returns:
        h / 4.

    Raises:
        ValueError: for h ≤ 0 or non-finite.

    References:
        https://kexue.fm/archives/7787
        Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    return check_real("h", h, low=0, low_open=True) / 4


def gradient_penalty_loss(loss: Tensor, params: Iterable[Tensor], lam: float) -> Tensor:
    """L + λ‖∇L‖² as a differentiable tensor (double backprop), to add to other terms.

        L̃ = L + λ Σ_i ‖∂L/∂θ_i‖²,    ∇L̃ = g + 2λ H g

    ``gradient_penalty_loss(loss, model.parameters(), lam).backward()`` writes the same
    gradients as :func:`regularized_backward` with ``backend="double_backprop"``.

    Args:
        loss: scalar loss built from ``params`` with autograd enabled.
        params: the parameters whose gradient norm is penalised (frozen ones are skipped).
        lam: λ ≥ 0 (``implicit_lambda(h)`` reproduces GD's implicit term).

    Returns:
        The scalar L̃, with a graph through ∇L.

    Raises:
        ValueError: for λ < 0 or non-finite, a non-scalar loss, or a loss that does not
            depend on params.

    References:
        https://kexue.fm/archives/7787
        Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
    """
    lam = check_real("lam", lam, low=0)
    params = _params(params)
    loss = _check_loss(loss, "passed as loss")
    grads = _grad(loss, params, "passed as loss", create_graph=True)
    penalty = sum(g.pow(2).sum() for g in grads if g is not None)
    return loss + lam * penalty


def regularized_backward(
    closure: Closure,
    params: Iterable[Tensor],
    lam: float,
    *,
    backend: str = "double_backprop",
    eps: float | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> RegularizedStep:
    """Add ∇(L + λ‖∇L‖²) = g + 2λHg into ``p.grad`` for any model; then ``optimizer.step()``.

    Backends (see the module docstring for costs):

        "double_backprop":    g + 2λ H g                                exact
        "finite_difference":  g + λ ‖g‖ (∇L(θ + εv) − ∇L(θ − εv)) / ε   v = g/‖g‖, O(λε²)
        "extra_gradient":     ∇L(θ + 2λ g)                              O(λ²)

    With λ = ``implicit_lambda(h)`` = h/4 the penalty is the one GD with step h adds
    implicitly, so training with step h and this penalty acts like a flow with twice the
    implicit regularisation of plain GD. ``.grad`` is accumulated into (created where None)
    like ``backward()``; parameters the loss does not use keep their ``.grad``.

    Args:
        closure: ``closure() -> loss``: recomputes the scalar loss at the current parameters
            (no ``backward`` inside). Called once (double backprop), twice (extra gradient)
            or three times (finite difference); it must give the same function each time.
        params: parameters, e.g. ``model.parameters()``; those without requires_grad are
            skipped. Probes perturb them in place and restore them exactly.
        lam: λ ≥ 0.
        backend: ``"double_backprop"``, ``"finite_difference"`` or ``"extra_gradient"``.
        eps: finite difference only: the probe distance ε > 0 in parameter space; default
            (machine epsilon of the least precise parameter dtype)^(1/3), e.g. 4.9e-3 in
            float32, 6.1e-6 in float64, which balances the O(ε²) truncation against rounding.
        process_group: data-parallel replicas (DDP without its wrapper, see the module
            docstring): L and g are averaged over the group's ranks and every rank writes
            the same, single-process gradient; None: this process's batch only.

    Returns:
        A :class:`RegularizedStep` with L, ‖∇L‖² and λ (detached).

    Raises:
        ValueError: for λ < 0 or non-finite, an unknown backend, ε ≤ 0, no trainable params,
            FSDP2 (DTensor) params, a process_group that is not one, or a closure whose loss
            is not a scalar or does not depend on params.

    References:
        https://kexue.fm/archives/7787
        Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021.
        Foret et al., "Sharpness-Aware Minimization", ICLR 2021 (the shifted-gradient trick).
    """
    lam = check_real("lam", lam, low=0)
    backend = _backend(backend)
    if eps is not None:
        eps = check_real("eps", eps, low=0, low_open=True)
    if not callable(closure):
        raise ValueError(f"closure must be a callable returning the loss, got {closure!r}")
    group = _check_group(process_group)
    params = _params(params)
    loss, g, grads = _regularized_grad(closure, params, lam, backend, eps, group)
    _accumulate(params, grads)
    return RegularizedStep(loss=loss, grad_sq_norm=_sq_norm(g, params[0]), lam=lam)


def minibatch_regularized_backward(
    closures: Iterable[Closure],
    params: Iterable[Tensor],
    lam: float,
    *,
    backend: str = "double_backprop",
    eps: float | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> RegularizedStep:
    """The SGD penalty of Smith et al. (2021): add ∇[(1/m) Σ_k (L_k + λ‖∇L_k‖²)] into ``.grad``.

    One epoch of SGD with step h over m equal-sized minibatches L_0, …, L_{m−1} (the full loss
    L = (1/m) Σ_k L_k) follows, to O(h²), the flow of

        L̃_SGD = L + (h/4m) Σ_k ‖∇L_k‖²
              = L + (h/4) ‖∇L‖² + (h/4m) Σ_k ‖∇L_k − ∇L‖²

    (the second line is the identity mean‖g_k‖² = ‖mean g_k‖² + mean‖g_k − mean g_k‖²): the
    full-batch implicit term plus a penalty on the variance of the minibatch gradients. This
    function applies the first line with λ in place of h/4 (``implicit_lambda(h)`` for the
    implicit strength), one microbatch at a time, so only one graph is alive at once.

    Args:
        closures: m ≥ 1 closures, ``closures[k]() -> L_k`` (e.g. ``functools.partial`` over
            the microbatches), each as for :func:`regularized_backward`.
        params: parameters, e.g. ``model.parameters()``.
        lam: λ ≥ 0.
        backend: as for :func:`regularized_backward`.
        eps: as for :func:`regularized_backward`.
        process_group: as for :func:`regularized_backward`: microbatch k is the
            concatenation of the ranks' k-th microbatches.

    Returns:
        A :class:`RegularizedStep`: loss (1/m)Σ L_k, grad_sq_norm (1/m)Σ‖∇L_k‖² and variance
        (1/m)Σ‖∇L_k − ∇L‖². Memory: two parameter-sized buffers (the sums of the
        regularised and of the plain microbatch gradients).

    Raises:
        ValueError: as for :func:`regularized_backward`, or for no closures.

    References:
        https://kexue.fm/archives/7787
        Smith, Dherin, Barrett & De, "On the Origin of Implicit Regularization in Stochastic
        Gradient Descent", ICLR 2021.
    """
    lam = check_real("lam", lam, low=0)
    backend = _backend(backend)
    if eps is not None:
        eps = check_real("eps", eps, low=0, low_open=True)
    group = _check_group(process_group)
    params = _params(params)
    losses: list[Tensor] = []
    sqs: list[Tensor] = []
    reg_sum: Grads = [None] * len(params)  # Σ_k ∇(L_k + λ‖∇L_k‖²)
    grad_sum: Grads = [None] * len(params)  # Σ_k ∇L_k, for the variance
    for k, closure in enumerate(closures):
        if not callable(closure):
            raise ValueError(f"closures[{k}] must be a callable returning the loss, "
                             f"got {closure!r}")
        loss, g, grads = _regularized_grad(closure, params, lam, backend, eps, group)
        reg_sum = _add(reg_sum, grads)
        grad_sum = _add(grad_sum, g)
        losses.append(loss)
        sqs.append(_sq_norm(g, params[0]))
    m = len(losses)
    if m == 0:
        raise ValueError("closures must hold at least one closure, got none")
    _accumulate(params, reg_sum, weight=1.0 / m)
    mean_sq = torch.stack(sqs).mean()
    full_sq = _sq_norm(grad_sum, params[0]) / m**2  # ‖∇L‖² = ‖Σ_k ∇L_k‖² / m²
    return RegularizedStep(loss=torch.stack(losses).mean(), grad_sq_norm=mean_sq, lam=lam,
                           variance=mean_sq - full_sq)


def midpoint_backward(
    closure: Closure, params: Iterable[Tensor], h: float, *,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> Tensor:
    """Add the explicit-midpoint (RK2) gradient ∇L(θ − (h/2)∇L(θ)) into ``p.grad``.

    With ``torch.optim.SGD(lr=h)`` (no momentum, no weight decay) the step is

        θ' = θ − h ∇L(θ − (h/2) ∇L(θ))

    the explicit midpoint method for dθ/dt = −∇L, a second-order method: its modified flow has
    no O(h) term, so its iterates follow the plain gradient flow with O(h²) error instead of
    GD's O(h), i.e. without GD's implicit (h/4)‖∇L‖² penalty. Indeed
    ∇L(θ − (h/2)g) = g − (h/2)Hg + O(h²) = ∇(L − (h/4)‖g‖²) + O(h²): the extra-gradient
    backend with λ = −h/4, cancelling the implicit term. Other optimizers (momentum, Adam)
    step on this gradient too, but then the O(h²) statement does not apply.

    Args:
        closure: ``closure() -> loss`` as for :func:`regularized_backward` (called twice).
        params: parameters; probed in place and restored exactly.
        h: the step size the optimizer will take, > 0.
        process_group: as for :func:`regularized_backward`.

    Returns:
        L(θ) at the unshifted parameters (detached; with ``process_group`` the ranks' mean).

    Raises:
        ValueError: for h ≤ 0 or non-finite, no trainable params, or a closure whose loss is
            not a scalar or does not depend on params.

    References:
        https://kexue.fm/archives/7787
        Hairer, Nørsett & Wanner, "Solving Ordinary Differential Equations I", II.1 (RK2).
    """
    h = check_real("h", h, low=0, low_open=True)
    if not callable(closure):
        raise ValueError(f"closure must be a callable returning the loss, got {closure!r}")
    group = _check_group(process_group)
    params = _params(params)
    loss, g = _closure_grad(closure, params)
    g, loss = _mean_over_ranks(g, params, group, loss)
    (mid,) = _probing(closure, params, [(g, -h / 2)])
    mid = [None if a is None else b for a, b in zip(g, mid, strict=True)]
    _accumulate(params, _mean_over_ranks(mid, params, group)[0])
    return loss
