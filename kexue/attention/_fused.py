"""The fused CPU attention kernels behind ``F.scaled_dot_product_attention``, kept private.

:mod:`kexue.attention.sparse` needs two things public SDPA does not give: the log-sum-exp of
each softmax row (to merge two softmaxes over disjoint key sets, and to run the backward piece
by piece) and the backward as a function of its own (to go head by head in blocks of windows).
The CPU flash kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward give
both, but they are private ops whose positional signature may change between torch releases.
This module is the only place that names them: :func:`flash_forward` and
:func:`flash_backward` take keyword arguments, and :func:`fused_available` says whether to use
them at all.

The decision is taken once, lazily, on first use: a tiny forward and backward of the kernels
(float64, 2 heads, 2 windows, a 4-D additive mask with a fully masked row, and the causal
variant) is compared with public ``F.scaled_dot_product_attention`` differentiated by autograd.
Outputs, log-sum-exps and the gradients of q, k and v must agree within 1e-10 (absolute and
relative); a mismatch, a missing op or any exception selects the portable path, where
:mod:`kexue.attention.sparse` uses only public ops (``F.scaled_dot_product_attention`` and
plain tensor ops, differentiated by autograd). Off the CPU the portable path is always used.

Switch: set the environment variable ``KEXUE_PORTABLE_ATTENTION=1`` (read on every call) or
call ``use_portable(True)`` to force the portable path; ``use_portable(False)`` returns to the
self-checked choice. The results agree to rounding either way; the fused path is faster and
needs less memory for training.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["flash_backward", "flash_forward", "fused_available", "use_portable"]

ENV_VAR = "KEXUE_PORTABLE_ATTENTION"
TOLERANCE = 1e-10  # float64 self-check: max |fused - public| <= TOLERANCE * (1 + |public|)

_forced_portable = False
_verdict: bool | None = None  # the self-check's result, once it has run


def use_portable(portable: bool = True) -> None:
    """Force the portable (public-ops-only) path, or go back to the self-checked choice.

    Args:
        portable: True to use only public ops from now on; False to use the fused kernels
            again where the self-check passed.
    """
    global _forced_portable
    _forced_portable = bool(portable)


def fused_available(device: torch.device | str = "cpu") -> bool:
    """Whether the fused kernels serve tensors on ``device`` (self-checked once, lazily).

    False off the CPU, when forced portable (``KEXUE_PORTABLE_ATTENTION=1`` or
    :func:`use_portable`), or when the self-check failed or raised.
    """
    global _verdict
    if torch.device(device).type != "cpu" or _forced_portable:
        return False
    if os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if _verdict is None:
        try:
            # the caller may be under no_grad or inference_mode; the check needs autograd
            with torch.inference_mode(False), torch.enable_grad():
                _verdict = _self_check()
        except Exception:  # any failure of a private op means: do not use it
            _verdict = False
    return _verdict


def _reset() -> None:
    """Forget the self-check's verdict (tests)."""
    global _verdict
    _verdict = None


def flash_forward(
    query: Tensor, key: Tensor, value: Tensor, *, mask: Tensor | None, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """Softmax attention with its log-sum-exp, on the fused CPU kernel.

        out = softmax(scale · q kᵀ + mask) v,   lse = logsumexp(scale · q kᵀ + mask)

    Args:
        query: (N, M, L, E); key: (N, M, S, E); value: (N, M, S, Ev). Any strides with a
            contiguous last dim (views such as ``unfold`` windows are read in place).
        mask: additive float mask (0 visible, -inf hidden) broadcastable to (N, M, L, S), 4-D,
            or None.
        causal: also hide key j > query i (top-left aligned).
        scale: logit scale.

    Returns:
        out (N, M, L, Ev) and lse (N, M, L) in float32 or wider. A row that sees no key gets
        out = 0 and lse = 0.
    """
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, causal, attn_mask=mask, scale=scale  # dropout_p = 0
    )
    return out, lse


def flash_backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    lse: Tensor,
    *,
    mask: Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`flash_forward` from the output and log-sum-exp it is given.

    The kernel recomputes P = exp(scale · q kᵀ + mask - lse) and D = rowsum(grad_out ∘ out),
    so given the output and log-sum-exp of a *joint* softmax over several key sets it returns
    this key set's share of the joint gradient.

    Args:
        grad_out, out: (N, M, L, Ev); query: (N, M, L, E); key: (N, M, S, E); value:
            (N, M, S, Ev); lse: (N, M, L); mask, causal, scale: as for :func:`flash_forward`.

    Returns:
        grad_query (N, M, L, E), grad_key (N, M, S, E), grad_value (N, M, S, Ev): fresh tensors.
    """
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, query, key, value, out, lse, 0.0, causal,  # dropout_p = 0
        attn_mask=mask, scale=scale,
    )
    return dq, dk, dv


def _self_check() -> bool:
    """Tiny forward + backward of the kernels against public SDPA with autograd (float64)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    keys = torch.randn(2, 2, 7, 4, generator=gen, dtype=torch.float64)  # S != L
    visible = torch.rand(1, 2, 5, 7, generator=gen) > 0.4  # (1, M, L, S), broadcast over N
    visible[0, 0, 1] = False  # a row that sees no key
    visible[..., 0, 0] = True
    grad = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64)
    cases = [(q, keys, keys.flip(2), visible, False), (q, k, v, None, True)]
    for qq, kk, vv, vis, causal in cases:
        mask = None if vis is None else torch.zeros(vis.shape, dtype=qq.dtype).masked_fill(
            ~vis, float("-inf"))
        out, lse = flash_forward(qq, kk, vv, mask=mask, causal=causal, scale=0.7)
        got = flash_backward(grad, qq, kk, vv, out, lse, mask=mask, causal=causal, scale=0.7)
        leaves = [x.detach().requires_grad_() for x in (qq, kk, vv)]
        ref = F.scaled_dot_product_attention(*leaves, attn_mask=vis, is_causal=causal, scale=0.7)
        ref_grads = torch.autograd.grad(ref, leaves, grad)
        scores = 0.7 * qq @ kk.mT  # (N, M, L, S)
        if vis is not None:
            scores = scores.masked_fill(~vis, float("-inf"))
        if causal:
            scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
        ref_lse = scores.logsumexp(-1)
        seen = torch.isfinite(ref_lse)
        ref = torch.where(seen[..., None], ref.detach(), 0.0)  # public SDPA may give NaN there
        pairs = [(out, ref), (lse[seen], ref_lse[seen]), *zip(got, ref_grads, strict=True)]
        for mine, theirs in pairs:
            theirs = torch.nan_to_num(theirs)
            if mine.shape != theirs.shape or not torch.allclose(
                mine, theirs, rtol=TOLERANCE, atol=TOLERANCE
            ):
                return False
    return True
