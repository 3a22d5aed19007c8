"""Sparse attention fast paths: local window, atrous (dilated), and local + strided.

Each pattern is the dense attention of :func:`kexue.attention.dense.dense_attention` under a
mask from :mod:`kexue.attention.masks`, computed without the T x T score matrix:

    local_attention(window)          local(window)                 chunks + fused SDPA
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

Each pattern is a layout (:class:`_LocalLayout`, :class:`_AtrousLayout`): a few *parts*, each
one SDPA call of queries (N, W, L, Dh) against keys (N, W, S, Dh). On the CPU the calls go to
the fused flash kernel through :mod:`kexue.attention._fused` (self-checked once against public
SDPA; ``KEXUE_PORTABLE_ATTENTION=1`` or ``kexue.attention._fused.use_portable(True)`` forces
public ops only), elsewhere to ``F.scaled_dot_product_attention`` and plain tensor ops. Under
``torch.compile`` the fused CPU path runs eagerly, as one graph break per call.

While an attention observer is installed (``kexue.train.capture(..., attention=True)``), each
call also reports the T x T matrix its pattern implies, as the mask function of
:mod:`kexue.attention.masks` it equals (:func:`kexue.attention.base.masked_softmax_rows`); the
kernels' own pieces are not reported. With no observer, nothing more than one check runs.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)

    Child, Gray, Radford, Sutskever. Generating Long Sequences with Sparse Transformers.
    arXiv:1904.10509, 2019.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kexue._checks import check_int
from kexue.attention import _fused, masks
from kexue.attention.base import (
    MultiHeadAttention,
    attention_observed,
    check_padding_mask,
    check_qkv,
    check_scale,
    masked_softmax_rows,
    report_attention,
    reporting_attention,
)

__all__ = [
    "AtrousAttention",
    "LocalAttention",
    "SparseAttention",
    "atrous_attention",
    "local_attention",
    "sparse_attention",
]

_ALL = slice(None)
# Local query chunks hold c = ceil(r / 2) queries, so a window of c + 2r keys (5 chunks) holds
# the 2r + 1 keys of each query's band: 80% of the computed scores are used, where chunks of
# c = r (3 chunks) use 67%; smaller chunks cost more in the backward's key-gradient folding.
_CHUNKS_PER_RADIUS = 2


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool mask (True = visible) -> 0 / -inf in ``dtype``, as the flash kernel takes it."""
    if mask is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, float("-inf"))


@dataclasses.dataclass
class _Part:
    """One SDPA call of a layout: which queries, the visibility mask, and its additive form.

    ``sample`` is the batch index (local parts; None: all of B·H), ``start:stop`` the range of
    the layout's windows (query chunks for local, all groups for atrous). ``mask`` (bool, True
    = visible) broadcasts to (N, W, L, S); ``blind`` (N|1, W, L) marks the queries that see no
    key in this part (None: there are none); ``additive`` is the mask as 0 / -inf, made once.
    """

    sample: int | None
    start: int
    stop: int
    mask: Tensor | None
    blind: Tensor | None
    additive: Tensor | None = None


class _LocalLayout:
    """Local window: query i sees key j iff |i - j| <= r (causal: 0 <= i - j <= r).

    The sequence is cut into chunks of c = ceil(r / 2) queries (r = 1: 1; r = 0: 1), and
    p = ceil(r / c) (2, or 1 for r <= 1, 0 for r = 0). Query chunk j sees the key chunks
    j - p .. j + p (j - p .. j when causal): a window of S = (2p + 1) · c keys (causal
    (p + 1) · c) that holds every key of its queries' bands, so one SDPA call over all
    windows, with the band as mask, is the pattern:

        window of chunk j = keys [(j - p)·c, (j + p + 1)·c),
        band: key at window slot s is seen by query a of the chunk iff |p·c + a - s| <= r
        (causal: 0 <= p·c + a - s <= r). ``skip_stride`` also hides the keys whose
    offset i - j is a multiple of it (they belong to the strided part of
    :func:`sparse_attention`).

    Per sample the windows come in three parts: the *interior* chunks, whose windows lie inside
    the sequence, are an ``unfold`` view of the keys (no copy) and share one (1, 1, c, S) band
    mask (per-window masks (1, W, c, S) only with key padding); the first p and the last p (+1)
    chunks, whose windows run past the sequence ends, are small zero-padded copies with their
    own mask. The parts' dim 0 is the head: N = H, W = windows, L = c.
    """

    def __init__(
        self,
        q: Tensor,
        radius: int,
        causal: bool,
        key_padding_mask: Tensor | None,
        skip_stride: int | None = None,
    ) -> None:
        self.batch, self.heads, self.length, _ = q.shape
        t = self.length
        self.causal = False  # the band mask holds causality
        per = min(_CHUNKS_PER_RADIUS, max(radius, 1))
        self.chunk = c = max(-(-radius // per), 1)
        self.chunks = n = -(-t // c)  # query chunks per sample
        self.before = -(-radius // c)  # key chunks before a query chunk
        self.after = 0 if causal else self.before  # key chunks after it
        self.window = (1 + self.before + self.after) * c  # S keys per window
        self.size = self.heads
        pos = torch.arange(self.window, device=q.device)
        d = self.before * c + pos[:c, None] - pos  # (c, S): query position - key position
        band = (d >= 0) & (d <= radius) if causal else d.abs() <= radius
        if skip_stride is not None:
            band &= d % skip_stride != 0
        full = t // c  # chunks whose queries are all real
        lo = min(self.before, n)
        hi = max(min(full - self.after, n), lo)  # interior chunks: [lo, hi)
        ranges = [(a, b) for a, b in ((0, lo), (lo, hi), (hi, n)) if b > a]
        self.parts = []
        for s in range(self.batch):
            for a, b in ranges:
                first = (a - self.before) * c  # position of the first key of window a
                kpos = first + c * torch.arange(b - a, device=q.device)[:, None] + pos  # (W, S)
                valid = (kpos >= 0) & (kpos < t)
                if key_padding_mask is not None:
                    valid &= key_padding_mask[s].index_select(0, kpos.clamp(0, t - 1).flatten()
                                                              ).view(kpos.shape)
                if bool(valid.all()):
                    mask = None if bool(band.all()) else band[None, None]  # (1, 1, c, S)
                else:
                    mask = (band & valid[:, None, :])[None]  # (1, W, c, S)
                blind = None
                if mask is not None and (skip_stride is not None or key_padding_mask is not None):
                    blind = ~mask.any(-1)  # (1, 1|W, c)
                    blind = None if not bool(blind.any()) else blind
                self.parts.append(_Part(s, a, b, mask, blind))

    def queries(self, x: Tensor, part: _Part) -> Tensor:
        """(B, H, T, E) -> (H, W, c, E): the part's query chunks (zero-padded past T)."""
        c = self.chunk
        a, b = part.start * c, part.stop * c
        x = x[part.sample, :, a:b]  # (H, <= W·c, E)
        if x.shape[1] < b - a:
            x = F.pad(x, (0, 0, 0, b - a - x.shape[1]))  # (H, W·c, E)
        return x.unflatten(1, (part.stop - part.start, c))  # (H, W, c, E)

    def keys(self, x: Tensor, part: _Part) -> Tensor:
        """(B, H, T, E) -> (H, W, S, E): the part's key windows, a view inside the sequence."""
        c, t = self.chunk, self.length
        lo, hi = (part.start - self.before) * c, (part.stop + self.after) * c  # key positions
        x = x[part.sample, :, max(lo, 0) : min(hi, t)]  # (H, <= hi - lo, E)
        if lo < 0 or hi > t:
            x = F.pad(x, (0, 0, max(-lo, 0), max(hi - t, 0)))  # (H, hi - lo, E)
        return x.unfold(1, self.window, c).transpose(-1, -2)  # (H, W, S, E)

    def place(self, y: Tensor, part: _Part, heads: slice, out: Tensor, windows: slice = _ALL,
              add: bool = False) -> None:
        """Write (or add) (H', W', c, E), windows ``windows`` of ``part``, into (B, H, T, E)."""
        first = part.start + (windows.start or 0)  # query chunk of the first window
        self._write_chunks(y, out[part.sample, heads], first, add)

    def fold_keys(self, g: Tensor, part: _Part, heads: slice, out: Tensor,
                  windows: slice = _ALL) -> None:
        """Add key-window gradients (H', W', S, E) into (B, H, T, E): slot s of window w is
        key chunk w - before + s."""
        c, n = self.chunk, self.chunks
        first = part.start + (windows.start or 0)  # the first window's query chunk
        for s in range(self.window // c):
            lo = first - self.before + s  # key chunk of slot s in the first window
            a, b = max(lo, 0), min(lo + g.shape[1], n)
            if b > a:
                src = g[:, a - lo : b - lo, s * c : (s + 1) * c]  # (H', b - a, c, E)
                self._write_chunks(src, out[part.sample, heads], a, add=True)

    def _write_chunks(self, src: Tensor, rows: Tensor, a: int, add: bool) -> None:
        """Write (or add) chunks (H', W', c, E) at chunk a of rows (H', T, E), cut at T.

        The target is an (H', W', c, E) view of the rows, so any layout of ``src`` (the kernel
        returns (N, L, W, E) memory) is read once, with no intermediate copy."""
        c = self.chunk
        end = min((a + src.shape[1]) * c, self.length)
        whole = (end - a * c) // c  # chunks not cut at T
        if whole:
            target = rows[:, a * c : (a + whole) * c].unflatten(1, (whole, c))  # (H', W, c, E)
            target.add_(src[:, :whole]) if add else target.copy_(src[:, :whole])
        if whole < src.shape[1] and end > (a + whole) * c:  # the last chunk, cut at T
            target = rows[:, (a + whole) * c : end]  # (H', < c, E)
            part = src[:, whole, : end - (a + whole) * c]
            target.add_(part) if add else target.copy_(part)

    def assemble(self, ys: Sequence[Tensor], like: Tensor) -> Tensor:
        """The parts' outputs (H, W, c, E) as one (B, H, T, E) tensor (``like``: B, H, T)."""
        out = ys[0].new_empty(like.shape[:3] + ys[0].shape[-1:])  # (B, H, T, E)
        for y, part in zip(ys, self.parts, strict=True):
            self.place(y, part, _ALL, out)
        return out


class _AtrousLayout:
    """Atrous (dilated): query i sees key j iff i ≡ j (mod rate) (causal: also j <= i).

    The note's reshape: T is padded to m · rate and (B, H, T, Dh) viewed as (B·H, rate, m, Dh),
    the ``rate`` interleaved groups of positions ≡ g (mod rate) side by side as heads, so one
    dense SDPA call (``is_causal`` for the causal variant) is the pattern. Causal within a group
    is causal in the sequence, and a padded key comes after every real query of its group, so
    only key padding (or tail padding without causal) needs a mask, (B·H | 1, rate, 1, m).
    One part: N = B·H, W = rate, L = S = m.
    """

    def __init__(
        self, q: Tensor, rate: int, causal: bool, key_padding_mask: Tensor | None
    ) -> None:
        b, h, t, _ = q.shape
        self.batch, self.heads, self.length, self.rate, self.causal = b, h, t, rate, causal
        self.group = m = -(-t // rate)  # group length
        self.padded = m * rate
        self.size = b * h
        mask = blind = None
        if key_padding_mask is not None or (self.padded > t and not causal):
            keep = key_padding_mask
            if keep is None:
                keep = q.new_ones(1, t, dtype=torch.bool)
            keep = F.pad(keep, (0, self.padded - t)).view(-1, m, rate).transpose(1, 2)
            # keep: (B|1, rate, m)
            if key_padding_mask is None:
                mask = keep.unsqueeze(-2)  # (1, rate, 1, m)
            else:
                mask = keep[:, None, :, None, :].expand(b, h, rate, 1, m).reshape(b * h, rate, 1, m)
                # a query is blind when its group has no real key (up to itself, if causal):
                # (B·H, rate, m)
                seen = keep.cumsum(-1) > 0 if causal else keep.any(-1, keepdim=True).expand_as(keep)
                blind = ~seen[:, None].expand(b, h, rate, m).reshape(b * h, rate, m)
                blind = None if not bool(blind.any()) else blind
        self.parts = [_Part(None, 0, rate, mask, blind)]

    def _grouped(self, x: Tensor) -> Tensor:  # (B, H, T, E) -> (B·H, rate, m, E)
        if self.padded > self.length:
            x = F.pad(x, (0, 0, 0, self.padded - self.length))  # (B, H, m·rate, E)
        return x.reshape(-1, self.group, self.rate, x.shape[-1]).transpose(1, 2)

    def queries(self, x: Tensor, part: _Part) -> Tensor:
        """(B, H, T, E) -> (B·H, rate, m, E): a view unless T is padded."""
        return self._grouped(x)

    keys = queries

    def place(self, y: Tensor, part: _Part, heads: slice, out: Tensor, windows: slice = _ALL,
              add: bool = False) -> None:
        """Write (or add) (BH', rate', m, E), groups ``windows``, into (B, H, T, E)."""
        e = out.shape[-1]
        if self.padded == self.length:  # a strided view of out: no copy
            target = out.view(-1, self.group, self.rate, e).transpose(1, 2)[heads, windows]
            target.add_(y) if add else target.copy_(y)
            return
        full = out.new_zeros(y.shape[0], self.rate, self.group, e)  # (BH', rate, m, E)
        full[:, windows] = y
        y = full.transpose(1, 2).reshape(y.shape[0], self.padded, e)[:, : self.length]
        target = out.view(-1, self.length, e)[heads]  # (BH', T, E)
        target.add_(y) if add else target.copy_(y)

    def fold_keys(self, g: Tensor, part: _Part, heads: slice, out: Tensor,
                  windows: slice = _ALL) -> None:
        """Add key gradients (BH', rate', m, E) of groups ``windows`` into (B, H, T, E)."""
        self.place(g, part, heads, out, windows, add=True)

    def assemble(self, ys: Sequence[Tensor], like: Tensor) -> Tensor:
        """The one part's output (B·H, rate, m, E) as (B, H, T, E): a view when the kernel's
        output memory is (B·H, m, rate, E), as the CPU kernel's is."""
        (y,) = ys
        y = y.transpose(1, 2).reshape(self.batch, self.heads, self.padded, y.shape[-1])
        return y[:, :, : self.length]  # (B, H, T, E)


_Layout = _LocalLayout | _AtrousLayout


def _merge(
    outs: Sequence[Tensor], lses: Sequence[Tensor], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """One softmax over disjoint key sets from each set's output and log-sum-exp.

        lse = log Σ_i exp(lse_i),   out = Σ_i exp(lse_i - lse) out_i

    A query blind in every set (lse = -inf everywhere) gets out = 0 and lse = 0.
    """
    lse = functools.reduce(torch.logaddexp, lses)  # (B, H, T)
    lse = torch.where(torch.isfinite(lse), lse, 0.0)
    out = None
    for o, part in zip(outs, lses, strict=True):
        w = torch.exp(part - lse).unsqueeze(-1)  # (B, H, T, 1)
        out = o * w if out is None else out.addcmul_(o, w)
    return out.to(dtype), lse


# The backward goes one head at a time, in blocks of windows (dim 1) whose keys hold about
# this many elements: the kernel's gradient buffers stay small and are reused, where one big
# buffer is a fresh, page-faulting allocation on every call.
_BACKWARD_SLICE = 1 << 20


def _slices(size: int, step: int) -> list[slice]:
    return [slice(a, min(a + step, size)) for a in range(0, size, step)]


def _mask_slice(mask: Tensor | None, i: slice, j: slice) -> Tensor | None:
    """Rows ``i`` (dim 0) and windows ``j`` (dim 1) of a mask that may broadcast there."""
    if mask is None:
        return None
    return mask[i if mask.shape[0] > 1 else _ALL, j if mask.shape[1] > 1 else _ALL]


class _FlashAttention(torch.autograd.Function):
    """Attention over the union of disjoint key sets, each in its own layout, on the CPU kernel.

    Forward runs the flash kernel once per part of every layout and writes the outputs in
    sequence order; with several layouts the results are merged by log-sum-exp. Backward runs
    the flash backward per part with the *merged* output and log-sum-exp: the kernel recomputes
    P = exp(S - lse) and D = rowsum(dO ∘ out) from them, which are then exactly the rows of the
    joint softmax, so each call returns that part's share of the true gradient. It goes one
    head at a time in blocks of windows and adds the gradients straight into (B, H, T, Dh)
    buffers.
    """

    @staticmethod
    def forward(ctx, layouts: Sequence[_Layout], scale: float, q: Tensor, k: Tensor,
                v: Tensor) -> Tensor:
        merged = len(layouts) > 1
        outs, lses, part_lses = [], [], []
        for lay in layouts:
            part_outs, part_lse = [], []
            for part in lay.parts:
                part.additive = _additive(part.mask, q.dtype)
                o, l = _fused.flash_forward(  # noqa: E741
                    lay.queries(q, part), lay.keys(k, part), lay.keys(v, part),
                    mask=part.additive, causal=lay.causal, scale=scale,
                )  # (N, W, L, Dh), (N, W, L)
                if merged and part.blind is not None:  # the kernel reports 0, not -inf
                    l = l.masked_fill(part.blind, float("-inf"))  # noqa: E741
                part_outs.append(o)
                part_lse.append(l.unsqueeze(-1))
            outs.append(lay.assemble(part_outs, q))  # (B, H, T, Dh)
            if merged:
                lses.append(lay.assemble(part_lse, q).squeeze(-1))  # (B, H, T)
            else:  # the kernel's own lse serves the backward
                part_lses = [x.squeeze(-1) for x in part_lse]
        if merged:
            out, lse = _merge([o.to(lses[0].dtype) for o in outs], lses, q.dtype)
        else:
            out, lse = outs[0], None
        ctx.layouts, ctx.scale, ctx.part_lses = layouts, scale, part_lses
        # q, k, v ride along for autograd's in-place checks (the parts read views of them)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        part_lses = iter(ctx.part_lses)  # one layout: each part's lse from the kernel
        grads = [grad.new_zeros(grad.shape) for _ in range(3)]  # dq, dk, dv: (B, H, T, Dh)
        for lay in ctx.layouts:
            for part in lay.parts:
                qs = lay.queries(q, part)  # (N, W, L, Dh)
                ks, vs = lay.keys(k, part), lay.keys(v, part)  # (N, W, S, Dh) x 2
                gs, os = lay.queries(grad, part), lay.queries(out, part)  # (N, W, L, Dh) x 2
                if lse is None:
                    ls = next(part_lses)  # (N, W, L)
                else:  # the merged lse, in this layout
                    ls = lay.queries(lse.unsqueeze(-1), part).squeeze(-1)  # (N, W, L)
                step = max(1, _BACKWARD_SLICE // ks[0, 0].numel())
                for i in _slices(lay.size, 1):  # heads (or batch x heads) one at a time
                    for j in _slices(qs.shape[1], step):
                        dq, dk, dv = _fused.flash_backward(
                            gs[i, j], qs[i, j], ks[i, j], vs[i, j], os[i, j], ls[i, j],
                            mask=_mask_slice(part.additive, i, j), causal=lay.causal,
                            scale=ctx.scale,
                        )  # (1, W', L, Dh), (1, W', S, Dh) x 2
                        lay.place(dq, part, i, grads[0], j, add=True)
                        lay.fold_keys(dk, part, i, grads[1], j)
                        lay.fold_keys(dv, part, i, grads[2], j)
        return (None, None, *grads)


def _flash_eagerly(
    layouts: Sequence[_Layout], scale: float, q: Tensor, k: Tensor, v: Tensor
) -> Tensor:
    """:class:`_FlashAttention` run eagerly under ``torch.compile`` (a graph break): dynamo cannot
    trace its backward, which reads the kernel's log-sum-exp through views of saved tensors."""
    return _FlashAttention.apply(layouts, scale, q, k, v)


def _attend_with_lse(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Plain-tensor-op attention of one part, with its log-sum-exp (-inf for a blind row)."""
    s = (q @ k.transpose(-1, -2)) * scale  # (N, W, L, S)
    visible = mask
    if causal:
        length = q.shape[-2]
        tril = torch.ones(length, length, dtype=torch.bool, device=s.device).tril()
        visible = tril if visible is None else visible & tril
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (N, W, L, 1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0))
    return p @ v, lse  # (N, W, L, Dh), (N, W, L, 1)


def _attend(layouts: Sequence[_Layout], scale: float, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention over the union of the layouts' (disjoint) key sets, as (B, H, T, Dh).

    Fused kernels available (:func:`kexue.attention._fused.fused_available`): through
    :class:`_FlashAttention`. Otherwise: one layout's parts go to
    ``F.scaled_dot_product_attention``, several layouts to plain tensor ops merged by
    log-sum-exp; autograd differentiates both.
    """
    if _fused.fused_available(q.device):
        if torch.compiler.is_compiling():
            # wrapped here, not at import: torch.compiler.disable imports dynamo (over a
            # second), which only a compiled call needs
            return torch.compiler.disable(_flash_eagerly)(layouts, scale, q, k, v)
        return _FlashAttention.apply(layouts, scale, q, k, v)
    merged = len(layouts) > 1
    outs, lses = [], []
    for lay in layouts:
        out = q.new_zeros(q.shape)  # (B, H, T, Dh)
        lse = q.new_zeros(q.shape[:3] + (1,))  # (B, H, T, 1)
        for part in lay.parts:
            qs = lay.queries(q, part)  # (N, W, L, Dh)
            ks, vs = lay.keys(k, part), lay.keys(v, part)  # (N, W, S, Dh) x 2
            if merged:
                o, l = _attend_with_lse(qs, ks, vs, part.mask, lay.causal, scale)  # noqa: E741
                lay.place(l, part, _ALL, lse)
            else:
                o = F.scaled_dot_product_attention(
                    qs, ks, vs, attn_mask=part.mask, is_causal=lay.causal, scale=scale
                )
            lay.place(o, part, _ALL, out)
        outs.append(out)
        lses.append(lse.squeeze(-1))
    if not merged:
        return outs[0]
    return _merge(outs, lses, q.dtype)[0]


def _attend_observed(
    layouts: Sequence[_Layout],
    scale: float,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: masks.MaskFn,
    key_padding_mask: Tensor | None,
    kind: str,
) -> Tensor:
    """:func:`_attend`, then the pattern's (B, H, T, T) matrix reported to the observers."""
    with reporting_attention():
        out = _attend(layouts, scale, q, k, v)
    report_attention(masked_softmax_rows(q, k, scale, mask, key_padding_mask, kind=kind))
    return out


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

    The sequence is cut into chunks of c = ceil(r / 2) queries; a chunk's queries see a window
    of c + 2r keys (c + r when causal), an overlapping ``unfold`` view of the keys, so every
    query's band lies inside its window. The interior chunks of a sample go through ONE fused
    SDPA call on (H, W, c, Dh) x (H, W, c + 2r, Dh) with one 4-D band mask (1, 1, c, c + 2r)
    shared by all windows (a 3-D mask would make SDPA leave its fused CPU kernel for the
    unfused one); the few chunks at the sequence ends, and key padding, get their own masks.
    On the CPU the calls go to the fused kernel itself and the backward runs head by head,
    folding the window gradients straight into (B, H, T, Dh).
    Cost: O(T · (2r + c) · Dh) time (O(T · (r + c) · Dh) causal), vs O(T² · Dh) dense;
    4/5 of the computed scores are used (2/3 causal).

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
    radius = min(check_int("window", window, low=1) // 2, q.shape[2] - 1)
    layouts = [_LocalLayout(q, radius, causal, key_padding_mask)]
    if attention_observed():
        pattern = masks.local(window)
        pattern = masks.and_(masks.causal(), pattern) if causal else pattern
        return _attend_observed(layouts, scale, q, k, v, pattern, key_padding_mask, "local")
    return _attend(layouts, scale, q, k, v)


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
    rate = min(check_int("rate", rate, low=1), q.shape[2])
    layouts = [_AtrousLayout(q, rate, causal, key_padding_mask)]
    if attention_observed():
        pattern = masks.dilated(rate)
        pattern = masks.and_(masks.causal(), pattern) if causal else pattern
        return _attend_observed(layouts, scale, q, k, v, pattern, key_padding_mask, "atrous")
    return _attend(layouts, scale, q, k, v)


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
    with ``rate = stride``). On the CPU each part goes to the fused flash kernel, which also
    returns its log-sum-exp; the outputs are merged by log-sum-exp, and the backward hands
    each part's kernel the merged output and log-sum-exp, so no score matrix is ever stored.
    On the portable path the parts run as plain tensor ops (same maths, O(T · (2r + c +
    T / stride)) memory). Cost: O(T · (2r + c + T / stride) · Dh) time, c = ceil(r / 2),
    vs O(T² · Dh) dense.

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
    radius = min(check_int("window", window, low=1) // 2, t - 1)
    stride = min(check_int("stride", stride, low=1), t)
    local = _LocalLayout(q, radius, causal, key_padding_mask, skip_stride=stride)
    strided = _AtrousLayout(q, stride, causal, key_padding_mask)
    if attention_observed():
        pattern = masks.or_(masks.local(window), masks.strided(stride))
        pattern = masks.and_(masks.causal(), pattern) if causal else pattern
        return _attend_observed(
            [local, strided], scale, q, k, v, pattern, key_padding_mask, "sparse"
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
        check_int("window", window, low=1)
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
        check_int("rate", rate, low=1)
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
        check_int("window", window, low=1)
        check_int("stride", stride, low=1)
        attend = functools.partial(sparse_attention, window=window, stride=stride, causal=causal)
        super().__init__(dim, heads, attend, bias=bias)
        self.window, self.stride, self.causal = window, stride, causal

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, window={self.window}, stride={self.stride}, "
            f"causal={self.causal}"
        )
