"""The one contract every token mixer meets, and the multi-head wrapper attention mixers share.

Module form: ``mixer(x, key_padding_mask=None) -> y`` with x, y of shape (B, T, D) and an
optional key-padding mask (B, T), True = a real token (keep), False = padding.

Functional attention form, like ``F.scaled_dot_product_attention``:
``attend(q, k, v, key_padding_mask=None) -> out`` with q, k, v, out of shape (B, H, T, Dh).

Attention maps for observers: kexue's attention functions whose kernels never form the T x T
map (sparse, Nyström) describe it to an observer installed with :func:`observe_attention`
(``kexue.train.capture`` installs one) as :class:`AttentionRows`, a function of a block of
query rows, so that the observer decides what to compute. With no observer the only cost is
one :func:`attention_observed` check per call.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from kexue._checks import check_int as _check_int
from kexue._checks import check_real

__all__ = [
    "AttendFn",
    "AttentionRows",
    "MultiHeadAttention",
    "attention_observed",
    "check_heads",
    "check_padding_mask",
    "check_qkv",
    "check_scale",
    "masked_softmax_rows",
    "observe_attention",
    "report_attention",
    "reporting_attention",
]

AttendFn = Callable[..., Tensor]


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Validate (B, H, T, Dh) queries, keys and values of one self-attention call.

    Raises:
        ValueError: naming the tensor whose rank, shape, dtype or device does not fit.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a (B, H, T, Dh) tensor, got {got}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must share (B, H, T) and q, k their Dh; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")


def check_padding_mask(mask: Tensor | None, batch: int, length: int) -> Tensor | None:
    """Validate a (B, T) boolean key-padding mask (True = keep); None passes through.

    Raises:
        ValueError: for a wrong shape or a non-boolean dtype, or ``batch``/``length`` not
            ints >= 0.
    """
    batch = _check_int("batch", batch, low=0)
    length = _check_int("length", length, low=0)
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"key_padding_mask must be a bool tensor (True = keep), got {got}")
    if mask.shape != (batch, length):
        raise ValueError(
            f"key_padding_mask must have shape (B, T) = {(batch, length)}, got {tuple(mask.shape)}"
        )
    return mask


def check_scale(scale: float | None, head_dim: int) -> float:
    """The logit scale: ``scale`` itself, or 1/√Dh for None.

    Raises:
        ValueError: unless ``scale`` is None or a finite number > 0, or for ``scale=None``
            with a head size Dh < 1.
    """
    if scale is None:
        if head_dim < 1:
            raise ValueError(f"head size Dh (the last dim of q) must be >= 1, got {head_dim}")
        return head_dim**-0.5
    return check_real("scale", scale, low=0, low_open=True)


def check_heads(dim: int, heads: int) -> int:
    """Head size Dh = dim / heads.

    Raises:
        ValueError: unless ``dim`` and ``heads`` are positive ints and heads divides dim.
    """
    dim = _check_int("dim", dim, low=1)
    heads = _check_int("heads", heads, low=1)
    if dim % heads:
        raise ValueError(f"heads={heads} must divide dim={dim}")
    return dim // heads


class MultiHeadAttention(nn.Module):
    """(B, T, D) -> (B, T, D) self-attention around any functional ``attend``.

        q, k, v = x W_q, x W_k, x W_v split into H heads of Dh = D / H    # (B, H, T, Dh)
        y = attend(q, k, v, key_padding_mask) merged over heads, then W_o

    Args:
        dim: model width D.
        heads: number of heads H; must divide D.
        attend: functional attention on (B, H, T, Dh), e.g. ``functools.partial(
            local_attention, window=256)``.
        bias: whether the projections have biases.
    """

    def __init__(self, dim: int, heads: int, attend: AttendFn, *, bias: bool = True) -> None:
        super().__init__()
        self.head_dim = check_heads(dim, heads)
        if not callable(attend):
            raise ValueError(f"attend must be callable (q, k, v, key_padding_mask), got {attend!r}")
        self.dim, self.heads, self.attend = dim, heads, attend
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, T, {self.dim}), got {tuple(x.shape)}")
        b, t, d = x.shape
        check_padding_mask(key_padding_mask, b, t)
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        y = self.attend(q, k, v, key_padding_mask=key_padding_mask)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)

    def extra_repr(self) -> str:
        name = getattr(self.attend, "__name__", None) or repr(self.attend)
        return f"dim={self.dim}, heads={self.heads}, attend={name}"


# -- attention maps for observers ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AttentionRows:
    """The attention matrix A of one attention call, given a block of query rows at a time.

        out[..., i, :] = Σ_j A[..., i, j] · v[..., j, :],   A of shape (..., Tq, Tk)

    For softmax attention A = softmax(Q Kᵀ · scale + log M): each row a distribution over the
    keys the mask M shows (a row that sees no key is zeros). Nyström's implied matrix is not a
    softmax (rows sum to about 1, entries can be negative): ``distribution`` is then False.

    Attributes:
        shape: (..., Tq, Tk), the shape of the whole matrix.
        rows: ``rows(start, stop)`` -> A[..., start:stop, :], in float32 or wider; computing
            a block costs O(block · Tk) memory, never O(Tq · Tk) unless asked for all rows.
        kind: which attention made the call, e.g. ``"local"``, ``"nystrom"``.
        distribution: whether every row is a probability distribution (or zeros).
    """

    shape: tuple[int, ...]
    rows: Callable[[int, int], Tensor]
    kind: str
    distribution: bool = True


class _Observers(threading.local):
    """Per thread: the installed observers, and how deep we are inside reporting calls."""

    def __init__(self) -> None:  # runs once per thread: instance attributes, not class ones
        self.active: tuple[Callable[[AttentionRows], None], ...] = ()
        self.depth = 0


_OBSERVERS = _Observers()


def attention_observed() -> bool:
    """Whether an observer is installed on this thread (kexue's attention functions check this
    first and otherwise do nothing more)."""
    return bool(_OBSERVERS.active)


@contextlib.contextmanager
def observe_attention(observer: Callable[[AttentionRows], None]) -> Iterator[None]:
    """Install ``observer`` on this thread for the ``with`` block: every reported attention call
    (:func:`report_attention`) is handed to it as :class:`AttentionRows`.

    Raises:
        ValueError: if ``observer`` is not callable.
    """
    if not callable(observer):
        raise ValueError(f"observer must be callable (AttentionRows) -> None, got {observer!r}")
    _OBSERVERS.active = (*_OBSERVERS.active, observer)
    try:
        yield
    finally:
        active = list(_OBSERVERS.active)
        # the last occurrence: the same observer may be installed twice, nested
        del active[len(active) - 1 - active[::-1].index(observer)]
        _OBSERVERS.active = tuple(active)


@contextlib.contextmanager
def reporting_attention() -> Iterator[None]:
    """Mark the block as the inside of one reported attention call: the SDPA calls it makes are
    pieces of that call (landmark kernels, windows), not attention maps of their own, and an
    observer that also watches SDPA skips them while :func:`inside_reported_attention`."""
    _OBSERVERS.depth += 1
    try:
        yield
    finally:
        _OBSERVERS.depth -= 1


def inside_reported_attention() -> bool:
    """Whether this thread is inside :func:`reporting_attention`."""
    return _OBSERVERS.depth > 0


def report_attention(rows: AttentionRows) -> None:
    """Hand one attention call's matrix to every observer installed on this thread."""
    for observer in _OBSERVERS.active:
        observer(rows)


def masked_softmax_rows(
    q: Tensor,
    k: Tensor,
    scale: float,
    mask: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None,
    key_padding_mask: Tensor | None,
    *,
    kind: str,
) -> AttentionRows:
    """The softmax attention matrix of a masked pattern, for :func:`report_attention`.

        A[b, h, i, j] = softmax_j(q_i·k_j · scale + log M[b, h, i, j]),
        M = mask(b, h, i, j) ∧ key_padding_mask[b, j]     (log 0 = -inf)

    in float32 or wider; a row with no visible key is zeros.

    Args:
        q, k: (B, H, T, Dh) queries and keys.
        scale: logit scale.
        mask: mask function ``(b, h, i, j) -> bool`` on broadcasting index tensors (as in
            :mod:`kexue.attention.masks`), or None for all visible.
        key_padding_mask: (B, T) bool, True = keep, or None.
        kind: the name of the attention, for :attr:`AttentionRows.kind`.

    Returns:
        :class:`AttentionRows` of shape (B, H, T, T); nothing is computed until rows are asked.
    """
    b, h, t, _ = q.shape
    work = torch.promote_types(q.dtype, torch.float32)

    def rows(start: int, stop: int) -> Tensor:
        logits = q[:, :, start:stop].to(work) @ k.to(work).mT * scale  # (B, H, L, T)
        keep = None
        if mask is not None:
            dev = q.device
            keep = mask(
                torch.arange(b, device=dev).view(b, 1, 1, 1),
                torch.arange(h, device=dev).view(1, h, 1, 1),
                torch.arange(start, stop, device=dev).view(1, 1, -1, 1),
                torch.arange(t, device=dev).view(1, 1, 1, t),
            )  # broadcasts to (B, H, L, T)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
            keep = pad if keep is None else keep & pad
        if keep is None:
            return logits.softmax(-1)
        logits = logits.masked_fill(~keep, float("-inf"))
        blind = ~keep.any(-1, keepdim=True)  # (B|1, H|1, L, 1)
        return logits.softmax(-1).masked_fill(blind, 0.0)

    return AttentionRows((b, h, t, t), rows, kind)
