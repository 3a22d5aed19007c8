"""Every registered mixer meets the (B, T, D) contract (parametrized over MIXERS)."""

from __future__ import annotations

import pytest
import torch

from kexue.attention import MIXERS, Block

T, D, H = 24, 16, 4


@pytest.fixture(params=sorted(MIXERS))
def block(request) -> Block:
    torch.manual_seed(0)
    return Block(D, MIXERS[request.param](D, T, H)).double().eval()


def test_shape_and_gradients(block):
    x = torch.randn(3, T, D, dtype=torch.float64, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_padded_tokens_do_not_leak(block):
    x = torch.randn(2, T, D, dtype=torch.float64)
    keep = torch.ones(2, T, dtype=torch.bool)
    keep[0, T - 5:] = False
    keep[1, ::3] = False
    noisy = x.clone()
    noisy[~keep] = 100 * torch.randn(int((~keep).sum()), D, dtype=torch.float64)
    a, b = block(x, key_padding_mask=keep), block(noisy, key_padding_mask=keep)
    torch.testing.assert_close(a[keep], b[keep], rtol=1e-9, atol=1e-9)


def test_batch_independence(block):
    x = torch.randn(3, T, D, dtype=torch.float64)
    alone = block(x[:1])
    mates = torch.cat([x[:1], 50 * torch.randn(2, T, D, dtype=torch.float64)])
    torch.testing.assert_close(block(mates)[:1], alone, rtol=1e-9, atol=1e-9)
