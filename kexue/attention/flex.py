"""Any mask function through torch's FlexAttention: block-sparse, fused, compiled.

A pattern from :mod:`kexue.attention.masks` (or any ``(b, h, q, k) -> bool`` function) becomes
a FlexAttention ``BlockMask``: the (T / 128)² grid of key/query blocks is scanned once, blocks
with no visible pair are skipped, and the compiled kernel computes only the rest, so the cost
follows the pattern's density without a hand-written path per pattern.

Where it helps (torch 2.13):

- CUDA: forward and backward, compiled; the fast path for training there.
- CPU: inference only. The compiled CPU kernel has no backward, so on the CPU
  :func:`flex_sparse_attention` refuses inputs that require grad while grad mode is on; train
  with :func:`~kexue.attention.local_attention`, :func:`~kexue.attention.atrous_attention` or
  :func:`~kexue.attention.sparse_attention` (forward and backward on the fused SDPA kernel).

The first call at a new shape or with a new mask function compiles (tens of seconds on a CPU;
cached afterwards); after ``RECOMPILE_LIMIT`` compilations a call raises instead of silently
running FlexAttention eagerly (which would materialise the T × T scores). A block mask is built
once per (mask function, B, H, T, device) and reused while the same mask function object is
passed again.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)

    Dong, Feng, Guessous, Liang, He. Flex Attention: A Programming Model for Generating
    Optimized Attention Kernels. arXiv:2412.05496, 2024.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor
from torch.nn.attention import flex_attention as _flex

from kexue._checks import check_int
from kexue.attention.base import (
    attention_observed,
    check_padding_mask,
    check_qkv,
    check_scale,
    masked_softmax_rows,
    report_attention,
)
from kexue.attention.masks import MaskFn

__all__ = ["block_mask", "flex_sparse_attention"]

RECOMPILE_LIMIT = 64  # compilations of the kernel (mask functions × shapes) before an error
COMPILE_BLOCK_MASK_FROM = 2048**2  # B·H·T² mask entries from which block masks are compiled


@functools.lru_cache(maxsize=1)
def _compiled() -> object:
    return torch.compile(_flex.flex_attention, dynamic=False)


def _create(
    mask: MaskFn, batch: int | None, heads: int | None, length: int, device: torch.device
) -> _flex.BlockMask:
    # Eager construction materialises the (B, H, T, T) mask in int64 twice (16·B·H·T² bytes:
    # 268 MB at B = H = 1, T = 4k; 4.3 GB at 16k, measured); compiled, it stays near 43 MB but
    # costs a compilation (seconds) per mask function, so it is used only for large masks.
    entries = (batch or 1) * (heads or 1) * length**2
    return _flex.create_block_mask(mask, batch, heads, length, length, device=device,
                                   _compile=entries >= COMPILE_BLOCK_MASK_FROM)


@functools.lru_cache(maxsize=32)
def _cached_block_mask(
    mask: MaskFn, batch: int | None, heads: int | None, length: int, device: torch.device
) -> _flex.BlockMask:
    return _create(mask, batch, heads, length, device)


def block_mask(
    mask: MaskFn,
    length: int,
    *,
    batch: int | None = None,
    heads: int | None = None,
    device: torch.device | str = "cpu",
) -> _flex.BlockMask:
    """The FlexAttention ``BlockMask`` of ``mask`` at sequence length ``length`` (cached).

    Args:
        mask: a mask function ``(b, h, q, k) -> bool``, True = visible.
        length: sequence length T (queries and keys).
        batch, heads: B and H; None only when the mask does not depend on the batch / head
            index (one layout is then shared by all).
        device: where the kernel will run.

    Returns:
        A ``torch.nn.attention.flex_attention.BlockMask``; the same object again for the same
        arguments (the cache holds the last 32).

    Raises:
        ValueError: if ``mask`` is not callable, or ``length`` (``batch``, ``heads`` when
            given) is not an int >= 1.
    """
    if not callable(mask):
        raise ValueError(f"mask must be a mask function (b, h, q, k) -> bool, got {mask!r}")
    length = check_int("length", length, low=1)
    batch = None if batch is None else check_int("batch", batch, low=1)
    heads = None if heads is None else check_int("heads", heads, low=1)
    return _cached_block_mask(mask, batch, heads, length, torch.device(device))


def flex_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: MaskFn,
    *,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    compiled: bool = True,
) -> Tensor:
    """Attention restricted to a mask function, through FlexAttention's block-sparse kernel.

        out_i = Σ_{j : mask(b, h, i, j)} softmax_j(q_i·k_j · scale) v_j

    A query with no visible key (fully padded, say) gets zeros, as in
    :func:`~kexue.attention.dense_attention`.

    Args:
        q, k, v: (B, H, T, Dh).
        mask: mask function ``(b, h, q, k) -> bool`` from :mod:`kexue.attention.masks`, e.g.
            ``masks.or_(masks.local(256), masks.strided(64))``. Pass the same object on each
            call to reuse its block mask.
        key_padding_mask: (B, T) bool, True = keep. The block mask then depends on it and is
            rebuilt on every call.
        scale: logit scale; default 1 / sqrt(Dh).
        compiled: run the ``torch.compile``-d kernel (the fast one); False runs FlexAttention
            eagerly, which materialises the scores (for checking, not for speed).

    Returns:
        (B, H, T, Dh); equals ``dense_attention(q, k, v, mask, key_padding_mask=...)``.

    Raises:
        ValueError: for bad shapes or dtypes, a mask that is not callable, or CPU inputs that
            require grad while grad mode is on (FlexAttention has no CPU backward in torch
            2.13).
        RuntimeError: when the kernel would be compiled more than ``RECOMPILE_LIMIT`` times.

    References:
        https://kexue.fm/archives/6853
    """
    check_qkv(q, k, v)
    batch, heads, length, head_dim = q.shape
    key_padding_mask = check_padding_mask(key_padding_mask, batch, length)
    scale = check_scale(scale, head_dim)
    if not callable(mask):
        raise ValueError(f"mask must be a mask function (b, h, q, k) -> bool, got {mask!r}")
    if (
        q.device.type == "cpu"
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in (q, k, v))
    ):
        raise ValueError(
            "flex_sparse_attention on the CPU is inference only (FlexAttention has no CPU "
            "backward in torch 2.13): call it under torch.no_grad(), or train with "
            "local_attention, atrous_attention or sparse_attention"
        )
    if key_padding_mask is None:
        # per (b, h): the block layout of a mask that depends on the batch or head index differs
        # between them, and one layout for all would skip or leave unmasked the wrong blocks
        blocks = block_mask(mask, length, batch=batch, heads=heads, device=q.device)
    else:
        keep = key_padding_mask

        def padded(b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            return mask(b, h, qi, ki) & keep[b, ki]

        blocks = _create(padded, batch, heads, length, q.device)
    if attention_observed():  # capture(attention=True): the pattern's softmax, rows on demand
        report_attention(masked_softmax_rows(q, k, scale, mask, key_padding_mask, kind="flex"))
    if compiled:
        # Each new (mask function, shape) compiles anew. Past dynamo's default limit of 8,
        # torch would silently run FlexAttention eagerly, materialising (B, H, T, T) scores
        # (gigabytes at 16k): allow more compilations, and fail loudly instead of falling back.
        with torch._dynamo.config.patch(
            recompile_limit=max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit),
            fail_on_recompile_limit_hit=True,
        ):
            try:
                return _compiled()(q, k, v, block_mask=blocks, scale=scale)  # (B, H, T, Dh)
            except torch._dynamo.exc.FailOnRecompileLimitHit as e:
                raise RuntimeError(
                    f"flex_sparse_attention has compiled its kernel {RECOMPILE_LIMIT} times (one "
                    "per mask function and shape): reuse mask objects and shapes, raise "
                    "kexue.attention.flex.RECOMPILE_LIMIT, or pass compiled=False"
                ) from e
    with warnings.catch_warnings():  # eager was asked for: its "use torch.compile" is noise
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _flex.flex_attention(q, k, v, block_mask=blocks, scale=scale)
