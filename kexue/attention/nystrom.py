"""Nyström attention: softmax attention through m landmarks in O(n·m) time and memory.

With landmarks Q̃, K̃ (m × Dh, segment means of the queries and keys), the n × n attention matrix
is replaced by three small softmax kernels

    softmax(QKᵀ)V ≈ softmax(QK̃ᵀ) · softmax(Q̃K̃ᵀ)⁺ · softmax(Q̃Kᵀ)V,

where ⁺ is the Moore–Penrose pseudo-inverse. Here softmax(QK̃ᵀ) and softmax(Q̃Kᵀ)
are two attentions through the landmarks, and the middle factor undoes the landmarks' own
attention so that the product is exact when the landmarks are the tokens themselves (m = n).

Shapes: B batch, H heads, T = n tokens, Dh head size, m landmarks.

While an attention observer is installed (``kexue.train.capture(..., attention=True)``), a call
reports the T × T matrix it implicitly applies to V (not the landmark kernels it computes),
see :func:`kexue.attention.base.report_attention`.

References:
    https://kexue.fm/archives/8180 (Nyströmformer:基于矩阵分解的线性化Attention方案)
    Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention",
    AAAI 2021.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from kexue._checks import check_float_tensor, check_int
from kexue.attention.base import (
    AttentionRows,
    MultiHeadAttention,
    attention_observed,
    check_padding_mask,
    check_qkv,
    check_scale,
    masked_softmax_rows,
    report_attention,
    reporting_attention,
)

__all__ = ["NystromAttention", "iterative_pinv", "nystrom_attention"]


def iterative_pinv(a: Tensor, iters: int = 6) -> Tensor:
    """Moore–Penrose pseudo-inverse A⁺ of each matrix in a batch, by matrix products only.

    The order-7 hyper-power iteration used by Nyströmformer (Razavi et al., 2014):

        Z_0     = Aᵀ / (‖A‖₁ ‖A‖∞)
        Z_{j+1} = ¼ Z_j (13I − AZ_j (15I − AZ_j (7I − AZ_j)))

    with ‖A‖₁ the largest column sum and ‖A‖∞ the largest row sum of |A|. Since
    σ_max(A)² ≤ ‖A‖₁‖A‖∞, the eigenvalues of AZ_0 lie in [0, 1] and Z_j → A⁺; the error falls
    fast once ‖I − AZ_j‖ is small, slowly for ill-conditioned A. The start Z_0 is scaled per
    matrix (per leading index), never over the whole batch, so each matrix's result is
    independent of the others in the batch.

    Args:
        a: (..., p, q) floating-point matrices A.
        iters: number of iterations j, >= 0 (0 returns Z_0).

    Returns:
        (..., q, p) approximations Z_iters of A⁺, in ``a``'s dtype.

    Raises:
        ValueError: for a non-tensor, an integer tensor, fewer than 2 dims, or a bad ``iters``.

    References:
        https://kexue.fm/archives/8180 (Nyströmformer:基于矩阵分解的线性化Attention方案)
        Razavi et al., "A new iterative method for finding approximate inverses of complex
        matrices", Abstract and Applied Analysis, 2014.
    """
    check_float_tensor("a", a)
    if a.ndim < 2:
        raise ValueError(f"a must be a (..., p, q) tensor of >= 2 dims, got shape {tuple(a.shape)}")
    check_int("iters", iters, low=0)
    absolute = a.abs()
    norm_1 = absolute.sum(-2).amax(-1)  # (...,) largest column sum
    norm_inf = absolute.sum(-1).amax(-1)  # (...,) largest row sum
    # A zero matrix has A⁺ = 0: the clamp keeps Z_0 = 0 instead of 0/0.
    denom = (norm_1 * norm_inf).clamp_min(torch.finfo(a.dtype).tiny)
    z = a.mT / denom[..., None, None]  # (..., q, p)
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)  # (p, p)
    for _ in range(iters):
        az = a @ z  # (..., p, p)
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _segments(mask: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Landmark segment of every token and the token count of every segment.

    The kept tokens, in order, are cut into m contiguous runs whose sizes differ by at most one:
    with n kept tokens, s = n // m and r = n % m, the first r runs hold s + 1 tokens and the
    rest s. Padded tokens go to segment m (discarded). For n < m, run j < n is token j and runs
    j >= n are empty.

    Returns:
        seg: (B, T) long in [0, m].
        counts: (B, m) tokens per segment.
    """
    rank = mask.cumsum(1) - 1  # (B, T) position among the kept tokens
    n = mask.sum(1, keepdim=True)  # (B, 1)
    s, r = n // m, n % m
    big = r * (s + 1)  # (B, 1) tokens in the long runs
    seg = torch.where(rank < big, rank // (s + 1), r + (rank - big) // s.clamp_min(1))
    seg = seg.masked_fill(~mask, m)  # (B, T)
    counts = s + (torch.arange(m, device=mask.device) < r)  # (B, m)
    return seg, counts


def _run_means(x: Tensor, m: int) -> Tensor:
    """Means of (B, H, T, D) over T cut into m runs, the first T % m of them one token longer."""
    b, h, t, d = x.shape
    s, r = divmod(t, m)
    long = x[:, :, : r * (s + 1)].reshape(b, h, r, s + 1, d).mean(3)  # (B, H, r, D)
    short = x[:, :, r * (s + 1) :].reshape(b, h, m - r, s, d).mean(3)  # (B, H, m - r, D)
    return torch.cat([long, short], dim=2)  # (B, H, m, D)


class _RunMeans(torch.autograd.Function):
    """x -> (x, :func:`_run_means` of x), whose backward adds the means' gradient in place.

    The input comes back as an alias for the caller to use in place of x. Both gradients then
    reach one backward, which adds the means' share (each run's gradient spread over its tokens)
    into the alias's gradient, a fresh tensor from SDPA's backward: one pass and no (B, H, T, D)
    allocation, where autograd's own backward of slice + reshape + mean would zero-fill, divide,
    copy and add full-size tensors several times. Writing into that gradient is safe only
    because the alias feeds nothing but SDPA, whose input gradients are fresh tensors that no
    other node holds; gradients of other layouts (e.g. expanded) are copied first.
    """

    @staticmethod
    def forward(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
        return x.view_as(x), _run_means(x, m)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, m = inputs
        ctx.shape, ctx.m = x.shape, m
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor | None, grad_means: Tensor | None) -> tuple[Tensor, None]:
        b, h, t, d = ctx.shape
        s, r = divmod(t, ctx.m)
        if grad_means is None:
            return grad_x, None
        if grad_x is None:
            grad_x = grad_means.new_zeros(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
        elif not (grad_x.is_contiguous() or grad_x.transpose(1, 2).is_contiguous()):
            grad_x = grad_x.contiguous()  # a layout we may not write into, e.g. expanded
        long, short = grad_x[:, :, : r * (s + 1)], grad_x[:, :, r * (s + 1) :]
        long.view(b, h, r, s + 1, d).add_(grad_means[:, :, :r, None] / (s + 1))
        short.view(b, h, ctx.m - r, s, d).add_(grad_means[:, :, r:, None] / s)
        return grad_x, None


def _masked_means(x: Tensor, seg: Tensor, counts: Tensor) -> Tensor:
    """Means of (B, H, T, D) over the per-sample segments ``seg`` (B, T); empty segments are 0."""
    b, h, _, d = x.shape
    m = counts.shape[1]
    # index_add_ takes one index per call, so one call per sample; segment m collects padding.
    sums = torch.stack(
        [x.new_zeros(h, m + 1, d).index_add(1, seg[i], x[i]) for i in range(b)]
    )  # (B, H, m + 1, D)
    return sums[:, :, :m] / counts.clamp_min(1)[:, None, :, None].to(x.dtype)  # (B, H, m, D)


def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    landmarks: int,
    *,
    key_padding_mask: Tensor | None = None,
    pinv_iters: int = 6,
    causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Nyström approximation of softmax attention with m landmarks, O(T·m) time and memory.

        Q̃, K̃ = segment means of Q, K over m contiguous runs of the kept tokens    # (m, Dh)
        out   = softmax(s·QK̃ᵀ) · pinv(softmax(s·Q̃K̃ᵀ)) · softmax(s·Q̃Kᵀ)V
              = SDPA(Q, K̃, pinv(softmax(s·Q̃K̃ᵀ)) · SDPA(Q̃, K, V))

    with s = ``scale``, m = ``landmarks`` and pinv = :func:`iterative_pinv` with ``pinv_iters``
    steps. Both T × m kernels go through ``F.scaled_dot_product_attention`` (fused: neither is
    stored); only the m × m kernel and its pseudo-inverse are formed explicitly (in at least
    float32). The depthwise-convolution residual on V of the paper is a separate token mixer and
    is not part of this function.

    Landmarks: the kept tokens are cut into m contiguous runs whose sizes differ by at most one
    (T = 100, m = 64: 36 runs of 2, then 28 of 1), so all m landmarks are used whatever T is.
    Padded keys are never attended to and never enter a landmark; a sample with n kept tokens
    gives, at its kept positions, the same output as the same n tokens without padding.

    Exactness: for m >= T the function is exact softmax attention (one SDPA call). A sample with
    n <= m kept tokens (fewer than T) has its kept tokens as landmarks, and is also exact:
    pinv(softmax(Q̃K̃ᵀ)) · softmax(Q̃Kᵀ)V = Ṽ there, so Ṽ is used instead of the pseudo-inverse.
    A sample with no kept token gives zeros, as SDPA does for fully masked rows.

    Args:
        q: (B, H, T, Dh) queries.
        k: (B, H, T, Dh) keys.
        v: (B, H, T, Dv) values.
        landmarks: number of landmarks m, an int >= 1.
        key_padding_mask: optional (B, T) bool, True = a real token (keep), False = padding.
        pinv_iters: iterations of :func:`iterative_pinv`, an int >= 0.
        causal: must be False: landmarks are means over whole segments, so every query would
            see future tokens through them; there is no causal Nyström attention here.
        scale: logit scale s, > 0; default 1 / sqrt(Dh).

    Returns:
        (B, H, T, Dv) attention output in the dtype of ``q``.

    Raises:
        ValueError: for bad shapes, dtypes or devices of q, k, v, a bad ``key_padding_mask``,
            ``landmarks`` or ``pinv_iters`` that are not ints in range, a non-positive
            ``scale``, or ``causal=True``.

    References:
        https://kexue.fm/archives/8180 (Nyströmformer:基于矩阵分解的线性化Attention方案)
        Xiong et al., "Nyströmformer: A Nyström-Based Algorithm for Approximating
        Self-Attention", AAAI 2021.
    """
    check_qkv(q, k, v)
    b, _, t, dh = q.shape
    mask = check_padding_mask(key_padding_mask, b, t)
    m = check_int("landmarks", landmarks, low=1)
    iters = check_int("pinv_iters", pinv_iters, low=0)
    if causal is not False:
        raise ValueError(
            f"causal={causal!r} is not supported: landmarks average whole segments, so every "
            "query would attend to future tokens through them; use causal=False"
        )
    scale = check_scale(scale, dh)
    if not attention_observed():
        return _nystrom(q, k, v, m, mask, iters, scale)[0]
    with reporting_attention():
        out, pieces = _nystrom(q, k, v, m, mask, iters, scale)
    report_attention(_implied_rows(q, k, scale, mask, pieces))
    return out


class _Pieces(NamedTuple):
    """What the implied matrix of one call needs from it (see :func:`_implied_rows`)."""

    q_l: Tensor  # (B, H, m, Dh) landmarks Q̃
    k_l: Tensor  # (B, H, m, Dh) landmarks K̃
    pinv: Tensor | None  # (B, H, m, m) pinv(softmax(s·Q̃K̃ᵀ)); None when every sample is exact
    valid: Tensor | None  # (B, m) nonempty landmarks; None without padding
    exact: Tensor | None  # (B,) samples whose landmarks are their tokens
    seg: Tensor | None  # (B, T) landmark of every token
    counts: Tensor | None  # (B, m) tokens per landmark


def _nystrom(
    q: Tensor, k: Tensor, v: Tensor, m: int, mask: Tensor | None, iters: int, scale: float
) -> tuple[Tensor, _Pieces | None]:
    """:func:`nystrom_attention` on checked arguments; also its pieces (None for m >= T)."""
    t = q.shape[2]
    key_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T)
    if m >= t:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale), None

    if mask is None:
        (q, q_l), (k, k_l) = _RunMeans.apply(q, m), _RunMeans.apply(k, m)  # q_l, k_l (B, H, m, Dh)
        valid = exact = seg = counts = None
    else:
        seg, counts = _segments(mask, m)  # (B, T), (B, m)
        q_l, k_l = _masked_means(q, seg, counts), _masked_means(k, seg, counts)
        valid = counts > 0  # (B, m)
        exact = (counts <= 1).all(1)  # (B,) at most m kept tokens: landmarks = tokens

    z = None
    if exact is not None and bool(exact.all()):
        u = _masked_means(v, seg, counts)  # (B, H, m, Dv), the kept values themselves
    else:
        # The m × m kernel and its pseudo-inverse in at least float32.
        work = torch.promote_types(q.dtype, torch.float32)
        logits = scale * q_l.to(work) @ k_l.to(work).mT  # (B, H, m, m)
        if valid is not None:
            # Empty landmarks get identity rows and columns: pinv(A ⊕ I) = pinv(A) ⊕ I, and
            # the start of the iteration is unchanged (‖·‖∞ = 1 and ‖·‖₁ >= 1 either way).
            keep = valid[:, None, None, :] | ~valid[:, None, :, None]  # (B, 1, m, m)
            logits = logits.masked_fill(~keep, -math.inf)
        kernel = logits.softmax(-1)  # (B, H, m, m)
        if valid is not None:
            eye = torch.eye(m, dtype=work, device=q.device)
            kernel = torch.where(valid[:, None, :, None], kernel, eye)
        w = F.scaled_dot_product_attention(q_l, k, v, attn_mask=key_mask, scale=scale)
        z = iterative_pinv(kernel, iters)  # (B, H, m, m)
        u = (z @ w.to(work)).to(v.dtype)  # (B, H, m, Dv)
        if exact is not None and bool(exact.any()):
            v_l = _masked_means(v, seg, counts)  # (B, H, m, Dv)
            u = torch.where(exact[:, None, None, None], v_l, u)

    landmark_mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, m)
    out = F.scaled_dot_product_attention(q, k_l, u, attn_mask=landmark_mask, scale=scale)
    return out, _Pieces(q_l, k_l, z, valid, exact, seg, counts)


def _implied_rows(
    q: Tensor, k: Tensor, scale: float, mask: Tensor | None, pieces: _Pieces | None
) -> AttentionRows:
    """The T × T matrix A that one :func:`nystrom_attention` call applies to V, out = A V.

        A = softmax(s·QK̃ᵀ) · R,   R = pinv(softmax(s·Q̃K̃ᵀ)) · softmax(s·Q̃Kᵀ)     (m × T)

    with the pinv the call used, so A V is its output up to rounding. A sample whose landmarks
    are its kept tokens (n <= m) uses Ṽ = C V instead, C (m × T) averaging each segment's
    tokens, so R = C there; for m >= T, A is plain softmax attention. Padded keys get 0 columns,
    empty landmarks 0 weight. Not a softmax: rows sum to about 1 (exactly 1 for an exact pinv)
    and entries can be negative. Computed in float32 or wider; R once (O(m·T)), A a block of
    query rows at a time.
    """
    if pieces is None:  # m >= T: exact softmax attention
        return masked_softmax_rows(q, k, scale, None, mask, kind="nystrom")
    b, h, t, _ = q.shape
    q_l, k_l, z, valid, exact, seg, counts = pieces
    m = k_l.shape[2]
    work = torch.promote_types(q.dtype, torch.float32)
    right: list[Tensor] = []  # R, made on first use

    def make_right() -> Tensor:
        r = None
        if z is not None:
            logits = scale * q_l.to(work) @ k.to(work).mT  # (B, H, m, T)
            if mask is not None:
                logits = logits.masked_fill(~mask[:, None, None, :], -math.inf)
            probs = logits.softmax(-1)
            if mask is not None:  # a sample with no kept token: zeros, not NaN
                probs = probs.masked_fill(~mask.any(-1)[:, None, None, None], 0.0)
            r = z @ probs  # (B, H, m, T)
        if exact is not None and bool(exact.any()):
            c = F.one_hot(seg, m + 1)[..., :m].mT.to(work)  # (B, m, T) token j in segment l
            c = (c / counts.clamp_min(1)[:, :, None].to(work))[:, None]  # (B, 1, m, T)
            r = c.expand(b, h, m, t) if r is None else torch.where(
                exact[:, None, None, None], c, r
            )
        return r

    def rows(start: int, stop: int) -> Tensor:
        if not right:
            right.append(make_right())
        logits = scale * q[:, :, start:stop].to(work) @ k_l.to(work).mT  # (B, H, L, m)
        if valid is None:
            return logits.softmax(-1) @ right[0]  # (B, H, L, T)
        keep = valid[:, None, None, :]  # (B, 1, 1, m)
        left = logits.masked_fill(~keep, -math.inf).softmax(-1)
        left = left.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # a sample with no token
        return left @ right[0]  # (B, H, L, T)

    return AttentionRows((b, h, t, t), rows, "nystrom", distribution=z is None)


class NystromAttention(MultiHeadAttention):
    """(B, T, D) -> (B, T, D) multi-head Nyström attention: :func:`nystrom_attention` per head.

        q, k, v = x W_q, x W_k, x W_v split into H heads            # (B, H, T, D / H)
        y = nystrom_attention(q, k, v, landmarks) merged, then W_o

    No depthwise-convolution residual on V (the paper's optional extra): compose it outside if
    wanted, so that this module stays an approximation of plain softmax attention.

    Args:
        dim: model width D.
        heads: number of heads H; must divide D.
        landmarks: number of landmarks m, an int >= 1; m >= T gives exact attention.
        pinv_iters: iterations of :func:`iterative_pinv`, an int >= 0.
        bias: whether the projections have biases.

    Raises:
        ValueError: for bad ``dim``, ``heads``, ``landmarks`` or ``pinv_iters``.

    References:
        https://kexue.fm/archives/8180 (Nyströmformer:基于矩阵分解的线性化Attention方案)
        Xiong et al., AAAI 2021.
    """

    def __init__(
        self, dim: int, heads: int, landmarks: int = 64, pinv_iters: int = 6, *, bias: bool = True
    ) -> None:
        check_int("landmarks", landmarks, low=1)
        check_int("pinv_iters", pinv_iters, low=0)
        attend = functools.partial(nystrom_attention, landmarks=landmarks, pinv_iters=pinv_iters)
        super().__init__(dim, heads, attend, bias=bias)
        self.landmarks, self.pinv_iters = landmarks, pinv_iters

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, landmarks={self.landmarks}, "
            f"pinv_iters={self.pinv_iters}"
        )
