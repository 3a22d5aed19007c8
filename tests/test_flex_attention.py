"""FlexAttention path: every pattern against the float64 dense reference.

Eager FlexAttention is checked on every pattern and with key padding; the compiled kernel (the
fast one) on two patterns at one shape, since each new shape costs a compilation. Float32
outputs must be within 2e-5 of ``dense_attention`` in float64.
"""

from __future__ import annotations

import pytest
import torch

from kexue.attention.dense import dense_attention
from kexue.attention.flex import block_mask, flex_sparse_attention
from kexue.attention.masks import and_, causal, dilated, fixed, local, or_, strided

PATTERNS = {
    "local": local(16),
    "causal-local": and_(causal(), local(16)),
    "dilated": dilated(5),
    "local+strided": or_(local(8), strided(7)),
    "fixed": fixed(16, 2),
    "causal": causal(),
}


def _qkv(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen) for _ in range(3))


def _reference(q, k, v, mask, **kw) -> torch.Tensor:
    return dense_attention(q.double(), k.double(), v.double(), mask, **kw)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_eager_matches_dense_reference(name: str) -> None:
    q, k, v = _qkv((2, 3, 150, 16))  # T = 150: one full block of 128 and a partial one
    with torch.no_grad():
        out = flex_sparse_attention(q, k, v, PATTERNS[name], compiled=False)
    torch.testing.assert_close(out.double(), _reference(q, k, v, PATTERNS[name]),
                               atol=2e-5, rtol=0)


def test_key_padding_no_leak_and_empty_rows_are_zero() -> None:
    q, k, v = _qkv((2, 2, 40, 8))
    keep = torch.ones(2, 40, dtype=torch.bool)
    keep[0, 25:] = False
    keep[1] = False  # nothing to attend to: zeros, like the reference
    mask = local(8)
    with torch.no_grad():
        out = flex_sparse_attention(q, k, v, mask, key_padding_mask=keep, compiled=False)
        v2 = v.clone()
        v2[0, :, 25:] = 1e3  # padded values must not reach any output
        out2 = flex_sparse_attention(q, k, v2, mask, key_padding_mask=keep, compiled=False)
    ref = _reference(q, k, v, mask, key_padding_mask=keep)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(out2, out)


@pytest.mark.parametrize("name", ["local+strided", "causal-local"])
def test_compiled_kernel_matches_dense_reference(name: str) -> None:
    q, k, v = _qkv((1, 2, 256, 16), seed=1)
    with torch.no_grad():
        out = flex_sparse_attention(q, k, v, PATTERNS[name], scale=0.3)
    torch.testing.assert_close(out.double(), _reference(q, k, v, PATTERNS[name], scale=0.3),
                               atol=2e-5, rtol=0)


def test_compiled_kernel_with_a_head_and_batch_dependent_mask() -> None:
    """Block layouts differ per (b, h): one shared layout would skip or unmask blocks."""

    def mask(b, h, q, k):  # head 0 causal, head 1 anti-causal; batch 1 also local
        pattern = torch.where(h == 0, k <= q, k >= q)
        return pattern & ((b == 0) | ((q - k).abs() <= 40))

    q, k, v = _qkv((2, 2, 256, 16), seed=2)
    with torch.no_grad():
        out = flex_sparse_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=2e-5, rtol=0)


def test_too_many_compilations_raise_instead_of_running_eagerly(monkeypatch) -> None:
    """Past the limit torch would silently run FlexAttention eagerly, with T × T scores."""
    import torch._dynamo

    from kexue.attention import flex

    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch._dynamo.reset()
    q, k, v = _qkv((1, 1, 16, 8))
    with torch.no_grad(), pytest.raises(RuntimeError, match="compiled its kernel 1 times"):
        for window in (3, 5, 7):  # each radius is a new guard: a new compilation
            flex_sparse_attention(q, k, v, local(window))
    torch._dynamo.reset()


def test_block_mask_is_cached_per_mask_object() -> None:
    mask = local(8)
    assert block_mask(mask, 64) is block_mask(mask, 64)
    assert block_mask(mask, 64) is not block_mask(local(8), 64)


def test_cpu_training_is_refused_with_a_pointer_to_the_training_paths() -> None:
    q, k, v = _qkv((1, 1, 16, 8))
    q.requires_grad_(True)
    with pytest.raises(ValueError, match="inference only.*local_attention"):
        flex_sparse_attention(q, k, v, local(4))


def test_bad_input() -> None:
    q, k, v = _qkv((1, 1, 16, 8))
    with pytest.raises(ValueError, match="mask must be a mask function"):
        flex_sparse_attention(q, k, v, "local")
    with pytest.raises(ValueError, match=r"\(B, H, T, Dh\)"):
        flex_sparse_attention(q[0], k[0], v[0], local(4))
    with pytest.raises(ValueError, match="key_padding_mask"):
        flex_sparse_attention(q, k, v, local(4), key_padding_mask=torch.ones(1, 15).bool())
    with pytest.raises(ValueError, match="length must be an int >= 1"):
        block_mask(local(4), 0)
