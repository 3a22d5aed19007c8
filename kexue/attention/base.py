"""The one contract every token mixer meets, and the multi-head wrapper attention mixers share.

Module form: ``mixer(x, key_padding_mask=None) -> y`` with x, y of shape (B, T, D) and an
optional key-padding mask (B, T), True = a real token (keep), False = padding.

Functional attention form, like ``F.scaled_dot_product_attention``:
``attend(q, k, v, key_padding_mask=None) -> out`` with q, k, v, out of shape (B, H, T, Dh).

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from kexue._checks import check_int as _check_int
from kexue._checks import check_real

__all__ = [
    "AttendFn",
    "MultiHeadAttention",
    "check_heads",
    "check_padding_mask",
    "check_qkv",
    "check_scale",
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
