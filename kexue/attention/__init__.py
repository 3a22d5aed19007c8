"""Token mixers behind one contract: (B, T, D) -> (B, T, D), optional (B, T) key-padding mask.

Work in progress (issue 3): the shared contract lives in :mod:`kexue.attention.base`.
"""

from kexue.attention.base import (
    AttendFn,
    MultiHeadAttention,
    check_heads,
    check_padding_mask,
    check_qkv,
)

__all__ = ["AttendFn", "MultiHeadAttention", "check_heads", "check_padding_mask", "check_qkv"]
