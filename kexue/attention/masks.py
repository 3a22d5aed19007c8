"""Attention patterns as mask functions ``(b, h, q, k) -> bool``, True = the query may see the key.

A mask function takes four broadcasting integer index tensors (batch, head, query position,
key position), as ``mask_mod`` does in torch's FlexAttention, and returns a boolean tensor of
their broadcast shape. Patterns compose with :func:`and_` / :func:`or_`;
:func:`dense_mask` materialises one as a (B|1, H|1, T, T) tensor.

    pattern          key k visible from query q iff          note (kexue.fm/archives/6853)
    causal()         k <= q                                   autoregressive
    local(w)         |q - k| <= w // 2                        Local Self Attention
    dilated(r)       q ≡ k (mod r)                            Atrous Self Attention
    strided(l)       (q - k) mod l == 0                       Sparse Transformer, 2nd head
    fixed(l, c)      q // l == k // l  or  k mod l >= l - c   Sparse Transformer "fixed"

The window convention, used by every function in :mod:`kexue.attention`: ``window`` is the
width of a symmetric band of radius ``window // 2``. Away from the ends of the sequence a query
sees ``2 * (window // 2) + 1`` keys (exactly ``window`` when it is odd, ``window + 1`` when it
is even); combined with :func:`causal` it sees itself and the ``window // 2`` keys before it.

References:
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)

    Child, Gray, Radford, Sutskever. Generating Long Sequences with Sparse Transformers.
    arXiv:1904.10509, 2019.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
from torch import Tensor

from kexue._checks import check_int

__all__ = [
    "MaskFn",
    "and_",
    "causal",
    "dense_mask",
    "dilated",
    "fixed",
    "local",
    "or_",
    "strided",
]

MaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def causal() -> MaskFn:
    """Autoregressive pattern: query q sees key k iff k <= q."""

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return k <= q

    return mask


def local(window: int) -> MaskFn:
    """Local Self Attention: a band of radius ``window // 2``.

        M[q, k] = |q - k| <= window // 2

    Args:
        window: band width; a query sees ``2 * (window // 2) + 1`` keys away from the ends.

    Raises:
        ValueError: unless ``window`` is an int >= 1.

    References:
        https://kexue.fm/archives/6853
    """
    radius = check_int("window", window, low=1) // 2

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q - k).abs() <= radius

    return mask


def dilated(rate: int) -> MaskFn:
    """Atrous (dilated) Self Attention: query q sees the keys of its residue class mod ``rate``.

        M[q, k] = (q ≡ k mod rate)

    Raises:
        ValueError: unless ``rate`` is an int >= 1.

    References:
        https://kexue.fm/archives/6853
    """
    rate = check_int("rate", rate, low=1)

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q - k) % rate == 0

    return mask


def strided(stride: int) -> MaskFn:
    """The Sparse Transformer's strided head: keys a multiple of ``stride`` away.

        M[q, k] = ((q - k) mod stride == 0)

    The same set as :func:`dilated` with ``rate = stride``; the paper's full "strided" pattern
    is ``and_(causal(), or_(local(2 * stride), strided(stride)))``.

    Raises:
        ValueError: unless ``stride`` is an int >= 1.

    References:
        https://kexue.fm/archives/6853

        Child et al. 2019, Generating Long Sequences with Sparse Transformers, section 4.3.
    """
    stride = check_int("stride", stride, low=1)

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q - k) % stride == 0

    return mask


def fixed(stride: int, c: int) -> MaskFn:
    """The Sparse Transformer's "fixed" pattern, both heads merged into one set.

        M[q, k] = (q // stride == k // stride) or (k mod stride >= stride - c)

    The first term is the block of ``stride`` positions holding q, the second the last ``c``
    positions of every block ("summary" cells). Combine with :func:`causal` for an
    autoregressive model.

    Args:
        stride: block length l.
        c: summary cells per block, 1 <= c <= stride.

    Raises:
        ValueError: unless ``stride`` is an int >= 1 and ``c`` an int in [1, stride].

    References:
        Child et al. 2019, Generating Long Sequences with Sparse Transformers, section 4.3.
    """
    stride = check_int("stride", stride, low=1)
    c = check_int("c", c, low=1)
    if c > stride:
        raise ValueError(f"c must be an int in [1, stride={stride}], got {c}")

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return (q // stride == k // stride) | (k % stride >= stride - c)

    return mask


def _check_masks(name: str, masks: tuple[MaskFn, ...]) -> None:
    if not masks:
        raise ValueError(f"{name} needs at least one mask function, got none")
    for i, m in enumerate(masks):
        if not callable(m):
            raise ValueError(f"{name}: mask {i} must be callable (b, h, q, k) -> bool, got {m!r}")


def and_(*masks: MaskFn) -> MaskFn:
    """Intersection: a key is visible iff every mask shows it.

    Raises:
        ValueError: if no mask is given or one is not callable.
    """
    return _combine("and_", operator.and_, masks)


def or_(*masks: MaskFn) -> MaskFn:
    """Union: a key is visible iff some mask shows it.

    Raises:
        ValueError: if no mask is given or one is not callable.
    """
    return _combine("or_", operator.or_, masks)


def _combine(
    name: str, op: Callable[[Tensor, Tensor], Tensor], masks: tuple[MaskFn, ...]
) -> MaskFn:
    _check_masks(name, masks)

    def mask(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return functools.reduce(op, (m(b, h, q, k) for m in masks))

    return mask


def dense_mask(
    mask_fn: MaskFn, B: int, H: int, T: int, device: torch.device | str | None = None
) -> Tensor:
    """Materialise a mask function as a boolean tensor (B|1, H|1, T, T).

    The batch and head dims stay 1 when ``mask_fn`` does not depend on them.

    Args:
        mask_fn: ``(b, h, q, k) -> bool`` over broadcasting index tensors.
        B, H, T: batch size, heads and sequence length.
        device: where to build the mask.

    Raises:
        ValueError: if ``mask_fn`` is not callable, a size is not an int >= 1, or the result is
            not a boolean tensor broadcastable to (B, H, T, T).
    """
    if not callable(mask_fn):
        raise ValueError(f"mask_fn must be callable (b, h, q, k) -> bool, got {mask_fn!r}")
    for name, value in (("B", B), ("H", H), ("T", T)):
        check_int(name, value, low=1)
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    q = torch.arange(T, device=device).view(1, 1, T, 1)
    k = torch.arange(T, device=device).view(1, 1, 1, T)
    out = mask_fn(b, h, q, k)
    if not isinstance(out, Tensor) or out.dtype != torch.bool:
        got = out.dtype if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"mask_fn must return a bool tensor, got {got}")
    try:
        shape = torch.broadcast_shapes(out.shape, (1, 1, T, T), (B, H, 1, 1))
    except RuntimeError:
        shape = None
    if shape != (B, H, T, T) or out.ndim > 4:
        raise ValueError(
            f"mask_fn must return a tensor broadcastable to (B, H, T, T) = {(B, H, T, T)}, "
            f"got {tuple(out.shape)}"
        )
    size = (out.shape[0] if out.ndim == 4 else 1, out.shape[-3] if out.ndim >= 3 else 1, T, T)
    return out.expand(size).contiguous()  # (B|1, H|1, T, T)
