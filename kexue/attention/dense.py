"""Full attention with any mask: the explicit reference, and the fused SDPA baseline.

:func:`dense_attention` writes softmax(Q Kᵀ · scale + mask) V out in plain tensor ops, in the
dtype it is given (float64 included); it is the ground truth the fast paths of
:mod:`kexue.attention.sparse` are tested against, and it is O(T²) in time and memory.
:func:`sdpa_attention` is the same maths through ``F.scaled_dot_product_attention``, the
baseline the fast paths are timed against. Shapes: q, k, v, out (B, H, T, Dh); a mask is a
mask function ``(b, h, q, k) -> bool`` (see :mod:`kexue.attention.masks`) or a bool tensor
broadcastable to (B, H, T, T); ``key_padding_mask`` (B, T), True = keep. True = visible.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from kexue.attention.base import (
    AttentionRows,
    MultiHeadAttention,
    attention_observed,
    check_padding_mask,
    check_qkv,
    check_scale,
    report_attention,
)
from kexue.attention.masks import MaskFn, dense_mask

__all__ = ["DenseAttention", "dense_attention", "sdpa_attention"]


def _visible(
    mask: MaskFn | Tensor | None, q: Tensor, key_padding_mask: Tensor | None
) -> Tensor | None:
    """The visibility pattern as one bool tensor (B|1, H|1, T, T), or None for all-visible."""
    b, h, t, _ = q.shape
    check_padding_mask(key_padding_mask, b, t)
    if mask is None:
        out = None
    elif isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = visible), got {mask.dtype}")
        if mask.device != q.device:
            raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")
        try:
            ok = mask.ndim <= 4 and torch.broadcast_shapes(mask.shape, (b, h, t, t)) == (b, h, t, t)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask must be broadcastable to (B, H, T, T) = {(b, h, t, t)}, "
                f"got {tuple(mask.shape)}"
            )
        out = mask.view((1,) * (4 - mask.ndim) + tuple(mask.shape))  # (B|1, H|1, T|1, T|1)
    elif callable(mask):
        out = dense_mask(mask, b, h, t, q.device)  # (B|1, H|1, T, T)
    else:
        raise ValueError(f"mask must be a mask function, a bool tensor or None, got {mask!r}")
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
        out = keep if out is None else out & keep
    return out


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: MaskFn | Tensor | None = None,
    *,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Reference attention with any mask, written out in full.

        A = softmax(Q Kᵀ · scale + log M),   out = A V

    where M[b, h, i, j] = mask(b, h, i, j) ∧ key_padding_mask[b, j] (log 0 = -inf). A query
    that sees no key at all gets a zero output (not NaN) and passes no gradient.

    Args:
        q, k, v: (B, H, T, Dh) in one floating dtype (float64 works).
        mask: mask function ``(b, h, q, k) -> bool``, bool tensor broadcastable to
            (B, H, T, T), or None (all visible). True = visible.
        key_padding_mask: (B, T) bool, True = a real key, False = padding.
        scale: logit scale; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dh) in q's dtype.

    Raises:
        ValueError: for bad shapes, dtypes, masks or scale, naming the argument.

    References:
        https://kexue.fm/archives/6853
    """
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    visible = _visible(mask, q, key_padding_mask)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, T)
    if visible is None:
        attn = torch.softmax(scores, dim=-1)  # (B, H, T, T)
    else:
        scores = scores.masked_fill(~visible, float("-inf"))
        seen = visible.any(dim=-1, keepdim=True)  # (B|1, H|1, T, 1)
        scores = torch.where(seen, scores, 0.0)  # a blind row: no -inf - -inf
        attn = torch.where(seen, torch.softmax(scores, dim=-1), 0.0)  # (B, H, T, T)
    if attention_observed():  # capture(attention=True): the matrix is already here
        work = torch.promote_types(attn.dtype, torch.float32)
        report_attention(AttentionRows(tuple(attn.shape),
                                       lambda start, stop: attn[:, :, start:stop].to(work),
                                       "dense"))
    return attn @ v  # (B, H, T, Dh)


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: MaskFn | Tensor | None = None,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Full attention through ``F.scaled_dot_product_attention``: the fused O(T²) baseline.

        out = softmax(Q Kᵀ · scale + log M) V,   M = mask ∧ causal ∧ key_padding_mask

    A mask function is materialised as a (B|1, H|1, T, T) bool tensor; with no mask and no
    padding, ``causal`` goes to SDPA's ``is_causal`` and nothing is materialised.

    Args:
        q, k, v: (B, H, T, Dh).
        mask: mask function, bool tensor broadcastable to (B, H, T, T), or None.
        causal: also hide future keys.
        key_padding_mask: (B, T) bool, True = keep.
        scale: logit scale; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dh).

    Raises:
        ValueError: for bad shapes, dtypes, masks or scale, naming the argument.
    """
    check_qkv(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    visible = _visible(mask, q, key_padding_mask)
    if visible is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    if causal:
        t = q.shape[2]
        visible = visible & torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)


class DenseAttention(MultiHeadAttention):
    """(B, T, D) multi-head attention over all T keys through fused SDPA (the O(T²) baseline).

    Args:
        dim: model width D.
        heads: number of heads H.
        mask: optional mask function or bool tensor (see :func:`sdpa_attention`).
        causal: hide future keys.
        bias: whether the projections have biases.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mask: MaskFn | Tensor | None = None,
        causal: bool = False,
        *,
        bias: bool = True,
    ) -> None:
        attend = functools.partial(sdpa_attention, mask=mask, causal=causal)
        super().__init__(dim, heads, attend, bias=bias)
        self.causal = causal
        self.mask = mask

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, mask={self.mask!r}, causal={self.causal}"
