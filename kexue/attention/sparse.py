"""Sparse attention fast paths: local window, atrous (dilated), and local + strided.

Each pattern is the dense attention of :func:`kexue.attention.dense.dense_attention` under a
mask from :mod:`kexue.attention.masks`, computed without the T x T score matrix:

    local_attention(window)          local(window)                 chunks + one fused SDPA
    atrous_attention(rate)           dilated(rate)                 regroup + one fused SDPA
    sparse_attention(window, stride) or_(local(window), strided(stride))
                                                                   both of the above, merged
                                                                   in one softmax

Every function takes q, k, v of shape (B, H, T, Dh), returns (B, H, T, Dh), and has a causal
variant (``and_(causal(), ...)``) and a (B, T) ``key_padding_mask`` (True = keep; a padded key
is never seen, a query that sees no key gets 0). Any T >= 1 works (B, H or T = 0 is a
ValueError, as for ``dense_attention`` under the same mask): the sequence is padded to a
multiple of the block size internally and padded keys are masked out, padded queries dropped.
``window`` follows the convention of :mod:`kexue.attention.masks`: |q - k| <= window // 2.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)

    Child, Gray, Radford, Sutskever. Generating Long Sequences with Sparse Transformers.
    arXiv:1904.10509, 2019.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kexue.attention.base import (
    MultiHeadAttention,
    check_int,
    check_padding_mask,
    check_qkv,
    check_scale,
)

__all__ = [
    "AtrousAttention",
    "LocalAttention",
    "SparseAttention",
    "atrous_attention",
    "local_attention",
    "sparse_attention",
]

# The fused CPU kernel F.scaled_dot_product_attention dispatches to, called directly on the
# CPU: its log-sum-exp lets sparse_attention merge two softmaxes, and lets every backward go
# head by head (a whole-tensor backward allocates 3x the keys at once for the local windows).
# Absent, or off the CPU: F.scaled_dot_product_attention and plain tensor ops.
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None
)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One pattern rearranged for SDPA: queries (X, Y, L, Dh) against keys (X, Y, S, Dh).

    ``inputs(i)`` gives q, k, v for the slice ``i`` of dim 0 (X is H or B·H), built on demand
    so that the backward can go slice by slice without holding whole rearranged copies.
    ``mask`` (bool, True = visible) broadcasts to (X, Y, L, S); ``blind`` (B|1, H|1, T) marks
    the real queries that see no key here (None: there are none). ``to_seq`` maps an
    (X', Y, L, E) result back to (B, H', T, E) and ``from_seq`` the other way, for X' = X or a
    slice of it. ``rows(x, i)`` is the part of a contiguous (B, H, T, E) tensor that slice
    ``i`` maps to. Gradients: ``add_q_grad(g, out)`` adds a slice's query gradient (X', Y, L,
    E) to its ``rows``; key gradients of windows ``j`` (a slice of dim 1) are summed by
    ``add_key_grad(g, acc, j)`` into an accumulator ``key_grad_buffer(x')`` (X' rows), which
    ``key_grad_to_seq(acc)`` shows as the slice's ``rows``.
    """

    inputs: Callable[[slice], tuple[Tensor, Tensor, Tensor]]
    size: int
    mask: Tensor | None
    is_causal: bool
    blind: Tensor | None
    to_seq: Callable[[Tensor], Tensor]
    from_seq: Callable[[Tensor], Tensor]
    rows: Callable[[Tensor, slice], Tensor]
    add_q_grad: Callable[[Tensor, Tensor], None]
    key_grad_buffer: Callable[[Tensor], Tensor]
    add_key_grad: Callable[[Tensor, Tensor, slice], None]
    key_grad_to_seq: Callable[[Tensor], Tensor]


_ALL = slice(None)


def _local_layout(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    radius: int,
    causal: bool,
    key_padding_mask: Tensor | None,
    skip_stride: int | None = None,
) -> _Layout:
    """Chunks of c = radius queries, each against the keys of its (prev, self[, next]) chunks.

    All samples of a head are laid end to end, each with one empty chunk before it and
    ``span - 2`` after, so the key windows are one overlapping ``unfold`` view (no copy) and a
    window never spans two samples for a real query chunk. Window w = s * per + j serves chunk
    j of sample s; the few windows with j >= n straddle two samples, have padding for
    queries (so zero output gradient) and are dropped. ``skip_stride`` hides the keys a
    multiple of it away (they are counted by the strided part of :func:`sparse_attention`).
    """
    b, h, t, _ = q.shape
    c = max(radius, 1)
    n = -(-t // c)  # query chunks per sample
    span = 2 if causal else 3  # key chunks per query chunk
    per = n + span - 1  # chunks per sample once padded
    wins = b * per - span + 1  # = n when B = 1

    def lay(x: Tensor) -> Tensor:  # (B, H, T, E) -> (H, B * per * c, E)
        x = F.pad(x.transpose(0, 1), (0, 0, c, (per - 1) * c - t))  # (H, B, per * c, E)
        return x.reshape(x.shape[0], b * per * c, x.shape[-1])

    def from_seq(x: Tensor) -> Tensor:  # (B, H, T, E) -> (H, W, c, E)
        if b == 1 and t == n * c:  # no shift, no padding: a view when x is contiguous
            return x.reshape(x.shape[1], n, c, x.shape[-1])
        x = lay(x).view(x.shape[1], b * per, c, x.shape[-1])  # (H, B * per, c, E)
        return x[:, 1 : 1 + wins]

    def to_seq(x: Tensor) -> Tensor:  # (H, W, c, E) -> (B, H, T, E)
        if b > 1:
            x = F.pad(x, (0, 0, 0, 0, 0, span - 1))  # (H, B * per, c, E)
        x = x.reshape(x.shape[0], b, -1, x.shape[-1])[:, :, :t]  # (H, B, T, E)
        return x.transpose(0, 1)

    def inputs(i: slice) -> tuple[Tensor, Tensor, Tensor]:
        # keys: overlapping windows, an unfold view of the padded layout: (H', W, span * c, Dh)
        kw, vw = (lay(x[:, i]).unfold(1, span * c, c).transpose(-1, -2) for x in (k, v))
        return from_seq(q[:, i]), kw, vw  # (H', W, c, Dh), (H', W, span * c, Dh) x 2

    def rows(x: Tensor, i: slice) -> Tensor:  # (B, H, T, E) -> (B, H', T, E)
        return x[:, i]

    def add_q_grad(g: Tensor, out: Tensor) -> None:  # (H', W, c, E) into (B, H', T, E)
        out += to_seq(g)

    def key_grad_buffer(q_rows: Tensor) -> Tensor:  # (H', W, c, E) -> zeros (H', B * per, c, E)
        return q_rows.new_zeros(q_rows.shape[0], b * per, c, q_rows.shape[-1])

    def add_key_grad(g: Tensor, acc: Tensor, j: slice) -> None:  # (H', W', span * c, E)
        for s in range(span):  # slot s of window w holds padded chunk w + s
            acc[:, j.start + s : j.stop + s] += g[:, :, s * c : (s + 1) * c]

    def key_grad_to_seq(acc: Tensor) -> Tensor:  # (H', B * per, c, E) -> (B, H', T, E)
        acc = acc.view(acc.shape[0], b, per * c, acc.shape[-1])  # (H', B, per * c, E)
        return acc[:, :, c : c + t].transpose(0, 1)

    pos = torch.arange(span * c, device=q.device)
    d = c + pos[:c, None] - pos  # (c, S): query position - key position, in every window
    band = (d >= 0) & (d <= radius) if causal else d.abs() <= radius
    if skip_stride is not None:
        band &= d % skip_stride != 0
    keep = key_padding_mask if key_padding_mask is not None else q.new_ones(b, t, dtype=torch.bool)
    keep = F.pad(keep, (c, (per - 1) * c - t)).reshape(b * per * c)  # (B * per * c,)
    keep = keep.unfold(0, span * c, c)  # (W, S)
    mask = (band & keep[:, None, :]).unsqueeze(0)  # (1, W, c, S)
    blind = None
    if skip_stride is not None or key_padding_mask is not None:
        seen = mask.any(dim=-1, keepdim=True)  # (1, W, c, 1)
        blind = ~to_seq(seen).squeeze(-1)  # (B, 1, T)
    return _Layout(
        inputs=inputs,
        size=h,
        mask=mask,
        is_causal=False,
        blind=blind,
        to_seq=to_seq,
        from_seq=from_seq,
        rows=rows,
        add_q_grad=add_q_grad,
        key_grad_buffer=key_grad_buffer,
        add_key_grad=add_key_grad,
        key_grad_to_seq=key_grad_to_seq,
    )


def _atrous_layout(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    rate: int,
    causal: bool,
    key_padding_mask: Tensor | None,
) -> _Layout:
    """The note's reshape: ``rate`` interleaved groups (positions ≡ g mod rate) of m keys.

    (B, H, T, Dh) -> (B * H, rate, m, Dh) is a strided view (a copy only for padding or a
    non-contiguous input). Causal within a group is causal in the sequence, and a padded key
    comes after every real query of its group, so only key padding (or tail padding without
    causal) needs a mask, of shape (B * H | 1, rate, 1, m).
    """
    b, h, t, _ = q.shape
    m = -(-t // rate)  # group length
    tp = m * rate

    def from_seq(x: Tensor) -> Tensor:  # (B, H, T, E) -> (B * H, rate, m, E)
        if tp > t:
            x = F.pad(x, (0, 0, 0, tp - t))  # (B, H, Tp, E)
        return x.reshape(-1, m, rate, x.shape[-1]).transpose(1, 2)

    def to_seq(x: Tensor) -> Tensor:  # (B * H, rate, m, E) -> (B, H, T, E)
        x = x.transpose(1, 2).reshape(b, -1, tp, x.shape[-1])  # (B, H, Tp, E)
        return x[:, :, :t]

    def rows(x: Tensor, i: slice) -> Tensor:  # (B, H, T, E) contiguous -> (BH', T, E)
        return x.view(b * h, t, x.shape[-1])[i]

    def ungroup(x: Tensor) -> Tensor:  # (BH', rate, m, E) -> (BH', T, E)
        return x.transpose(1, 2).reshape(x.shape[0], tp, x.shape[-1])[:, :t]

    def add_q_grad(g: Tensor, out: Tensor) -> None:
        out += ungroup(g)

    def add_key_grad(g: Tensor, acc: Tensor, j: slice) -> None:  # (BH', rate', m, E)
        acc[:, j] += g

    mask = blind = None
    if key_padding_mask is not None or (tp > t and not causal):
        keep = key_padding_mask
        if keep is None:
            keep = q.new_ones(1, t, dtype=torch.bool)
        keep = F.pad(keep, (0, tp - t)).view(-1, m, rate).transpose(1, 2)  # (B|1, rate, m)
        if key_padding_mask is None:
            mask = keep.unsqueeze(-2)  # (1, rate, 1, m)
        else:
            mask = keep[:, None, :, None, :].expand(b, h, rate, 1, m).reshape(b * h, rate, 1, m)
            # a query is blind when its group has no real key (up to itself, if causal)
            seen = keep.cumsum(-1) > 0 if causal else keep.any(-1, keepdim=True).expand_as(keep)
            blind = ~seen.transpose(1, 2).reshape(b, 1, tp)[:, :, :t]  # (B, 1, T)
    grouped = [from_seq(x) for x in (q, k, v)]  # each (B * H, rate, m, Dh)
    return _Layout(
        inputs=lambda i: tuple(x[i] for x in grouped),
        size=b * h,
        mask=mask,
        is_causal=causal,
        blind=blind,
        to_seq=to_seq,
        from_seq=from_seq,
        rows=rows,
        add_q_grad=add_q_grad,
        key_grad_buffer=torch.zeros_like,
        add_key_grad=add_key_grad,
        key_grad_to_seq=ungroup,
    )


Builder = Callable[[Tensor, Tensor, Tensor], _Layout]


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool mask (True = visible) -> 0 / -inf in ``dtype``, as the flash kernel takes it."""
    if mask is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, float("-inf"))


def _merge(
    outs: Sequence[Tensor], lses: Sequence[Tensor], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """One softmax over disjoint key sets from each set's output and log-sum-exp.

        lse = log Σ_i exp(lse_i),   out = Σ_i exp(lse_i - lse) out_i

    A query blind in every set (lse = -inf everywhere) gets out = 0 and lse = 0.
    """
    lse = functools.reduce(torch.logaddexp, lses)  # (B, H, T)
    lse = torch.where(torch.isfinite(lse), lse, 0.0)
    out = sum(torch.exp(part - lse).unsqueeze(-1) * o for o, part in zip(outs, lses, strict=True))
    return out.to(dtype), lse


# The backward goes one head at a time, in blocks of windows (dim 1) whose keys hold about
# this many elements: the kernel's gradient buffers stay small and are reused, where one big
# buffer is a fresh, page-faulting allocation on every call.
_BACKWARD_SLICE = 1 << 20


def _slices(size: int, step: int) -> list[slice]:
    return [slice(a, min(a + step, size)) for a in range(0, size, step)]


class _FlashAttention(torch.autograd.Function):
    """Attention over the union of disjoint key sets, each in its own layout, on the CPU kernel.

    Forward builds the layouts from (B, H, T, Dh) q, k, v and runs the flash kernel once per
    layout; with several layouts the results are merged by log-sum-exp. Backward runs the
    flash backward per layout with the *merged* output and log-sum-exp: the kernel recomputes
    P = exp(S - lse) and D = rowsum(dO ∘ out) from them, which are then exactly the rows of
    the joint softmax, so each call returns that layout's share of the true gradient. It goes
    one head at a time in blocks of windows, rebuilding each block's inputs, and adds the
    gradients straight into (B, H, T, Dh) buffers.
    """

    @staticmethod
    def forward(
        ctx, builders: Sequence[Builder], scale: float, q: Tensor, k: Tensor, v: Tensor
    ) -> Tensor:
        layouts = [build(q, k, v) for build in builders]
        masks = [_additive(lay.mask, q.dtype) for lay in layouts]
        outs, lses = [], []
        for lay, mask in zip(layouts, masks, strict=True):
            out, lse = _FLASH(
                *lay.inputs(_ALL), 0.0, lay.is_causal, attn_mask=mask, scale=scale
            )  # (X, Y, L, Dh), (X, Y, L)
            outs.append(out)
            lses.append(lse)
        # the bool masks are not needed any more: their additive forms are saved
        ctx.layouts = [dataclasses.replace(lay, mask=None) for lay in layouts]
        ctx.has_mask, ctx.scale = [m is not None for m in masks], scale
        if len(layouts) == 1:  # the kernel's own lse serves the backward
            out = layouts[0].to_seq(outs[0])
            # q, k, v ride along for autograd's in-place checks (the layouts hold views of them)
            ctx.save_for_backward(q, k, v, out, lses[0], *[m for m in masks if m is not None])
            return out
        seq_outs, seq_lses = [], []
        for lay, out, lse in zip(layouts, outs, lses, strict=True):
            lse = lay.to_seq(lse.unsqueeze(-1)).squeeze(-1)  # (B, H, T)
            if lay.blind is not None:  # the kernel reports 0, not -inf, for a blind row
                lse = lse.masked_fill(lay.blind, float("-inf"))
            seq_outs.append(lay.to_seq(out).to(lse.dtype))  # (B, H, T, Dh)
            seq_lses.append(lse)
        out, lse = _merge(seq_outs, seq_lses, q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, *[m for m in masks if m is not None])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        _, _, _, out, lse, *masks = ctx.saved_tensors
        masks = iter(masks)
        merged = len(ctx.layouts) > 1
        grads = [grad.new_zeros(grad.shape) for _ in range(3)]  # dq, dk, dv: (B, H, T, Dh)
        for lay, has_mask in zip(ctx.layouts, ctx.has_mask, strict=True):
            mask = next(masks) if has_mask else None
            g, o = lay.from_seq(grad), lay.from_seq(out)  # (X, Y, L, Dh)
            lse_ = lay.from_seq(lse.unsqueeze(-1)).squeeze(-1) if merged else lse
            for i in _slices(lay.size, 1):  # heads (or batch x heads) one at a time
                q, kw, vw = lay.inputs(i)  # (X', Y, L, Dh), (X', Y, S, Dh) x 2
                dq, dk, dv = torch.zeros_like(q), lay.key_grad_buffer(q), lay.key_grad_buffer(q)
                for j in _slices(q.shape[1], max(1, _BACKWARD_SLICE // kw[0, 0].numel())):
                    mask_ = None if mask is None else mask[
                        i if mask.shape[0] > 1 else _ALL, j if mask.shape[1] > 1 else _ALL
                    ]
                    dq_, dk_, dv_ = _FLASH_BACKWARD(
                        g[i, j], q[:, j], kw[:, j], vw[:, j], o[i, j], lse_[i, j], 0.0,
                        lay.is_causal, attn_mask=mask_, scale=ctx.scale,
                    )
                    dq[:, j] = dq_
                    lay.add_key_grad(dk_, dk, j)
                    lay.add_key_grad(dv_, dv, j)
                lay.add_q_grad(dq, lay.rows(grads[0], i))
                lay.rows(grads[1], i).add_(lay.key_grad_to_seq(dk))
                lay.rows(grads[2], i).add_(lay.key_grad_to_seq(dv))
        return (None, None, *grads)


def _attend_with_lse(lay: _Layout, scale: float) -> tuple[Tensor, Tensor]:
    """Plain-tensor-op attention of one layout, with its log-sum-exp (-inf for a blind row)."""
    q, k, v = lay.inputs(_ALL)
    s = (q @ k.transpose(-1, -2)) * scale  # (X, Y, L, S)
    visible = lay.mask
    if lay.is_causal:
        length = q.shape[-2]
        tril = torch.ones(length, length, dtype=torch.bool, device=s.device).tril()
        visible = tril if visible is None else visible & tril
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (X, Y, L, 1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0))
    return p @ v, lse  # (X, Y, L, Dh), (X, Y, L, 1)


def _attend(
    builders: Sequence[Builder], scale: float, q: Tensor, k: Tensor, v: Tensor
) -> Tensor:
    """Attention over the union of the layouts' (disjoint) key sets, as (B, H, T, Dh).

    On the CPU: the flash kernel through :class:`_FlashAttention`. Elsewhere: one layout goes
    to ``F.scaled_dot_product_attention``, several to plain tensor ops merged by
    log-sum-exp; autograd differentiates both.
    """
    if q.device.type == "cpu" and _FLASH is not None and _FLASH_BACKWARD is not None:
        return _FlashAttention.apply(builders, scale, q, k, v)
    layouts = [build(q, k, v) for build in builders]
    if len(layouts) == 1:
        lay = layouts[0]
        out = F.scaled_dot_product_attention(
            *lay.inputs(_ALL), attn_mask=lay.mask, is_causal=lay.is_causal, scale=scale
        )
        return lay.to_seq(out)
    outs, lses = [], []
    for lay in layouts:
        out, lse = _attend_with_lse(lay, scale)
        outs.append(lay.to_seq(out))
        lses.append(lay.to_seq(lse).squeeze(-1))
    return _merge(outs, lses, q.dtype)[0]


def _prepare(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, scale: float | None
) -> tuple[Tensor | None, float]:
    """Check the inputs; an empty B, H or T is an error, as for ``dense_attention`` under the
    pattern's mask (the masks of :mod:`kexue.attention.masks` need B, H, T >= 1)."""
    check_qkv(q, k, v)
    for dim, size in zip("BHT", q.shape[:3], strict=True):
        if size < 1:
            raise ValueError(
                f"q, k, v must have {dim} >= 1, got {dim} = {size} (q of shape "
                f"{tuple(q.shape)}); as for dense_attention under the same mask, a sparse "
                "pattern needs a nonempty batch, heads and sequence"
            )
    for name, t in (("q, k", q), ("v", v)):
        if t.shape[-1] < 1:
            raise ValueError(f"{name} must have Dh >= 1, got shape {tuple(t.shape)}")
    return check_padding_mask(key_padding_mask, q.shape[0], q.shape[2]), check_scale(
        scale, q.shape[-1]
    )


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Local Self Attention: each query sees the keys within ``window // 2`` of it.

        out_i = Σ_{|i-j| <= r} softmax_j(q_i·k_j · scale) v_j,   r = window // 2
        (causal: 0 <= i - j <= r)

    The sequence is cut into chunks of c = r queries (half the window); a chunk's queries see
    the 3c keys of the previous, own and next chunk (2c when causal: previous and own), an
    overlapping ``unfold`` view of the padded keys, so every query's band lies inside its
    window. All chunks go through ONE fused SDPA call on (H, W, c, Dh) x (H, W, 3c, Dh) with
    a 4-D mask (1, W, c, 3c) holding the band, the sequence ends and the key padding (a 3-D
    mask would make SDPA leave its fused CPU kernel for the unfused one). On the CPU the call
    is the fused kernel itself and the backward runs head by head, folding the window
    gradients straight into (B, H, T, Dh).
    Cost: O(T · 3r · Dh) time (O(T · 2r · Dh) causal) and O(T · 3r) mask memory, vs
    O(T² · Dh) dense; 2/3 of the computed scores are used (1/2 causal).

    Args:
        q, k, v: (B, H, T, Dh).
        window: band width, an int >= 1 (see :mod:`kexue.attention.masks`).
        causal: also hide future keys.
        key_padding_mask: (B, T) bool, True = keep.
        scale: logit scale; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dh); equals ``dense_attention(q, k, v, local(window))`` (and causal()).

    Raises:
        ValueError: for bad shapes or dtypes (B, H or T = 0 included), or a ``window`` that is
            not an int >= 1.

    References:
        https://kexue.fm/archives/6853
    """
    key_padding_mask, scale = _prepare(q, k, v, key_padding_mask, scale)
    radius = min(check_int("window", window) // 2, q.shape[2] - 1)
    build = functools.partial(
        _local_layout, radius=radius, causal=causal, key_padding_mask=key_padding_mask
    )
    return _attend([build], scale, q, k, v)


def atrous_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rate: int,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Atrous (dilated) Self Attention: each query sees the keys of its residue class mod rate.

        out_i = Σ_{j ≡ i (mod rate)} softmax_j(q_i·k_j · scale) v_j

    The note's reshape trick: T is padded to m · rate and (B, H, T, Dh) viewed as
    (B·H, rate, m, Dh), the ``rate`` interleaved groups side by side as heads, so one dense
    fused SDPA call on the groups (``is_causal`` for the causal variant) is exactly the
    pattern; the output comes back in sequence order through a view. No mask unless keys are
    padded. Cost: O(T² · Dh / rate) time, no T x T memory.

    Args:
        q, k, v: (B, H, T, Dh).
        rate: dilation rate, an int >= 1; it need not divide T.
        causal: also hide future keys.
        key_padding_mask: (B, T) bool, True = keep.
        scale: logit scale; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dh); equals ``dense_attention(q, k, v, dilated(rate))`` (and causal()).

    Raises:
        ValueError: for bad shapes or dtypes (B, H or T = 0 included), or a ``rate`` that is
            not an int >= 1.

    References:
        https://kexue.fm/archives/6853
    """
    key_padding_mask, scale = _prepare(q, k, v, key_padding_mask, scale)
    rate = min(check_int("rate", rate), q.shape[2])
    build = functools.partial(
        _atrous_layout, rate=rate, causal=causal, key_padding_mask=key_padding_mask
    )
    return _attend([build], scale, q, k, v)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    stride: int,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """The note's Sparse Self Attention: local window ∪ strided keys, each key counted once.

        out_i = Σ_{j ∈ A_i} softmax_j(q_i·k_j · scale) v_j,
        A_i = {j : |i - j| <= window // 2} ∪ {j : (i - j) mod stride = 0}   (causal: j <= i)

    Two disjoint parts share one softmax: the local part (the chunk layout of
    :func:`local_attention`, with the keys a multiple of ``stride`` away masked out, so that no
    key is counted twice) and the strided part (the group layout of :func:`atrous_attention`
    with ``rate = stride``). On the CPU each part is one call of the fused flash kernel,
    which also returns its log-sum-exp; the outputs are merged by log-sum-exp, and the
    backward hands each part's kernel the merged output and log-sum-exp, so no score matrix
    is ever stored. Elsewhere the parts run as plain tensor ops (same maths, O(T · (3r +
    T / stride)) memory). Cost: O(T · (3r + T / stride) · Dh) time, vs O(T² · Dh) dense.

    Args:
        q, k, v: (B, H, T, Dh).
        window: band width of the local part, an int >= 1 (radius window // 2).
        stride: distance between strided keys, an int >= 1; it need not divide T.
        causal: also hide future keys.
        key_padding_mask: (B, T) bool, True = keep.
        scale: logit scale; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dh); equals ``dense_attention(q, k, v, or_(local(window), strided(stride)))``
        (and causal()).

    Raises:
        ValueError: for bad shapes or dtypes (B, H or T = 0 included), or ``window`` /
            ``stride`` not an int >= 1.

    References:
        https://kexue.fm/archives/6853

        Child et al. 2019, Generating Long Sequences with Sparse Transformers.
    """
    key_padding_mask, scale = _prepare(q, k, v, key_padding_mask, scale)
    t = q.shape[2]
    radius = min(check_int("window", window) // 2, t - 1)
    stride = min(check_int("stride", stride), t)
    local = functools.partial(
        _local_layout, radius=radius, causal=causal, key_padding_mask=key_padding_mask,
        skip_stride=stride,
    )
    strided = functools.partial(
        _atrous_layout, rate=stride, causal=causal, key_padding_mask=key_padding_mask
    )
    return _attend([local, strided], scale, q, k, v)


class LocalAttention(MultiHeadAttention):
    """(B, T, D) multi-head Local Self Attention (see :func:`local_attention`).

    Args:
        dim: model width D.
        heads: number of heads H.
        window: band width, |q - k| <= window // 2.
        causal: hide future keys.
        bias: whether the projections have biases.

    References:
        https://kexue.fm/archives/6853
    """

    def __init__(
        self, dim: int, heads: int, window: int, causal: bool = False, *, bias: bool = True
    ) -> None:
        check_int("window", window)
        attend = functools.partial(local_attention, window=window, causal=causal)
        super().__init__(dim, heads, attend, bias=bias)
        self.window, self.causal = window, causal

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, window={self.window}, causal={self.causal}"


class AtrousAttention(MultiHeadAttention):
    """(B, T, D) multi-head Atrous Self Attention (see :func:`atrous_attention`).

    Args:
        dim: model width D.
        heads: number of heads H.
        rate: dilation rate.
        causal: hide future keys.
        bias: whether the projections have biases.

    References:
        https://kexue.fm/archives/6853
    """

    def __init__(
        self, dim: int, heads: int, rate: int, causal: bool = False, *, bias: bool = True
    ) -> None:
        check_int("rate", rate)
        attend = functools.partial(atrous_attention, rate=rate, causal=causal)
        super().__init__(dim, heads, attend, bias=bias)
        self.rate, self.causal = rate, causal

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, rate={self.rate}, causal={self.causal}"


class SparseAttention(MultiHeadAttention):
    """(B, T, D) multi-head Sparse Self Attention, local ∪ strided (see :func:`sparse_attention`).

    Args:
        dim: model width D.
        heads: number of heads H.
        window: band width of the local part.
        stride: distance between strided keys.
        causal: hide future keys.
        bias: whether the projections have biases.

    References:
        https://kexue.fm/archives/6853
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        stride: int,
        causal: bool = False,
        *,
        bias: bool = True,
    ) -> None:
        check_int("window", window)
        check_int("stride", stride)
        attend = functools.partial(sparse_attention, window=window, stride=stride, causal=causal)
        super().__init__(dim, heads, attend, bias=bias)
        self.window, self.stride, self.causal = window, stride, causal

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, window={self.window}, stride={self.stride}, "
            f"causal={self.causal}"
        )
