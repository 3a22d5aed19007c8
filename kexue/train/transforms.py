"""Free per-parameter gradient transforms for any ``torch.optim`` optimizer, no subclassing.

One contract: a :class:`GradientTransform` is a pair of functions

    init(params) -> state
    update(grads, state, params) -> (grads | None, state)

over lists of tensors in a fixed order, and optionally a third,
``extend(state, params, added) -> state``, which grows a state for ``params`` into the state
for ``params + added`` (used when parameter groups are added to an optimizer later).
``update`` may work in place and returns the gradients the optimizer should use, or ``None``
to skip this optimizer step (accumulation, non-finite gradients). :func:`chain` composes
transforms left to right; :func:`select` applies one to the parameters whose names match a
pattern; :func:`with_transforms` plugs a transform into an optimizer through
``register_step_pre_hook``, so ``optimizer.step()`` sees transformed gradients.
Implementations use ``torch._foreach_*`` and never synchronise with the host, except
:func:`skip_nonfinite`, which must decide on the host whether to step (as ``GradScaler`` does).

Distributed training. Under DistributedDataParallel the gradients are plain tensors, equal on
every rank after ``backward()``, so every transform gives every rank the single-process result.
Under FSDP2 (``torch.distributed.fsdp.fully_shard``) they are DTensors placed ``Shard(0)`` (or
``Replicate()`` on an HSDP mesh dimension): the transforms work on the local shards and
communicate only where the whole tensor matters, batched across tensors:
:func:`clip_by_global_norm` and :func:`clip_by_norm` all-reduce the local squared norms once;
:func:`adaptive_clip` and :func:`centralize` work on rows, which ``Shard(0)`` keeps whole on
one rank (vectors' norms are all-reduced); :func:`skip_nonfinite` all-reduces its decision;
:func:`add_noise` draws the noise of the whole tensor and keeps the local rows;
:func:`accumulate` adds shards. The result equals the single-process result (up to the order
of floating-point sums). Placements other than ``Shard``/``Replicate`` raise ``ValueError``
naming FSDP2, as does ``Shard(d > 0)`` for the row-wise transforms.

Example::

    tx = chain(clip_by_norm(1.0), centralize(), accumulate(4))
    handle = with_transforms(optimizer, tx)
    ... loss.backward(); optimizer.step(); optimizer.zero_grad()   # as usual

References:
    https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
    optax (Babuschkin et al., 2020) for the (init, update) contract.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kexue._checks import check_generator, check_int, check_real
from kexue.train._dtensor import (
    Layout,
    all_groups,
    all_reduce,
    all_reduce_total,
    dtensor_type,
    has_dtensor,
    is_dtensor,
    local,
    mesh_keys,
    shard_dims,
)
from kexue.train._naming import matches, show, unwrap_model

__all__ = [
    "GradientTransform",
    "TransformHandle",
    "accumulate",
    "adaptive_clip",
    "add_noise",
    "apply_transform",
    "centralize",
    "chain",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "extend_state",
    "map_grads",
    "scale",
    "select",
    "skip_nonfinite",
    "transform_handles",
    "with_transforms",
]

Grads = list[Tensor]


class GradientTransform(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params) -> (grads | None, state)``.

    ``extend(state, params, added) -> state``, optional, turns the state for ``params`` into
    the state for ``params + added`` without losing what it holds (accumulated gradients,
    counters); :func:`with_transforms` calls it when parameter groups are added to the
    optimizer. Without it, a transform whose ``init`` returns None is taken to be stateless.

    ``clips`` says that the transform bounds the gradients (the clipping transforms, and
    :func:`chain` / :func:`select` holding one), so that a training stack that clips on its
    own (the HF Trainer's ``max_grad_norm``) can be told not to clip twice.
    """

    init: Callable[[list[Tensor]], Any]
    update: Callable[[Grads, Any, list[Tensor]], tuple[Grads | None, Any]]
    extend: Callable[[Any, list[Tensor], list[Tensor]], Any] | None = None
    clips: bool = False


def _keep_state(state: Any, params: list[Tensor], added: list[Tensor]) -> Any:
    """``extend`` of a transform whose state does not depend on the parameters."""
    return state


def _stateless(fn: Callable[[Grads, list[Tensor]], Grads],
               clips: bool = False) -> GradientTransform:
    return GradientTransform(lambda params: None, lambda g, s, p: (fn(g, p), s), _keep_state,
                             clips)


def extend_state(
    transform: GradientTransform, state: Any, params: list[Tensor], added: list[Tensor]
) -> Any:
    """The state of ``transform`` for ``params + added``, grown from its state for ``params``.

    Raises:
        ValueError: if ``transform`` has no ``extend`` and is not stateless (its ``init``
            returns something other than None).
    """
    if transform.extend is not None:
        return transform.extend(state, list(params), list(added))
    if state is None and transform.init(list(params) + list(added)) is None:
        return None
    raise ValueError(
        "the transform has state but no extend(state, params, added) function, so it cannot "
        f"take {len(added)} added parameters; give GradientTransform an extend, or call "
        "with_transforms after adding every parameter group"
    )


def _groups(tensors: Sequence[Tensor]) -> list[tuple[list[int], bool]]:
    """Indices of ``tensors`` grouped by (device, dtype, DTensor or not): foreach kernels need
    one device and dtype, and DTensors go through their local shards. Each group comes with a
    flag: True for a group of DTensors."""
    by_type: dict[tuple[torch.device, torch.dtype, type], list[int]] = {}
    for i, t in enumerate(tensors):
        by_type.setdefault((t.device, t.dtype, type(t)), []).append(i)
    dtensor = dtensor_type()
    if len(by_type) == 1:  # the common case: nothing to merge
        ((_, _, cls), idx), = by_type.items()
        return [(idx, dtensor is not None and issubclass(cls, dtensor))]
    out: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
    for (device, dtype, cls), idx in by_type.items():
        out.setdefault((device, dtype, dtensor is not None and issubclass(cls, dtensor)),
                       []).extend(idx)
    return [(sorted(idx), sharded) for (_, _, sharded), idx in out.items()]


def _inplace(op: Callable[..., Any], grads: Grads, *args: Any, what: str, **kwargs: Any) -> None:
    """``op(grads, *args)``, an in-place elementwise foreach op; DTensors through their shards.

    Plain lists go straight to ``op``; a list with DTensors (Shard/Replicate placements, for
    which an elementwise op on the shards is the op on the whole tensor) goes shard by shard.
    """
    if not grads or not is_dtensor(grads[0]):
        try:
            op(grads, *args, **kwargs)
            return
        except RuntimeError:  # "mixed torch.Tensor and DTensor": nothing has been applied
            if not has_dtensor(grads):
                raise
    mesh_keys(grads, what)  # checks the placements
    op([local(g) for g in grads], *args, **kwargs)


class _ShardedPlan:
    """The (device, dtype) groups and reduction keys of a list of DTensor gradients, kept for
    as long as the gradients keep their specs: FSDP2 gives each parameter's gradient the same
    spec object step after step, so a step costs one identity check per tensor instead of
    the placement and group look-ups."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.specs: tuple[Any, ...] | None = None
        self.plan: tuple[list[list[int]], list[Any]] | None = None

    def __call__(self, grads: Grads) -> tuple[list[list[int]], list[Any]] | None:
        """``(groups, keys)`` when every gradient is a DTensor, else None."""
        dtensor = dtensor_type()
        if dtensor is None or not grads or type(grads[0]) is not dtensor:
            return None
        try:
            specs = tuple(map(_SPEC, grads))
        except AttributeError:  # a plain tensor among them: the general path
            return None
        if specs != self.specs:
            groups = _groups(grads)
            if not all(sharded for _, sharded in groups):
                return None
            groups = [idx for idx, _ in groups]
            keys = mesh_keys([grads[i] for idx in groups for i in idx], self.what)
            self.specs, self.plan = specs, (groups, keys)
        return self.plan


_SPEC = operator.attrgetter("_spec")


def _sharded_sq_norms(grads: Grads, groups: list[list[int]], keys: list[Any] | None,
                      what: str, total: bool = False) -> tuple[Tensor, list[list[Tensor]]]:
    """Squared L2 norms of whole DTensors, ``(n,)`` over the indices of ``groups`` in order:
    the local shards' squared norms, summed across ranks in one all-reduce per set of process
    groups (accumulated in float32 or wider, on the first group's device); or with ``total``
    their sum (0-d). Also the local shards of each group, for the caller to scale.
    ``keys``: :func:`mesh_keys` of the tensors in that order, if known."""
    acc = functools.reduce(torch.promote_types, (grads[idx[0]].dtype for idx in groups),
                           torch.float32)
    device = grads[groups[0][0]].device
    shards = [[local(grads[i]) for i in idx] for idx in groups]
    sq = torch.cat([_norms_fast(ts).to(device, acc).square() for ts in shards])  # (n,)
    if keys is None:
        keys = mesh_keys([grads[i] for idx in groups for i in idx], what)
    return (all_reduce_total if total else all_reduce)(sq, keys), shards


def _norms(grads: Grads) -> Tensor:
    """L2 norm of each tensor (same device and dtype), accumulated in float32 or wider so
    that fp16/bf16 gradients neither overflow nor round the clipping bound."""
    acc = torch.promote_types(grads[0].dtype, torch.float32)
    return torch.stack(torch._foreach_norm(grads, 2, dtype=acc))  # (n,)


def _norms_fast(grads: Grads) -> Tensor:
    """:func:`_norms`, without the ``dtype`` argument where it changes nothing (float32 and
    float64): ``_foreach_norm`` takes a slower path with it (~5% of a clip step)."""
    if grads[0].dtype in (torch.float32, torch.float64):
        return torch.stack(torch._foreach_norm(grads, 2))  # (n,)
    return _norms(grads)


# -- transforms ------------------------------------------------------------------------------


def scale(factor: float) -> GradientTransform:
    """g ← factor · g."""
    factor = check_real("factor", factor)

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        _inplace(torch._foreach_mul_, grads, factor, what="scale")
        return grads

    return _stateless(fn)


def clip_by_norm(max_norm: float, eps: float = 1e-6) -> GradientTransform:
    """Per-tensor norm clipping: g ← g · min(1, max_norm / (‖g‖₂ + eps)) for each tensor.

    ``max_norm`` is a finite number > 0, ``eps`` a finite number >= 0.
    """
    max_norm = check_real("max_norm", max_norm, low=0, low_open=True)
    eps = check_real("eps", eps, low=0)

    plans = _ShardedPlan("clip_by_norm")

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        plan = plans(grads)
        if plan is not None:  # FSDP2: every gradient a DTensor
            groups, keys = [(idx, True) for idx in plan[0]], plan[1]
        else:
            groups, keys = _groups(grads), None
        sharded = [idx for idx, is_sharded in groups if is_sharded]
        if sharded:  # whole-tensor norms of DTensors: one all-reduce for all of them
            sq, shards = _sharded_sq_norms(grads, sharded, keys, "clip_by_norm")
            norms = dict(zip(map(id, sharded), zip(sq.sqrt().split([len(i) for i in sharded]),
                                                   shards, strict=True), strict=True))
        for idx, is_sharded in groups:
            if is_sharded:
                norm, g = norms[id(idx)]
                norm = norm.to(g[0].device)
            else:
                g = [grads[i] for i in idx]
                norm = _norms(g)
            coef = (max_norm / (norm + eps)).clamp_(max=1.0)  # (n,)
            torch._foreach_mul_(g, list(coef.to(g[0].dtype)))
        return grads

    return _stateless(fn, clips=True)


def clip_by_global_norm(max_norm: float, eps: float = 1e-6) -> GradientTransform:
    """Global norm clipping: g ← g · min(1, max_norm / (‖(g_1, …, g_n)‖₂ + eps)).

    ``max_norm`` is a finite number > 0, ``eps`` a finite number >= 0.
    """
    max_norm = check_real("max_norm", max_norm, low=0, low_open=True)
    eps = check_real("eps", eps, low=0)

    plans = _ShardedPlan("clip_by_global_norm")

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        if not grads:
            return grads
        device = grads[0].device
        plan = plans(grads)
        if plan is not None:  # FSDP2: every gradient a DTensor
            groups, keys = [(idx, True) for idx in plan[0]], plan[1]
        else:
            groups, keys = _groups(grads), None
        # Accumulate in the widest dtype present (at least float32) so the bound holds exactly.
        acc = functools.reduce(torch.promote_types, (grads[i[0]].dtype for i, _ in groups),
                               torch.float32)
        plain = [idx for idx, is_sharded in groups if not is_sharded]
        sharded = [idx for idx, is_sharded in groups if is_sharded]
        per_group = [_norms([grads[i] for i in idx]).to(device, acc) for idx in plain]
        if not sharded:
            total = torch.linalg.vector_norm(torch.cat(per_group))
        else:  # ‖g‖² = Σ plain ‖g_i‖² + Σ over ranks of the shards' ‖·‖²: one all-reduce
            sq, shards = _sharded_sq_norms(grads, sharded, keys, "clip_by_global_norm",
                                           total=True)
            total = (torch.cat(per_group).square().sum() if plain else 0) + sq.to(device)
            total = total.sqrt()
        coef = (max_norm / (total + eps)).clamp_(max=1.0)
        for idx in plain:
            g = [grads[i] for i in idx]
            torch._foreach_mul_(g, coef.to(g[0].device, g[0].dtype))
        for g in shards if sharded else ():
            torch._foreach_mul_(g, coef.to(g[0].device, g[0].dtype))
        return grads

    return _stateless(fn, clips=True)


def clip_by_value(limit: float) -> GradientTransform:
    """Element-wise clipping: g ← clamp(g, −limit, limit)."""
    limit = check_real("limit", limit, low=0, low_open=True)

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        _inplace(torch._foreach_clamp_min_, grads, -limit, what="clip_by_value")
        _inplace(torch._foreach_clamp_max_, grads, limit, what="clip_by_value")
        return grads

    return _stateless(fn, clips=True)


def _unitwise_norm(t: Tensor) -> Tensor:
    # Norm of each output unit (row): over all dims but the first; whole tensor for ndim ≤ 1.
    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)  # (out, 1, ...)


def adaptive_clip(clipping: float = 0.01, eps: float = 1e-3) -> GradientTransform:
    """Adaptive gradient clipping (AGC), unit-wise.

        g_i ← g_i · min(1, clipping · max(‖W_i‖, eps) / ‖g_i‖)

    for each output unit i (row of a weight matrix / filter of a convolution).

    References:
        Brock et al., "High-Performance Large-Scale Image Recognition Without Normalization",
        2021.
    """
    clipping = check_real("clipping", clipping, low=0, low_open=True)
    eps = check_real("eps", eps, low=0, low_open=True)

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        if has_dtensor(grads):
            return _adaptive_clip_sharded(grads, params, clipping, eps)
        for g, p in zip(grads, params, strict=True):
            w_norm = _unitwise_norm(p.detach()).clamp_min(eps)
            g_norm = _unitwise_norm(g).clamp_min(1e-6)
            g.mul_((clipping * w_norm / g_norm).clamp_(max=1.0))
        return grads

    return _stateless(fn, clips=True)


def _adaptive_clip_sharded(grads: Grads, params: list[Tensor], clipping: float,
                           eps: float) -> Grads:
    """:func:`adaptive_clip` on DTensors: the rows of a ``Shard(0)`` matrix are whole on one
    rank, so their norms are local; a vector is one unit, so its norm (and its parameter's)
    needs the ranks' squared norms summed, all vectors in one all-reduce."""
    keys = mesh_keys(grads, "adaptive_clip", rowwise=True)
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
        if is_dtensor(g) and (not is_dtensor(p) or p.placements != g.placements):
            got = p.placements if is_dtensor(p) else "a plain tensor"
            raise ValueError(f"adaptive_clip: gradient {i} is a DTensor placed {g.placements} "
                             f"but its parameter is {got}; FSDP2 gives both the same placement")
    vectors = [i for i, g in enumerate(grads) if g.ndim <= 1]
    norms: dict[int, tuple[Tensor, Tensor]] = {}
    if vectors:
        device = grads[vectors[0]].device
        sq = torch.stack([  # (2k,): per vector, ‖g_i‖² then ‖W_i‖² of the local shard
            local(t).detach().to(torch.promote_types(t.dtype, torch.float32)).square().sum()
            .to(device) for i in vectors for t in (grads[i], params[i])])
        sq = all_reduce(sq, [keys[i] for i in vectors for _ in range(2)]).sqrt()
        norms = {i: (sq[2 * j], sq[2 * j + 1]) for j, i in enumerate(vectors)}
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
        gl, pl = local(g), local(p).detach()
        if i in norms:
            g_norm, w_norm = (n.to(gl.device, gl.dtype) for n in norms[i])
        else:
            g_norm, w_norm = _unitwise_norm(gl), _unitwise_norm(pl)
        coef = (clipping * w_norm.clamp_min(eps) / g_norm.clamp_min(1e-6)).clamp_(max=1.0)
        gl.mul_(coef)
    return grads


def centralize() -> GradientTransform:
    """Gradient centralisation: subtract from each output unit its mean over the other dims.

        g_i ← g_i − mean(g_i)   for tensors with ndim > 1 (biases and norms are left alone)

    References:
        Yong et al., "Gradient Centralization", ECCV 2020.
    """

    def fn(grads: Grads, params: list[Tensor]) -> Grads:
        for g in grads:
            if g.ndim > 1:
                if is_dtensor(g):  # Shard(0) keeps each row whole on one rank
                    shard_dims(g, "centralize", rowwise=True)
                    g = local(g)
                g.sub_(g.mean(dim=tuple(range(1, g.ndim)), keepdim=True))
        return grads

    return _stateless(fn)


def add_noise(
    eta: float = 0.01, gamma: float = 0.55, generator: torch.Generator | None = None
) -> GradientTransform:
    """Annealed Gaussian gradient noise: g ← g + N(0, σ_t²), σ_t² = eta / (1 + t)^gamma.

    t counts calls (0, 1, ...). Noise is drawn from ``generator`` (which must live on the
    gradients' device) or the global generator. For FSDP2 (DTensor) gradients every rank
    draws the noise of the whole tensor and keeps its shard, so that with a generator in the
    same state on every rank the result is the single-process one (at the cost of drawing
    the whole noise on each rank).

    References:
        Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks",
        2015.
    """
    eta = check_real("eta", eta, low=0)
    gamma = check_real("gamma", gamma, low=0)
    check_generator("generator", generator)

    def update(grads: Grads, step: int, params: list[Tensor]) -> tuple[Grads, int]:
        std = math.sqrt(eta / (1 + step) ** gamma)
        noise = [torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
                 for g in grads]
        if has_dtensor(grads):  # the whole tensor's noise, each rank keeping its rows
            mesh_keys(grads, "add_noise")
            noise = [Layout.of(g).shard(n) if is_dtensor(g) else n
                     for g, n in zip(grads, noise, strict=True)]
            grads_ = [local(g) for g in grads]
        else:
            grads_ = grads
        torch._foreach_add_(grads_, noise, alpha=std)
        return grads, step + 1

    return GradientTransform(lambda params: 0, update, _keep_state)


def skip_nonfinite() -> GradientTransform:
    """Skip the optimizer step when any gradient holds NaN or ±inf.

    The decision needs one host synchronisation per step (as in ``torch.amp.GradScaler``).
    The state counts skipped steps. With FSDP2 (DTensor) gradients each rank sees only its
    shards, so the decision is all-reduced: every rank skips when any shard is not finite.
    """

    def update(grads: Grads, skipped: int, params: list[Tensor]) -> tuple[Grads | None, int]:
        if not grads:
            return grads, skipped
        groups = _groups(grads)
        # The max-norm of a finite tensor is finite (an L2 norm can overflow); NaN propagates.
        # A rank's shard may be empty (more ranks than rows), and an empty max-norm an error.
        lists = [[s for s in (local(grads[i]) for i in idx) if s.numel()] if sharded
                 else [grads[i] for i in idx] for idx, sharded in groups]
        finite = torch.stack(
            [torch.isfinite(torch.stack(torch._foreach_norm(ts, math.inf))).all()
             .to(grads[0].device) for ts in lists if ts]
            or [torch.ones((), dtype=torch.bool, device=grads[0].device)]
        ).all()
        if any(sharded for _, sharded in groups):  # every rank of every mesh decides alike
            finite = _all_ranks_agree(finite, grads)
        if bool(finite):
            return grads, skipped
        return None, skipped + 1

    return GradientTransform(lambda params: 0, update, _keep_state)


def _all_ranks_agree(finite: Tensor, grads: Grads) -> Tensor:
    """``finite`` and-ed across every rank of the device meshes of the DTensors in ``grads``."""
    dist = torch.distributed
    bad = (~finite).to(torch.int32).reshape(1)  # (1,)
    for group in all_groups(grads):
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
    return bad[0] == 0


def accumulate(
    every: int, average: bool = True, *,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> GradientTransform:
    """Gradient accumulation: step once every ``every`` calls with the mean (or sum) of the
    gradients since the last step; the other calls skip the optimizer step.

    The user's loop stays ``backward(); step(); zero_grad()`` at every micro-batch; advance
    LR schedulers and EMAs only when ``handle.last_stepped`` is True. A parameter that got
    gradients in earlier micro-batches but none in the last one still receives its sum; one
    that got none in the whole window keeps ``grad=None``. The state is
    ``{"count": int, "seen": [bool, ...], "buffers": [Tensor, ...]}``.

    Skipping the gradient synchronisation of the micro-batches that do not step:

    - FSDP2: ``model.set_requires_gradient_sync(False)`` for those micro-batches. FSDP2 then
      keeps their gradients inside and reduce-scatters the sum with the next synchronised
      micro-batch, whose DTensor gradients this transform adds up and averages as usual.
    - DDP: ``model.no_sync()`` leaves each rank's gradients its own, and this transform takes
      them out of ``.grad`` at every micro-batch, so DDP never averages them: pass
      ``process_group`` (e.g. ``torch.distributed.group.WORLD``) and the window's sum is
      averaged over the group's ranks once, when the window closes (``x + y`` averaged is
      the same whether or not DDP already averaged ``y``, so ``no_sync()`` may cover every
      micro-batch or all but the last). Without ``process_group``, ``no_sync()`` leaves the
      ranks with different gradients.

    Args:
        every: micro-batches per optimizer step, >= 1.
        average: divide the sum by ``every``.
        process_group: plain (non-DTensor) gradients are averaged over its ranks when the
            window closes; None: no communication. Build the transform after
            ``init_process_group``: before it ``torch.distributed.group.WORLD`` is None.

    Raises:
        ValueError: for ``every`` < 1 or a ``process_group`` that is not one.
    """
    every = check_int("every", every, low=1)
    if process_group is not None and not (
            torch.distributed.is_available()
            and isinstance(process_group, torch.distributed.ProcessGroup)):
        raise ValueError(f"process_group must be a torch.distributed.ProcessGroup (e.g. "
                         f"torch.distributed.group.WORLD) or None, got {process_group!r}")

    def init(params: list[Tensor]) -> dict[str, Any]:
        buffers = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        return {"count": 0, "seen": [False] * len(params), "buffers": buffers}

    def update(
        grads: Grads, state: dict[str, Any], params: list[Tensor]
    ) -> tuple[Grads | None, dict[str, Any]]:
        buffers = state["buffers"]
        sharded = has_dtensor(buffers)
        shards = [local(b) for b in buffers] if sharded else buffers
        torch._foreach_add_(shards, [local(g) for g in grads] if sharded else grads)
        seen = [s or not _is_stand_in(g) for s, g in zip(state["seen"], grads, strict=True)]
        count = state["count"] + 1
        if count < every:
            return None, {"count": count, "seen": seen, "buffers": buffers}
        if process_group is not None:
            seen = _average_over_ranks(buffers, seen, process_group)
        out = torch._foreach_div(shards, every) if average else [b.clone() for b in shards]
        if sharded:  # the new gradients must be DTensors like the parameters
            out = [o if layout is None else layout.wrap(o)
                   for o, layout in zip(out, map(Layout.of, buffers), strict=True)]
        out = [o if s else g for o, s, g in zip(out, seen, grads, strict=True)]
        torch._foreach_zero_(shards)
        return out, {"count": 0, "seen": [False] * len(params), "buffers": buffers}

    def extend(state: dict[str, Any], params: list[Tensor], added: list[Tensor]) -> dict[str, Any]:
        # The added parameters join the window under way with nothing accumulated yet.
        more = init(added)
        return {"count": state["count"], "seen": state["seen"] + more["seen"],
                "buffers": state["buffers"] + more["buffers"]}

    return GradientTransform(init, update, extend)


def _average_over_ranks(buffers: list[Tensor], seen: list[bool],
                        group: torch.distributed.ProcessGroup) -> list[bool]:
    """Average the plain ``buffers`` over the ranks of ``group`` in place (one all-reduce per
    device and dtype, of the buffers flattened into one); returns ``seen`` or-ed over the ranks.
    DTensors (FSDP2) are left alone: FSDP2 has reduced them already."""
    dist = torch.distributed
    plain = [i for i, b in enumerate(buffers) if not is_dtensor(b)]
    if not plain:
        return seen
    world = dist.get_world_size(group)
    for idx, _ in _groups([buffers[i] for i in plain]):
        tensors = [buffers[plain[j]] for j in idx]
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (Σ numel,)
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        torch._foreach_copy_(tensors, [v.view_as(t) for v, t in zip(
            flat.split([t.numel() for t in tensors]), tensors, strict=True)])
    flags = torch.tensor([seen[i] for i in plain], dtype=torch.uint8,
                         device=buffers[plain[0]].device)  # (k,)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
    out = list(seen)
    for i, f in zip(plain, flags.tolist(), strict=True):
        out[i] = bool(f)
    return out


def map_grads(fn: Callable[[Tensor, Tensor], Tensor]) -> GradientTransform:
    """A user function applied to each tensor: g ← fn(g, param).

    Under FSDP2 ``fn`` receives DTensors (gradient and parameter) and must return a DTensor
    placed like the gradient; DTensor ops do that and communicate where they must.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable (grad, param) -> grad, got {fn!r}")

    def apply(grads: Grads, params: list[Tensor]) -> Grads:
        out = [g if _is_stand_in(g) else fn(g, p) for g, p in zip(grads, params, strict=True)]
        for o, g in zip(out, grads, strict=True):
            if not isinstance(o, Tensor) or o.shape != g.shape:
                got = tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__
                raise ValueError(f"fn must return a tensor of shape {tuple(g.shape)}, got {got}")
            if is_dtensor(g) and (not is_dtensor(o) or o.placements != g.placements):
                got = o.placements if is_dtensor(o) else "a plain tensor"
                raise ValueError(
                    f"fn got an FSDP2 (DTensor) gradient placed {g.placements} and returned "
                    f"{got}; it must return a DTensor placed alike (DTensor ops on the "
                    "arguments give one)"
                )
        return out

    return _stateless(apply)


# -- composition -----------------------------------------------------------------------------


def chain(*transforms: GradientTransform) -> GradientTransform:
    """Apply ``transforms`` left to right; a ``None`` (skip) from any stops the chain."""
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransform):
            raise ValueError(f"chain argument {i} must be a GradientTransform, got {t!r}")

    def init(params: list[Tensor]) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in transforms)

    def extend(states: tuple[Any, ...], params: list[Tensor], added: list[Tensor]) -> tuple:
        return tuple(extend_state(t, s, params, added)
                     for t, s in zip(transforms, states, strict=True))

    def update(
        grads: Grads, states: tuple[Any, ...], params: list[Tensor]
    ) -> tuple[Grads | None, tuple[Any, ...]]:
        new = list(states)
        out: Grads | None = grads
        for i, t in enumerate(transforms):
            out, new[i] = t.update(out, states[i], params)
            if out is None:
                break
        return out, tuple(new)

    return GradientTransform(init, update, extend, any(t.clips for t in transforms))


def select(
    model: nn.Module, patterns: str | re.Pattern[str] | Sequence[str | re.Pattern[str]],
    inner: GradientTransform,
) -> GradientTransform:
    """Apply ``inner`` only to parameters of ``model`` whose names match ``patterns``
    (globs, or ``re.Pattern`` searched in the name); the others pass through unchanged.

    Raises:
        ValueError: if a pattern matches no parameter of ``model``.
    """
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    patterns = list(patterns)
    target = unwrap_model(model)
    named = list(target.named_parameters())
    for pat in patterns:
        if not any(matches(pat, n) for n, _ in named):
            raise ValueError(f"select pattern {show(pat)} matches no parameter of the model; "
                             f"names look like {[n for n, _ in named[:3]]}")

    def chosen() -> set[int]:
        # Read the model anew: modules added to it later (with their parameter group) count.
        return {id(p) for n, p in target.named_parameters() if any(matches(q, n)
                                                                    for q in patterns)}

    def init(params: list[Tensor]) -> tuple[list[int], Any]:
        ids = chosen()
        idx = [i for i, p in enumerate(params) if id(p) in ids]
        return idx, inner.init([params[i] for i in idx])

    def extend(
        state: tuple[list[int], Any], params: list[Tensor], added: list[Tensor]
    ) -> tuple[list[int], Any]:
        idx, inner_state = state
        ids = chosen()
        new = [j for j, p in enumerate(added) if id(p) in ids]
        inner_state = extend_state(inner, inner_state, [params[i] for i in idx],
                                   [added[j] for j in new])
        return idx + [len(params) + j for j in new], inner_state

    def update(
        grads: Grads, state: tuple[list[int], Any], params: list[Tensor]
    ) -> tuple[Grads | None, tuple[list[int], Any]]:
        idx, inner_state = state
        sub, inner_state = inner.update([grads[i] for i in idx], inner_state,
                                        [params[i] for i in idx])
        if sub is None:
            return None, (idx, inner_state)
        out = list(grads)
        for i, g in zip(idx, sub, strict=True):
            out[i] = g
        return out, (idx, inner_state)

    return GradientTransform(init, update, extend, inner.clips)


# -- plugging into an optimizer --------------------------------------------------------------


_STAND_IN = "_kexue_stand_in"


def _stand_in(p: Tensor) -> Tensor:
    """Zeros standing in for the missing gradient of ``p``, marked as such."""
    z = torch.zeros_like(p)
    setattr(z, _STAND_IN, True)
    return z


def _is_stand_in(t: Tensor) -> bool:
    return getattr(t, _STAND_IN, False)


def apply_transform(
    params: Sequence[Tensor], transform: GradientTransform, state: Any
) -> tuple[bool, Any]:
    """Run ``transform`` on the ``.grad`` of ``params`` in place.

    A parameter without a gradient takes part as zeros (so global norms and accumulation see
    it correctly). It keeps ``grad=None``, so the optimizer leaves it alone, unless the
    transform returns a new tensor for it (an accumulated sum from earlier micro-batches).

    Returns:
        ``(step, new_state)``: ``step`` is False when the transform asked to skip; then every
        ``.grad`` is set to None so that ``optimizer.step()`` changes nothing.

    Raises:
        ValueError: for sparse gradients, or a transform returning the wrong number of them.
    """
    params = list(params)
    for i, p in enumerate(params):
        if p.grad is not None and p.grad.layout != torch.strided:
            raise ValueError(f"gradient transforms need dense gradients; parameter {i} "
                             f"{tuple(p.shape)} has a {p.grad.layout} gradient")
    grads = [p.grad if p.grad is not None else _stand_in(p) for p in params]
    out, state = transform.update(grads, state, params)
    if out is None:
        for p in params:
            p.grad = None
        return False, state
    if len(out) != len(params):
        raise ValueError(f"transform returned {len(out)} gradients for {len(params)} parameters")
    for p, g in zip(params, out, strict=True):
        if g is not p.grad and not _is_stand_in(g):
            p.grad = g
    return True, state


class TransformHandle:
    """What :func:`with_transforms` returns: the live ``state``, counters, ``last_stepped``
    (whether the latest ``optimizer.step()`` changed anything) and ``remove()``.

    Parameters added to the optimizer later (``optimizer.add_param_group``) are transformed
    too: before the next step the state is grown for them by the transform's ``extend``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, transform: GradientTransform) -> None:
        self.optimizer = optimizer
        self.transform = transform
        self.params = _optimizer_params(optimizer)
        self.state = transform.init(self.params)
        self.steps_taken = 0
        self.steps_skipped = 0
        self.last_stepped = False
        self._hook = optimizer.register_step_pre_hook(self._pre_step)
        attached = optimizer.__dict__.setdefault(_HANDLES, [])
        attached.append(self)

    def _follow_groups(self) -> None:
        """Take in parameters added to the optimizer since the last step."""
        # add_param_group only appends, so an unchanged count means nothing was added.
        if sum(len(g["params"]) for g in self.optimizer.param_groups) == len(self.params):
            return
        current = _optimizer_params(self.optimizer)
        n = len(self.params)
        if len(current) < n or any(a is not b for a, b in zip(current, self.params,
                                                               strict=False)):
            raise ValueError(
                "the optimizer's parameters changed other than by add_param_group (a group or "
                "parameter was removed or reordered) after with_transforms; call remove() on "
                "this handle and with_transforms(optimizer, transform) again"
            )
        added = current[n:]
        self.state = extend_state(self.transform, self.state, self.params, added)
        self.params = current

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # args holds (optimizer, *step_args): a closure is the first step argument.
        if len(args) > 1 and args[1] is not None:
            args = (args[0], self._wrap(args[1]), *args[2:])
            return args, kwargs
        if kwargs.get("closure") is not None:
            return args, {**kwargs, "closure": self._wrap(kwargs["closure"])}
        self._transform(count=True)
        return None

    def _transform(self, count: bool) -> None:
        """Transform the gradients now; ``count`` the decision in the step counters."""
        self._follow_groups()
        with torch.no_grad():
            stepped, self.state = apply_transform(self.params, self.transform, self.state)
        if count:
            self.last_stepped = stepped
            if stepped:
                self.steps_taken += 1
            else:
                self.steps_skipped += 1

    def _wrap(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        """A closure that passes the gradients of every evaluation through the transform.

        The first evaluation of a step decides ``last_stepped`` and the counters; LBFGS
        evaluates again during its line search, and those gradients are transformed too. On
        a skip every ``.grad`` is None, so the optimizer leaves the parameters alone (LBFGS
        sees a zero gradient and returns at once) and the loss is returned as it is. A skip
        in a later evaluation stops LBFGS where it is, after the moves it already made, and
        is not counted; :func:`accumulate` counts evaluations, so pair it only with
        optimizers that evaluate the closure once per step.
        """
        evaluations = 0

        def transformed() -> Any:
            nonlocal evaluations
            loss = closure()
            self._transform(count=evaluations == 0)
            evaluations += 1
            return loss

        return transformed

    def remove(self) -> None:
        """Detach the transform from the optimizer."""
        self._hook.remove()
        attached = self.optimizer.__dict__.get(_HANDLES, [])
        if self in attached:
            attached.remove(self)

    def state_dict(self) -> dict[str, Any]:
        """Transform state and counters, for ``torch.save`` beside the optimizer's."""
        self._follow_groups()
        return {"state": self.state, "steps_taken": self.steps_taken,
                "steps_skipped": self.steps_skipped, "num_params": len(self.params)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: if a key is missing or the state was saved for a different number of
                parameters than the optimizer now holds.
        """
        required = ("state", "steps_taken", "steps_skipped")
        absent = [k for k in required if not isinstance(state, Mapping) or k not in state]
        if absent:
            got = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"transform state dict is missing {absent}; it must hold 'state' (the "
                "transform's state), 'steps_taken' and 'steps_skipped', as "
                f"TransformHandle.state_dict() returns; got {got}"
            )
        self._follow_groups()
        saved = state.get("num_params", len(self.params))
        if saved != len(self.params):
            raise ValueError(
                f"transform state was saved for {saved} parameters, but the optimizer now has "
                f"{len(self.params)}; add the same parameter groups before loading"
            )
        self.state = state["state"]
        self.steps_taken = state["steps_taken"]
        self.steps_skipped = state["steps_skipped"]


# The attribute of an optimizer that lists its handles (not pickled: torch's Optimizer keeps
# only its defaults, state and groups).
_HANDLES = "_kexue_transform_handles"


def transform_handles(optimizer: torch.optim.Optimizer) -> list[TransformHandle]:
    """The :func:`with_transforms` handles attached to ``optimizer``, oldest first.

    Integrations use it to see whether the latest step really stepped
    (``all(h.last_stepped for h in transform_handles(opt))``) wherever the handle was made.
    """
    return list(optimizer.__dict__.get(_HANDLES, ()))


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def with_transforms(
    optimizer: torch.optim.Optimizer, transform: GradientTransform
) -> TransformHandle:
    """Transform the gradients of every parameter of ``optimizer`` before each ``step()``.

    Works with any ``torch.optim.Optimizer`` (a step pre-hook; no subclass). With
    ``optimizer.step(closure)`` (LBFGS, Lightning's automatic optimisation) the closure is
    wrapped so that the gradients of every evaluation pass the transform; a skip then returns
    the closure's loss with every ``.grad`` set to None, so nothing moves. Parameter groups
    added later with ``optimizer.add_param_group`` are transformed too, from their first
    step on (a transform with state needs an ``extend``; every built-in one has it): an
    :func:`accumulate` window under way takes them in with nothing accumulated, and
    :func:`select` checks their names against its patterns. A skip (from :func:`accumulate`,
    :func:`skip_nonfinite`, also inside :func:`select`) skips the whole step, for every
    parameter.

    Raises:
        ValueError: if ``optimizer`` is not a torch optimizer or ``transform`` is not a
            :class:`GradientTransform`.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)!r}")
    if not isinstance(transform, GradientTransform):
        raise ValueError(f"transform must be a GradientTransform, got {transform!r}")
    return TransformHandle(optimizer, transform)
