"""Token mixers behind one contract: (B, T, D) -> (B, T, D), optional (B, T) key-padding mask.

- :mod:`~kexue.attention.base`: the contract and :class:`MultiHeadAttention`, which wraps any
  functional attention on (B, H, T, Dh) into a module.
- :mod:`~kexue.attention.masks`: mask functions ``(b, h, q, k) -> bool`` (causal, local,
  dilated, strided, fixed) combined with ``and_`` / ``or_``.
- :mod:`~kexue.attention.dense`: the dense reference (any mask, float64-capable) and SDPA.
- :mod:`~kexue.attention.sparse`: fast local, atrous and local+strided attention
  (:func:`use_portable_attention` forces public ops only).
- :mod:`~kexue.attention.flex`: any mask function through compiled FlexAttention (CUDA;
  CPU inference).
- :mod:`~kexue.attention.nystrom`: Nyström attention.
- :mod:`~kexue.attention.mixers`: the MLP family; :mod:`~kexue.attention.block`: ``Block``.

``MIXERS`` maps a name to a factory ``(dim, seq_len, heads) -> module`` for every mixer, so
tests, experiments and the CLI can enumerate them. Attention patterns scale with ``seq_len``:
window = seq_len / 4, rate = stride = 4 (at most seq_len), landmarks = seq_len / 4.

References:
    https://kexue.fm/archives/6853, https://kexue.fm/archives/8180,
    https://kexue.fm/archives/8431
"""

from collections.abc import Callable

from torch import nn

from kexue.attention import masks
from kexue.attention._fused import use_portable as use_portable_attention
from kexue.attention.base import (
    AttendFn,
    MultiHeadAttention,
    check_heads,
    check_padding_mask,
    check_qkv,
)
from kexue.attention.block import MLP_MIXERS, Block, build_mixer
from kexue.attention.dense import DenseAttention, dense_attention, sdpa_attention
from kexue.attention.flex import block_mask, flex_sparse_attention
from kexue.attention.mixers import (
    Affine,
    ExternalAttention,
    FNetMixer,
    GatingUnit,
    MLPMixerToken,
    ResMLPToken,
    SynthesizerDense,
    SynthesizerRandom,
)
from kexue.attention.nystrom import NystromAttention, iterative_pinv, nystrom_attention
from kexue.attention.sparse import (
    AtrousAttention,
    LocalAttention,
    SparseAttention,
    atrous_attention,
    local_attention,
    sparse_attention,
)


def _quarter(seq_len: int) -> int:
    return max(1, seq_len // 4)


MIXERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "dense": lambda dim, seq_len, heads: DenseAttention(dim, heads),
    "local": lambda dim, seq_len, heads: LocalAttention(dim, heads, window=_quarter(seq_len)),
    "atrous": lambda dim, seq_len, heads: AtrousAttention(dim, heads, rate=min(4, seq_len)),
    "sparse": lambda dim, seq_len, heads: SparseAttention(
        dim, heads, window=_quarter(seq_len), stride=min(4, seq_len)
    ),
    "nystrom": lambda dim, seq_len, heads: NystromAttention(
        dim, heads, landmarks=_quarter(seq_len)
    ),
    **MLP_MIXERS,
}

__all__ = [
    "MIXERS",
    "Affine",
    "AtrousAttention",
    "AttendFn",
    "Block",
    "DenseAttention",
    "ExternalAttention",
    "FNetMixer",
    "GatingUnit",
    "LocalAttention",
    "MLPMixerToken",
    "MultiHeadAttention",
    "NystromAttention",
    "ResMLPToken",
    "SparseAttention",
    "SynthesizerDense",
    "SynthesizerRandom",
    "atrous_attention",
    "block_mask",
    "build_mixer",
    "check_heads",
    "check_padding_mask",
    "check_qkv",
    "dense_attention",
    "flex_sparse_attention",
    "iterative_pinv",
    "local_attention",
    "masks",
    "nystrom_attention",
    "sdpa_attention",
    "sparse_attention",
    "use_portable_attention",
]
