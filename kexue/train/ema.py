"""Exponential moving average of a model's weights, for any ``nn.Module`` and any optimizer.

The averaged weights follow

    ema_t = d_t · ema_{t-1} + (1 − d_t) · θ_t,        ema_0 = θ_0,

one update per call of :meth:`EMA.update` (or every ``update_every`` calls), where θ_t are the
model's parameters (and floating-point buffers such as BatchNorm statistics) after optimizer step t
and d_t is the decay, constant or scheduled. The update is a single ``torch._foreach_lerp_`` over
cached tensor lists; evaluation with the averaged weights swaps tensor storages in and out of the
model (no copies when dtypes match), so the training weights come back bit for bit.

Under FSDP2 (``fully_shard``) the parameters are DTensors and the average is kept shard by
shard: each rank averages its own local shards (the same ``_foreach_lerp_``, no communication
per update), :meth:`EMA.swapped` writes the averaged shards into the local shards in place,
:meth:`EMA.state_dict` returns DTensors (for ``torch.distributed.checkpoint``) or, with
``full=True``, whole tensors.

Example::

    ema = EMA(model, decay=ema_warmup(0.999))
    for x, y in loader:
        loss_fn(model(x), y).backward()
        opt.step(); opt.zero_grad()
        ema.update()
    with ema.swapped():
        evaluate(model)

References:
    https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", 1992.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue.train._dtensor import Layout, full, local
from kexue.train._naming import unwrap_model

__all__ = ["EMA", "ema_warmup"]

Decay = float | Callable[[int], float]


def ema_warmup(decay: float, power: float = 2 / 3, gamma: float = 1.0) -> Callable[[int], float]:
    """A decay schedule that starts small and rises to ``decay``.

        d_t = min(decay, 1 − (1 + t/γ)^(−power))

    With ``power=1, gamma=1`` this is (t)/(t+1), i.e. the EMA is the plain running mean of all
    weights so far until it reaches ``decay``; ``power=2/3`` reaches 0.999 after ~31k steps and
    0.9999 after ~1M steps (Karras et al.'s power-function EMA).

    Args:
        decay: the final decay, in (0, 1).
        power: how fast the decay approaches 1; > 0.
        gamma: step scale; > 0.

    Returns:
        A function step -> decay, to pass as ``EMA(model, decay=...)``.
    """
    decay = check_real("decay", decay, low=0, high=1, low_open=True, high_open=True)
    power = check_real("power", power, low=0, low_open=True)
    gamma = check_real("gamma", gamma, low=0, low_open=True)

    def schedule(step: int) -> float:
        return min(decay, 1.0 - (1.0 + step / gamma) ** (-power))

    return schedule


class EMA:
    """Weight EMA of ``model`` (parameters and, by default, floating-point buffers).

    The shadow copy is kept in ``dtype`` (by default at least float32, so a bf16/fp16 model
    still averages in float32) on ``device`` (default: beside each parameter; ``"cpu"``
    offloads it). Non-floating buffers (``num_batches_tracked``) are copied, not averaged.

    The shadow follows the model: after ``model.double()``, ``model.half()``, ``model.to(dev)``
    the next :meth:`update`, :meth:`swapped`, :meth:`state_dict` or :meth:`load_state_dict`
    casts each shadow tensor to the dtype (when ``dtype`` is None) and device (when ``device``
    is None) it would have had, had the EMA been created on the converted model, as
    ``torch.optim.swa_utils.AveragedModel`` follows ``.to()``. An explicit ``dtype`` or
    ``device`` stays fixed. :meth:`update` notices a conversion of the whole model (it checks
    the first parameter and the first buffer); after converting only a submodule call
    :meth:`refresh`.

    Under DistributedDataParallel every rank holds the same parameters after each step, so
    every rank's EMA is the same as the single-process EMA; pass the DDP model or its
    ``.module`` — names are stored without the ``module.`` prefix either way.

    Under FSDP2 (``torch.distributed.fsdp.fully_shard``; parameters are DTensors) the shadow
    holds each rank's local shards only: :meth:`update` averages them with no communication,
    and the average of the gathered shards is the single-process average. :meth:`swapped`
    copies the averaged shards into the parameters' local shards in place (FSDP2 gathers the
    parameters from that storage) and back on exit, resharding the FSDP modules on entry and
    exit so that no gathered copy of the other weights survives. :meth:`state_dict` returns
    DTensors (shard-local, for ``torch.distributed.checkpoint``), or whole tensors with
    ``full=True`` (a collective); :meth:`load_state_dict` takes either. Call the EMA while the
    parameters are sharded (after ``optimizer.step()``), not between forward and backward.

    Args:
        model: the model to average; must have at least one parameter.
        decay: d in ema_t = d·ema_{t-1} + (1−d)·θ_t: a float in (0, 1), or a function
            update index (1, 2, ...) -> decay such as :func:`ema_warmup`.
        update_every: average only on every ``update_every``-th call of :meth:`update`
            (the decay applies per average, not per call).
        buffers: ``"average"`` floating buffers like parameters, ``"copy"`` them as they are,
            or ``"ignore"`` buffers altogether.
        dtype: shadow dtype for floating tensors; ``None`` promotes each to at least float32.
        device: shadow device; ``None`` keeps each tensor's own device.

    Raises:
        ValueError: for a model without parameters, a decay outside (0, 1), update_every < 1
            or an unknown ``buffers`` mode.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: Decay = 0.999,
        *,
        update_every: int = 1,
        buffers: Literal["average", "copy", "ignore"] = "average",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(decay):
            decay = check_real("decay", decay, low=0, high=1, low_open=True, high_open=True)
        update_every = check_int("update_every", update_every, low=1)
        if buffers not in ("average", "copy", "ignore"):
            raise ValueError(f"buffers must be 'average', 'copy' or 'ignore', got {buffers!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.model = unwrap_model(model)
        self.decay = decay
        self.update_every = update_every
        self.buffers = buffers
        self.step = 0  # calls of update()
        self.num_updates = 0  # averages taken
        self._dtype = dtype  # None: follow the model (promoted to at least float32)
        self._device = device  # None: follow the model

        params = [(n, p) for n, p in self.model.named_parameters() if p.is_floating_point()]
        if not params:
            raise ValueError(
                f"model {type(model).__name__} has no floating-point parameters to average"
            )
        averaged = list(params)
        copied: list[tuple[str, Tensor]] = []
        if buffers != "ignore":
            for n, b in self.model.named_buffers():
                # Buffers holding ±inf/NaN (additive attention masks) would average to NaN.
                average = buffers == "average" and b.is_floating_point() and bool(
                    torch.isfinite(b).all())
                (averaged if average else copied).append((n, b))
        self._names = [n for n, _ in averaged]
        self._copy_names = [n for n, _ in copied]
        # DTensor layouts (FSDP2), None for plain tensors; the shadow holds local shards.
        self._layouts = [Layout.of(t) for _, t in averaged + copied]
        with torch.no_grad():
            self.shadow = [_shadow_like(local(t), dtype, device) for _, t in averaged]
            self.shadow_copied = [local(t).detach().clone().to(device or t.device)
                                  for _, t in copied]
        self.refresh()

    # -- the hot path ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-read the model's tensors by name and cast the shadow to their dtype/device.

        Replaced or converted tensors are noticed automatically: :meth:`update` checks the
        first parameter and the first buffer (``load_state_dict(assign=True)``, ``to_empty``
        and ``model.to(...)`` change them all) and :meth:`swapped` checks every one. Replacing
        or converting only a submodule (``model.head = nn.Linear(...)``,
        ``model.head.double()``) is not noticed by :meth:`update`: call ``refresh()`` after it.
        A model sharded with ``fully_shard`` after the EMA was made is noticed too: the
        shadow keeps the local shards of its whole tensors.

        Raises:
            ValueError: if the model no longer has a tensor the EMA averages, or an FSDP2
                parameter is gathered (unsharded) where the EMA holds its shard.
        """
        tensors = {**dict(self.model.named_buffers()), **dict(self.model.named_parameters())}
        names = self._names + self._copy_names
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValueError(f"model no longer has tensors {missing[:5]} that the EMA averages")
        self._live = [tensors[n] for n in self._names]
        self._live_copied = [tensors[n] for n in self._copy_names]
        live = self._live + self._live_copied
        self._relayout(names, live)
        self._local = [local(t) for t in self._live]
        self._local_copied = [local(t) for t in self._live_copied]
        self._follow()
        # Where each tensor lives: (the dict holding it, key), for cheap identity checks.
        self._slots = []
        for name in names:
            module_name, _, attr = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            self._slots.append((module._parameters if attr in module._parameters
                                else module._buffers, attr))
        same = [s.dtype == t.dtype and s.device == t.device
                for s, t in zip(self.shadow, self._local, strict=True)]
        self._fast = all(same)
        # For swapped(): plain parameters share the shadow's storage where they can
        # ("share"); buffers and mismatched dtypes/devices get copies ("copy"); DTensor
        # shards are overwritten in place ("inplace"), as FSDP2 gathers from their storage.
        shareable = same + [False] * len(self._live_copied)
        modes = ["inplace" if layout is not None
                 else "share" if ok and isinstance(t, nn.Parameter) else "copy"
                 for t, ok, layout in zip(live, shareable, self._layouts, strict=True)]
        self._swap_plan = list(zip(live, self.shadow + self.shadow_copied,
                                   self._local + self._local_copied, modes, strict=True))
        self._sharded = any(layout is not None for layout in self._layouts)
        self._fsdp = _fsdp_modules(self.model) if self._sharded else []
        # What update() checks: the first parameter (``.to()`` changes its dtype/device in
        # place) and the first buffer (``.to()`` replaces buffers with new tensors); for a
        # DTensor also its local storage (FSDP2 may re-pad it at its lazy initialisation).
        buffer = next((i for i, t in enumerate(live) if not isinstance(t, nn.Parameter)), None)
        probes = [0] if buffer is None else [0, buffer]
        locs = self._local + self._local_copied
        self._probes = [(self._slots[i], live[i], live[i].dtype, live[i].device,
                         locs[i].data_ptr() if self._layouts[i] is not None else None)
                        for i in probes]

    def _relayout(self, names: list[str], live: list[Tensor]) -> None:
        """Bring the shadow to the live tensors' DTensor layouts where these changed."""
        shadows = self.shadow + self.shadow_copied
        changed = False
        for i, (name, t) in enumerate(zip(names, live, strict=True)):
            old, new = self._layouts[i], Layout.of(t)
            if old == new:
                continue
            if new is None:
                raise ValueError(
                    f"the EMA holds a shard of {name!r} (FSDP2), but the model's tensor is "
                    f"now a plain tensor of shape {tuple(t.shape)}: FSDP2 parameters are "
                    "gathered between forward and backward; call the EMA after "
                    "optimizer.step(), or after model.reshard()"
                )
            with torch.no_grad():
                value = shadows[i] if old is None else old.wrap(shadows[i])
                shadows[i] = new.shard(value).clone()
            self._layouts[i] = new
            changed = True
        if changed:
            n = len(self.shadow)
            self.shadow, self.shadow_copied = shadows[:n], shadows[n:]

    def _follow(self) -> None:
        """Cast the shadow tensors to the live tensors' dtype/device, where those are not fixed."""
        with torch.no_grad():
            for i, t in enumerate(self._local):
                s = self.shadow[i]
                dtype = self._dtype or torch.promote_types(t.dtype, torch.float32)
                device = s.device if self._device is not None else t.device
                if s.dtype != dtype or s.device != device:
                    self.shadow[i] = s.to(device=device, dtype=dtype).contiguous()
            for i, t in enumerate(self._local_copied):
                s = self.shadow_copied[i]
                device = s.device if self._device is not None else t.device
                if s.dtype != t.dtype or s.device != device:
                    self.shadow_copied[i] = s.to(device=device, dtype=t.dtype)

    def _check_live(self, every: bool = False) -> None:
        if every:
            live = self._live + self._live_copied
            stale = any(d.get(k) is not t for (d, k), t in zip(self._slots, live, strict=True))
            stale = stale or any(
                s.dtype != (self._dtype or torch.promote_types(t.dtype, torch.float32))
                or (self._device is None and s.device != t.device)
                for s, t in zip(self.shadow, self._live, strict=True)
            ) or any(
                s.dtype != t.dtype or (self._device is None and s.device != t.device)
                for s, t in zip(self.shadow_copied, self._live_copied, strict=True)
            ) or (self._sharded and any(
                layout is not None and local(t).data_ptr() != loc.data_ptr()
                for t, loc, layout in zip(live, self._local + self._local_copied,
                                          self._layouts, strict=True)
            ))
        else:
            stale = any(d.get(k) is not t or t.dtype != dtype or t.device != device
                        or (ptr is not None and local(t).data_ptr() != ptr)
                        for (d, k), t, dtype, device, ptr in self._probes)
        if stale:
            self.refresh()

    def decay_at(self, num_updates: int) -> float:
        """The decay used for the ``num_updates``-th average (1-based)."""
        d = self.decay(num_updates) if callable(self.decay) else self.decay
        if not 0.0 <= d < 1.0 or math.isnan(d):
            raise ValueError(f"decay schedule returned {d!r} at update {num_updates}; need [0, 1)")
        return d

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average (call after ``optimizer.step()``)."""
        self.step += 1
        if self.step % self.update_every:
            return
        self.num_updates += 1
        weight = 1.0 - self.decay_at(self.num_updates)
        self._check_live()
        # Lerp needs matching dtype and device; otherwise the slower mul + add path.
        if self._fast:
            torch._foreach_lerp_(self.shadow, self._local, weight)
        else:
            # A device-to-host copy may only be non-blocking if we synchronise before reading it,
            # so copies are asynchronous only towards an accelerator.
            live = [t.to(s.device, non_blocking=s.device.type != "cpu")
                    for s, t in zip(self.shadow, self._local, strict=True)]
            torch._foreach_mul_(self.shadow, 1.0 - weight)
            torch._foreach_add_(self.shadow, live, alpha=weight)
        for s, b in zip(self.shadow_copied, self._local_copied, strict=True):
            s.copy_(b, non_blocking=s.device.type != "cpu")

    # -- evaluation with the averaged weights ---------------------------------------------------

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Put the averaged weights into the model for the duration of the block.

        Parameters exchange storages with the shadow (``tensor.data`` pointers, no copies) when
        dtype and device match; otherwise the shadow is cast into fresh tensors. Buffers always
        get fresh copies, so that a forward pass in training mode (BatchNorm statistics) cannot
        write into the average. The training tensors themselves are set aside untouched and
        put back on exit, so the training weights are restored bit for bit, even if the block
        raises. Do not modify parameters in place inside the block: with shared storage that
        would modify the average.

        FSDP2 (DTensor) parameters are different: FSDP2 gathers them from their local shards'
        storage, so the averaged shards are copied into that storage in place and the training
        shards copied back on exit (one spare copy of the local shards); the FSDP modules are
        resharded on entry and exit so that no gathered copy of the other weights is used.

        Inside an autocast region torch caches each weight's low-precision copy for the whole
        region, keyed by the parameter object, which the swap keeps: the cache is cleared on
        entry and exit, so the block sees the averaged weights and the code after it the
        training ones.

        Yields:
            The model, now holding the averaged weights.
        """
        self._check_live(every=True)
        self._reshard()
        torch.clear_autocast_cache()
        saved: list[Tensor] = []
        try:
            with torch.no_grad():
                for t, s, loc, mode in self._swap_plan:
                    if mode == "inplace":
                        saved.append(loc.clone())
                        loc.copy_(s)
                    else:
                        saved.append(t.data)
                        t.data = s if mode == "share" else s.to(t, copy=True)
            yield self.model
        finally:
            with torch.no_grad():
                for (t, _, loc, mode), d in zip(self._swap_plan, saved, strict=False):
                    if mode == "inplace":
                        loc.copy_(d)
                    else:
                        t.data = d
            self._reshard()
            torch.clear_autocast_cache()

    def _reshard(self) -> None:
        """Free FSDP2's gathered parameters (they may hold the other set of weights)."""
        for module in self._fsdp:
            module.reshard()

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Copy the averaged weights into ``model`` (same architecture) and return it.

        Under FSDP2 ``model`` may be sharded alike (each rank copies its shards) or a plain
        model (the shards are gathered: a collective, every rank must call).
        """
        target = unwrap_model(model)
        tensors = {**dict(target.named_buffers()), **dict(target.named_parameters())}
        for name, s, layout in zip(self._names + self._copy_names,
                                   self.shadow + self.shadow_copied, self._layouts, strict=True):
            if name not in tensors:
                raise ValueError(f"model has no tensor named {name!r} to copy the average into")
            t = tensors[name]
            value = s if layout is None else layout.wrap(s)
            to = Layout.of(t)
            local(t).copy_(full(value) if to is None else to.shard(value))
        return model

    def averaged_model(self) -> nn.Module:
        """A deep copy of the model holding the averaged weights (for export or serving).

        Raises:
            ValueError: for an FSDP2 model, which cannot be deep-copied; use
                ``copy_to(plain_model)`` or ``state_dict(full=True)``.
        """
        if self._sharded:
            raise ValueError(
                "averaged_model() deep-copies the model, and an FSDP2 (fully_shard) model "
                "cannot be deep-copied; use ema.copy_to(model) on a model sharded alike, "
                "ema.copy_to(plain_model) or ema.state_dict(full=True)"
            )
        return self.copy_to(copy.deepcopy(self.model))

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self, full: bool = False) -> dict[str, Any]:
        """Shadow tensors by name plus the step counters (the decay itself is configuration).

        Args:
            full: FSDP2 only: return whole tensors, gathered from the ranks' shards (a
                collective: every rank must call, and every rank gets them). By default the
                shards come as DTensors that share the shadow's storage, the form
                ``torch.distributed.checkpoint.save`` / ``load`` expect (``load`` writes into
                them in place; pass the result to :meth:`load_state_dict` after it). A shadow
                offloaded to another device type than the mesh's (``device="cpu"`` on a CUDA
                mesh) is copied onto the mesh's device for them (DTensor's rule), costing one
                GPU copy of the local shards per call.

        Returns:
            ``{"step": int, "num_updates": int, "shadow": {name: tensor}, "copied": {name:
            tensor}}``.
        """
        self._check_live(every=True)
        values = [s if layout is None else _full_or_wrap(layout, s, full)
                  for s, layout in zip(self.shadow + self.shadow_copied, self._layouts,
                                       strict=True)]
        n = len(self._names)
        return {
            "step": self.step,
            "num_updates": self.num_updates,
            "shadow": dict(zip(self._names, values[:n], strict=True)),
            "copied": dict(zip(self._copy_names, values[n:], strict=True)),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output in place (dtype/device of this EMA are kept).

        The state is checked in full before anything is changed, so a bad state leaves the
        EMA as it was. Under FSDP2 the tensors may be DTensors (the sharded form, any
        placement) or whole tensors (``state_dict(full=True)``, or a single-process EMA's);
        each rank keeps its shard. Sharded values into an unsharded EMA are gathered.

        Args:
            state: a mapping with the keys ``"step"`` and ``"num_updates"`` (ints >= 0),
                ``"shadow"`` (averaged tensors by name) and ``"copied"`` (copied buffers by
                name), as :meth:`state_dict` returns.

        Raises:
            ValueError: if a key is missing, a counter is not an int >= 0, or names or shapes
                do not match this EMA's model.
        """
        required = ("step", "num_updates", "shadow", "copied")
        if not isinstance(state, Mapping):
            raise ValueError(
                f"state must be a mapping with keys {list(required)} (EMA.state_dict()), "
                f"got {type(state).__name__}"
            )
        absent = [k for k in required if k not in state]
        if absent:
            raise ValueError(
                f"EMA state dict is missing {absent}; it must hold 'step' and 'num_updates' "
                "(ints >= 0), 'shadow' (averaged tensors by name) and 'copied' (copied buffers "
                f"by name), as EMA.state_dict() returns; got keys {sorted(map(str, state))}"
            )
        counters = {}
        for key in ("step", "num_updates"):
            value = state[key]
            if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
                value = int(value.item())
            counters[key] = check_int(f"state[{key!r}]", value, low=0)
        self._check_live(every=True)
        todo = []
        n = len(self._names)
        for key, names, tensors, layouts in (
            ("shadow", self._names, self.shadow, self._layouts[:n]),
            ("copied", self._copy_names, self.shadow_copied, self._layouts[n:]),
        ):
            saved = state[key]
            if not isinstance(saved, Mapping):
                raise ValueError(
                    f"state[{key!r}] must map tensor names to tensors, got {type(saved).__name__}"
                )
            if set(saved) != set(names):
                missing = sorted(set(names) - set(saved))[:5]
                extra = sorted(set(saved) - set(names))[:5]
                raise ValueError(
                    f"state[{key!r}] does not match this model: missing {missing}, "
                    f"unexpected {extra}"
                )
            for name, t, layout in zip(names, tensors, layouts, strict=True):
                value = saved[name]
                if not isinstance(value, Tensor):
                    raise ValueError(
                        f"state[{key!r}][{name!r}] must be a tensor, got {type(value).__name__}"
                    )
                shape = t.shape if layout is None else layout.shape
                if value.shape != shape:
                    raise ValueError(
                        f"state[{key!r}][{name!r}] has shape {tuple(value.shape)}, "
                        f"expected {tuple(shape)}"
                    )
                # Gathering or slicing happens here, so a bad state changes nothing.
                todo.append((t, full(value) if layout is None else layout.shard(value)))
        for t, value in todo:
            t.copy_(value)
        self.step = counters["step"]
        self.num_updates = counters["num_updates"]


def _full_or_wrap(layout: Layout, shard: Tensor, gather: bool) -> Tensor:
    value = layout.wrap(shard)
    return value.full_tensor() if gather else value


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 modules of a model with DTensor parameters (imported only then: the import
    takes about a second)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _shadow_like(t: Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor:
    if dtype is None:
        dtype = torch.promote_types(t.dtype, torch.float32)
    out = t.detach().to(device=device or t.device, dtype=dtype, copy=True)
    return out.contiguous()
