"""DTensor helpers shared by :mod:`kexue.train.ema` and :mod:`kexue.train.transforms`.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns every parameter into a ``DTensor``: a
local shard plus a layout (device mesh, placements, global shape). ``Shard(d)`` splits the
tensor along dim d across one mesh dimension (``torch.chunk`` sizes: the last ranks may hold
fewer rows, or none); ``Replicate()`` gives every rank the whole tensor. Gradients have the
parameters' layout. Kexue works on the local shards with ``torch._foreach_*`` (no DTensor
dispatch per tensor) and reduces across ranks only what needs the whole tensor (norms), in one
all-reduce for all tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Layout", "all_groups", "all_reduce", "all_reduce_total", "dtensor_type", "full",
           "has_dtensor", "is_dtensor", "local", "mesh_keys", "shard_dims"]


def dtensor_type() -> type | None:
    """The DTensor class once ``torch.distributed.tensor`` is imported, else None.

    No tensor can be a DTensor before that module is imported (FSDP2 and DTensor users import
    it), so kexue never imports it itself: the import takes about a second (it loads dynamo),
    which every ``import kexue`` would otherwise pay.
    """
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def is_dtensor(t: Any) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def has_dtensor(tensors: Sequence[Any]) -> bool:
    """Whether any of ``tensors`` is a DTensor (one cheap type check per tensor)."""
    cls = dtensor_type()
    # The set of types is one C-level pass (~25 ns a tensor; isinstance costs ~200 ns).
    return cls is not None and any(issubclass(c, cls) for c in set(map(type, tensors)))


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (sharing its storage: in-place ops write through), else t.

    This is what ``t.to_local()`` returns under ``torch.no_grad()``, read directly: with
    autograd on, ``to_local()`` runs an autograd function (~20 µs a tensor), and on a
    parameter it makes a fresh view (~5 µs), costs paid per tensor per step otherwise.
    """
    cls = dtensor_type()
    if cls is None or not isinstance(t, cls):
        return t
    return t._local_tensor


_SUPPORTED = ("FSDP2 (fully_shard) gives DTensor parameters and gradients placed Shard(0) on "
              "each mesh dimension, or Replicate() (HSDP)")
Groups = tuple[Any, ...]  # process groups to reduce over, one after the other
_Info = tuple[Any, Any, tuple[int, ...], bool, Groups]
# (id(mesh), id(placements)) -> (mesh, placements, shard dims, rows whole?, their groups). The
# objects are kept, so their ids cannot be reused while cached.
_info_cache: dict[tuple[int, int], _Info] = {}


_spec_cache: dict[int, tuple[Any, _Info]] = {}


def _info(t: Tensor, what: str) -> _Info:
    # FSDP2 gives a parameter's gradient the parameter's spec object, step after step: one
    # lookup by its identity (the spec is kept in the cache, so its id is not reused).
    spec = t._spec
    hit = _spec_cache.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    info = _info_of(spec.mesh, spec.placements, what)
    if len(_spec_cache) >= 4096:  # specs made afresh every step: do not grow forever
        _spec_cache.clear()
    _spec_cache[id(spec)] = (spec, info)
    return info


def _info_of(mesh: Any, placements: tuple[Any, ...], what: str) -> _Info:
    hit = _info_cache.get((id(mesh), id(placements)))
    if hit is not None and hit[0] is mesh and hit[1] is placements:
        return hit
    bad = [p for p in placements if not (p.is_shard() or p.is_replicate())]
    if bad:
        raise ValueError(
            f"{what} supports DTensors placed Shard or Replicate; got placements "
            f"{placements} (a Partial placement is an unreduced sum). {_SUPPORTED}"
        )
    dims = tuple(i for i, p in enumerate(placements) if p.is_shard())
    rows_whole = all(not p.is_shard() or p.dim == 0 for p in placements)
    if len(_info_cache) >= 4096:  # placements made afresh every step: do not grow forever
        _info_cache.clear()
    hit = (mesh, placements, dims, rows_whole, _mesh_groups(mesh, dims))
    _info_cache[(id(mesh), id(placements))] = hit
    return hit


def shard_dims(t: Tensor, what: str, *, rowwise: bool = False) -> tuple[int, ...]:
    """The mesh dimensions along which DTensor ``t`` is split (its sum needs them reduced).

    Args:
        t: a DTensor.
        what: what asks, for the error message.
        rowwise: the caller works on rows (dim 0) independently and needs every row whole on
            one rank: ``Shard(0)`` and ``Replicate()`` qualify, ``Shard(d > 0)`` does not.

    Raises:
        ValueError: for a placement other than ``Shard`` / ``Replicate`` (a ``Partial`` one,
            i.e. not yet reduced), or ``Shard(d > 0)`` when ``rowwise``.
    """
    info = _info(t, what)
    if rowwise and not info[3]:
        raise ValueError(
            f"{what} works on rows (dim 0) and needs each row whole on one rank, i.e. "
            f"Shard(0) or Replicate() placements; got {t.placements} for a tensor of shape "
            f"{tuple(t.shape)}. {_SUPPORTED}; do not pass a shard_placement_fn that shards "
            "another dim"
        )
    return info[2]


_groups_cache: dict[tuple[int, tuple[int, ...]], tuple[Any, Groups]] = {}


def _mesh_groups(mesh: Any, dims: tuple[int, ...]) -> Groups:
    """The process groups of ``dims`` of ``mesh``. Each ``fully_shard`` call may make its own
    mesh object over the same ranks; their groups are the same objects, so keying reductions
    by groups lets the tensors of all of them share one all-reduce."""
    key = (id(mesh), dims)
    hit = _groups_cache.get(key)
    if hit is None or hit[0] is not mesh:  # the mesh is kept, so its id is not reused
        hit = (mesh, tuple(mesh.get_group(d) for d in dims))
        _groups_cache[key] = hit
    return hit[1]


def all_reduce(values: Tensor, keys: Sequence[Groups | None], op: Any = None) -> Tensor:
    """Reduce ``values[i]`` across the ranks that share tensor i: one collective per distinct
    set of process groups (one, for FSDP2 on one mesh), for all tensors at once.

    Args:
        values: shape ``(n,)``, one entry per tensor (e.g. local sums of squares).
        keys: per entry, the process groups to reduce over (:func:`mesh_keys`); None or
            ``()`` for nothing to reduce (a plain tensor, a replicated DTensor).
        op: a ``torch.distributed.ReduceOp``; default SUM.

    Returns:
        ``values`` with the reduced entries filled in (a new tensor).
    """
    dist = torch.distributed
    op = dist.ReduceOp.SUM if op is None else op
    if keys and keys[0] and keys.count(keys[0]) == len(keys):  # one mesh, all sharded
        todo = {keys[0]: list(range(len(keys)))}
    else:
        todo: dict[Groups, list[int]] = {}
        for i, key in enumerate(keys):
            if key:
                todo.setdefault(key, []).append(i)
        if not todo:
            return values
    values = values.clone()
    for groups, idx in todo.items():
        everything = len(idx) == values.numel()
        buf = values if everything else values[idx]  # (k,)
        for group in groups:
            dist.all_reduce(buf, op=op, group=group)
        if not everything:
            values[idx] = buf
    return values


def all_reduce_total(values: Tensor, keys: Sequence[Groups | None]) -> Tensor:
    """``Σ_i values[i]`` summed over the ranks that share tensor i: the entries are summed per
    set of process groups first, so that each collective moves one number (a gloo all-reduce
    of a few hundred numbers costs ~1 ms more than of one).

    Args:
        values: shape ``(n,)``.
        keys: as for :func:`all_reduce`.

    Returns:
        A 0-d tensor.
    """
    dist = torch.distributed
    if keys and keys[0] and keys.count(keys[0]) == len(keys):  # one mesh, all sharded
        total = values.sum()
        for group in keys[0]:
            dist.all_reduce(total, group=group)
        return total
    by_key: dict[Groups, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key or (), []).append(i)
    parts = []
    for key, idx in by_key.items():
        part = values[idx].sum()
        for group in key:
            dist.all_reduce(part, group=group)
        parts.append(part)
    return torch.stack(parts).sum()


def mesh_keys(tensors: Sequence[Tensor], what: str, *,
              rowwise: bool = False) -> list[Groups | None]:
    """Per tensor, the process groups :func:`all_reduce` needs: None for a plain tensor."""
    if rowwise:
        for t in tensors:
            if is_dtensor(t):
                shard_dims(t, what, rowwise=True)
    return [_info(t, what)[4] if is_dtensor(t) else None for t in tensors]


def all_groups(tensors: Sequence[Tensor]) -> list[Any]:
    """Every process group of the device meshes of the DTensors among ``tensors``, once each:
    reducing over all of them reaches every rank that holds part of any of them."""
    out: dict[int, Any] = {}
    for t in tensors:
        if is_dtensor(t):
            mesh = t.device_mesh
            for group in _mesh_groups(mesh, tuple(range(mesh.ndim))):
                out.setdefault(id(group), group)
    return list(out.values())


@dataclass(frozen=True)
class Layout:
    """Where a DTensor lives: enough to wrap a local shard back into the same DTensor."""

    mesh: Any
    placements: tuple[Any, ...]
    shape: torch.Size
    stride: tuple[int, ...]

    @classmethod
    def of(cls, t: Tensor) -> Layout | None:
        if not is_dtensor(t):
            return None
        return cls(t.device_mesh, tuple(t.placements), t.shape, t.stride())

    def wrap(self, local_tensor: Tensor) -> Tensor:
        """The DTensor whose local shard is ``local_tensor`` (shared storage, no communication)."""
        from torch.distributed.tensor import DTensor  # imported: a DTensor made this layout

        return DTensor.from_local(local_tensor, self.mesh, self.placements, run_check=False,
                                  shape=self.shape, stride=self.stride)

    def shard(self, value: Tensor) -> Tensor:
        """The local shard, in this layout, of ``value``: a DTensor of the same global shape
        (redistributed if placed differently) or a full plain tensor (sliced locally; no
        communication)."""
        if is_dtensor(value):
            if value.device_mesh != self.mesh or tuple(value.placements) != self.placements:
                value = value.redistribute(self.mesh, self.placements)
            return value.to_local()
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value, self.mesh, self.placements,
                                 src_data_rank=None).to_local()


def full(t: Tensor) -> Tensor:
    """The whole tensor: a DTensor gathered (a collective: every rank must call), else t."""
    return t.full_tensor() if is_dtensor(t) else t
