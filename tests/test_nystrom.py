"""Nyström attention against float64 references written here: exact softmax attention, the
landmark formula with ``torch.linalg.pinv``, and the invariances padding and batching must keep."""

import functools
import math

import pytest
import torch
from torch.testing import assert_close

from kexue.attention.nystrom import NystromAttention, iterative_pinv, nystrom_attention

F64 = torch.float64


def reference_attention(q, k, v, mask=None, scale=None):
    """softmax(s·QKᵀ)V in float64, padded keys at -inf."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = scale * q.to(F64) @ k.to(F64).mT  # (B, H, T, T)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], -math.inf)
    return logits.softmax(-1) @ v.to(F64)


def run_sizes(n, m):
    """Landmark run sizes: n tokens cut into m runs, the first n % m one longer."""
    s, r = divmod(n, m)
    return [s + 1] * r + [s] * (m - r)


def reference_nystrom(q, k, v, m, mask=None):
    """softmax(QK̃ᵀ) pinv(softmax(Q̃K̃ᵀ)) softmax(Q̃Kᵀ)V per sample with ``torch.linalg.pinv``."""
    scale = 1 / math.sqrt(q.shape[-1])
    outs = []
    for b in range(q.shape[0]):
        kept = torch.arange(q.shape[2]) if mask is None else mask[b].nonzero()[:, 0]
        qk, kk, vk = q[b][:, kept], k[b][:, kept], v[b][:, kept]  # (H, n, D)
        bounds = [0, *torch.tensor(run_sizes(len(kept), m)).cumsum(0).tolist()]
        q_l = torch.stack([qk[:, i:j].mean(1) for i, j in zip(bounds, bounds[1:])], 1)
        k_l = torch.stack([kk[:, i:j].mean(1) for i, j in zip(bounds, bounds[1:])], 1)
        first = (scale * q[b] @ k_l.mT).softmax(-1)  # (H, T, m), every query
        middle = torch.linalg.pinv((scale * q_l @ k_l.mT).softmax(-1))  # (H, m, m)
        last = (scale * q_l @ kk.mT).softmax(-1)  # (H, m, n), kept keys only
        outs.append(first @ middle @ last @ vk)
    return torch.stack(outs)


def qkv(b=2, h=2, t=24, d=8, dtype=F64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, t, d, generator=g, dtype=dtype).requires_grad_(requires_grad)
        for _ in range(3)
    ]


def grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    cotangent = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, cotangent)


# --- exact attention -------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_landmarks_covering_all_tokens_give_exact_attention(extra, padded):
    q, k, v = qkv(t=20, requires_grad=True)
    mask = None
    if padded:
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[1, 13:] = False
        mask[0, 3] = False
    out = nystrom_attention(q, k, v, 20 + extra, key_padding_mask=mask)
    ref = reference_attention(q, k, v, mask)
    assert_close(out, ref, rtol=0, atol=1e-12)
    for got, want in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert_close(got, want, rtol=0, atol=1e-12)


def test_sample_with_at_most_m_kept_tokens_is_exact():
    # T = 40 > m = 8, but sample 1 keeps only 6 (scattered) tokens: they are its landmarks.
    q, k, v = qkv(t=40, requires_grad=True)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1] = False
    mask[1, [0, 5, 6, 17, 30, 39]] = True
    out = nystrom_attention(q, k, v, 8, key_padding_mask=mask)
    ref = reference_attention(q, k, v, mask)
    assert_close(out[1], ref[1], rtol=0, atol=1e-12)
    got, want = grads(out[1], (q, k, v)), grads(ref[1], (q, k, v))
    for a, b in zip(got, want):
        assert_close(a[1], b[1], rtol=0, atol=1e-12)


def test_fully_padded_sample_gives_zeros():
    q, k, v = qkv(t=30)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1] = False
    for m in (8, 30):
        out = nystrom_attention(q, k, v, m, key_padding_mask=mask)
        assert torch.isfinite(out).all()
        assert_close(out[1], torch.zeros_like(out[1]), rtol=0, atol=0)


# --- the landmark formula --------------------------------------------------------------------


def clustered_qkv(mask, m, d=8, seed=0):
    """q = k = one centre per landmark run (+ small noise): a well-conditioned softmax(Q̃K̃ᵀ)."""
    g = torch.Generator().manual_seed(seed)
    b, t = mask.shape
    q = torch.randn(b, 2, t, d, generator=g, dtype=F64)
    for i in range(b):
        kept = mask[i].nonzero()[:, 0]
        centres = 2.0 * torch.randn(2, m, d, generator=g, dtype=F64)
        sizes = torch.tensor(run_sizes(len(kept), m))
        q[i][:, kept] = centres.repeat_interleave(sizes, dim=1) + 0.1 * q[i][:, kept]
    v = torch.randn(b, 2, t, d, generator=g, dtype=F64)
    return q, q.clone(), v


@pytest.mark.parametrize("padded", [False, True])
def test_matches_float64_formula_with_uneven_runs(padded):
    # T = 50, m = 8: runs of 7, 7, 6, ..., 6; with padding, sample 1 keeps 37 scattered tokens.
    t, m = 50, 8
    mask = torch.ones(2, t, dtype=torch.bool)
    if padded:
        mask[1, torch.randperm(t, generator=torch.Generator().manual_seed(3))[:13]] = False
    q, k, v = clustered_qkv(mask, m)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ref = reference_nystrom(q, k, v, m, mask)
    out = nystrom_attention(q, k, v, m, key_padding_mask=mask if padded else None, pinv_iters=40)
    # Precondition: the middle kernel is well conditioned, so 40 iterations reach pinv.
    assert_close(out, ref, rtol=0, atol=1e-10)
    for got, want in zip(grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert_close(got, want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("t", [9, 17, 31, 63])
def test_lengths_not_divisible_by_m(t):
    q, k, v = qkv(t=t)
    out = nystrom_attention(q, k, v, 8)
    assert out.shape == v.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("padded", [False, True])
def test_gradcheck(padded):
    q, k, v = qkv(b=2, h=1, t=7, d=3, requires_grad=True)
    mask = torch.tensor([[True] * 7, [True, False, True, True, True, False, True]])
    fn = functools.partial(
        nystrom_attention, landmarks=3, key_padding_mask=mask if padded else None
    )
    assert torch.autograd.gradcheck(fn, (q, k, v))


def smooth_qkv(t, d, seed, freqs=3):
    """q, k, v = random mixtures of the first ``freqs`` sine/cosine harmonics over the sequence."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.linspace(0, 1, t, dtype=F64)
    f = torch.arange(1, freqs + 1, dtype=F64)[:, None]
    basis = torch.cat([torch.sin(2 * math.pi * f * pos), torch.cos(2 * math.pi * f * pos)])
    return [
        torch.randn(2, 2, 2 * freqs, d, generator=g, dtype=F64).mT @ basis  # (B, H, d, T)
        for _ in range(3)
    ]


def test_error_falls_with_landmarks_on_smooth_inputs():
    q, k, v = (x.mT for x in smooth_qkv(256, 16, seed=0))  # (B, H, T, Dh)
    exact = reference_attention(q, k, v)
    errors = [
        ((nystrom_attention(q, k, v, m) - exact).norm() / exact.norm()).item()
        for m in (4, 8, 16, 32)
    ]
    # Declared margin: each doubling of m at least shrinks the relative error by 40%
    # (measured on this seed: 0.96, 0.29, 0.026, 0.0064).
    for coarse, fine in zip(errors, errors[1:]):
        assert fine <= 0.6 * coarse, errors
    assert errors[-1] < 0.02


# --- the pseudo-inverse ----------------------------------------------------------------------


def softmax_kernels(b=4, h=3, m=32, seed=0):
    """Softmax kernels with a dominant diagonal: condition numbers ~40 (checked below)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, h, m, m, generator=g, dtype=F64) + 4 * torch.eye(m, dtype=F64)
    return logits.softmax(-1)


def relative_error(z, ref):
    return ((z - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1))).max().item()


def test_iterative_pinv_matches_linalg_pinv():
    a = softmax_kernels()
    assert torch.linalg.cond(a).max() < 100
    ref = torch.linalg.pinv(a)
    errors = [relative_error(iterative_pinv(a, j), ref) for j in range(13)]
    # Declared tolerance: 12 iterations reach 1e-12 relative (Frobenius) error on these kernels.
    assert errors[-1] < 1e-12, errors
    for before, after in zip(errors, errors[1:]):
        assert after < before or after < 1e-13, errors


def test_iterative_pinv_rectangular_and_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 4, generator=g, dtype=F64) + 3 * torch.eye(6, 4, dtype=F64)
    assert_close(iterative_pinv(a, 30), torch.linalg.pinv(a), rtol=0, atol=1e-12)
    assert_close(iterative_pinv(a.mT, 30), torch.linalg.pinv(a.mT), rtol=0, atol=1e-12)
    zero = torch.zeros(2, 5, 5, dtype=F64)
    assert_close(iterative_pinv(zero, 3), zero, rtol=0, atol=0)


def test_iterative_pinv_start_is_per_matrix():
    a = softmax_kernels(b=1, h=1)
    # A batch-mate with a far larger ‖·‖₁ would shrink a batch-global Z_0 for `a`.
    mate = 50 * torch.eye(32, dtype=F64)[None, None] + softmax_kernels(b=1, h=1, seed=1)
    alone = iterative_pinv(a, 3)
    together = iterative_pinv(torch.cat([a, mate]), 3)[:1]
    assert_close(together, alone, rtol=0, atol=1e-12)


# --- batch independence and padding ----------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
def test_sample_independent_of_batch_mates(with_mask):
    q, k, v = qkv(b=1, t=40)
    q2, k2, v2 = qkv(b=3, t=40, seed=5)
    # Very different batch-mates: peaked kernels (large norms), tiny norms, heavy padding.
    q2, k2 = q2 * torch.tensor([8.0, 0.01, 3.0], dtype=F64)[:, None, None, None], k2 * 5
    mask = mask_alone = None
    if with_mask:
        mask = torch.ones(4, 40, dtype=torch.bool)
        mask[2, 11:] = False
        mask[3, ::3] = False
        mask_alone = mask[:1]
    alone = nystrom_attention(q, k, v, 8, key_padding_mask=mask_alone)
    batched = nystrom_attention(
        torch.cat([q, q2]), torch.cat([k, k2]), torch.cat([v, v2]), 8, key_padding_mask=mask
    )
    assert_close(batched[:1], alone, rtol=0, atol=1e-12)


def test_no_leak_from_padded_tokens():
    q, k, v = qkv(t=40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 29:] = False
    mask[1, ::4] = False
    pad = ~mask[:, None, :, None]  # (B, 1, T, 1)
    out = nystrom_attention(q, k, v, 8, key_padding_mask=mask)
    # Huge values at padded positions: neither attention nor landmarks may see them.
    q2, k2, v2 = (torch.where(pad, 1e6 * torch.randn_like(x), x) for x in (q, k, v))
    out2 = nystrom_attention(q2, k2, v2, 8, key_padding_mask=mask)
    kept = mask[:, None, :, None].expand_as(out)
    assert_close(out2[kept], out[kept], rtol=0, atol=1e-12)

    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = nystrom_attention(q, k, v, 8, key_padding_mask=mask)
    for g in torch.autograd.grad(out[kept].sum(), (q, k, v)):
        assert_close(g[pad.expand_as(g)], torch.zeros(int(pad.expand_as(g).sum()), dtype=F64))


def test_padding_is_invisible():
    # Kept tokens of a padded sequence give what the same tokens give with no padding at all:
    # padded tokens are in no landmark and the runs are cut over the kept tokens only.
    q, k, v = qkv(b=1, t=50)
    mask = torch.ones(1, 50, dtype=torch.bool)
    mask[0, torch.randperm(50, generator=torch.Generator().manual_seed(1))[:13]] = False
    kept = mask[0].nonzero()[:, 0]
    padded = nystrom_attention(q, k, v, 8, key_padding_mask=mask)
    compact = nystrom_attention(q[:, :, kept], k[:, :, kept], v[:, :, kept], 8)
    assert_close(padded[:, :, kept], compact, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_low_precision_close_to_float64(dtype, tol):
    # The m × m kernel and its pseudo-inverse run in float32 at least; errors relative to the
    # largest output.
    q, k, v = smooth_qkv(128, 16, seed=2)
    q, k, v = (x.mT.contiguous() for x in (q, k, v))
    golden = nystrom_attention(q, k, v, 16)
    low = nystrom_attention(*(x.to(dtype) for x in (q, k, v)), 16)
    assert low.dtype == dtype
    assert_close(low.double(), golden, rtol=0, atol=tol * golden.abs().max().item())


# --- the module ------------------------------------------------------------------------------


def test_module_with_landmarks_covering_tokens_is_exact_attention():
    torch.manual_seed(0)
    layer = NystromAttention(16, 4, landmarks=12).double()
    x = torch.randn(2, 12, 16, dtype=F64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    q, k, v = layer.qkv(x).view(2, 12, 3, 4, 4).permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
    heads = reference_attention(q, k, v, mask)  # (B, H, T, Dh)
    ref = layer.out(heads.transpose(1, 2).reshape(2, 12, 16))
    assert_close(layer(x, key_padding_mask=mask), ref, rtol=0, atol=1e-12)
    assert "landmarks=12" in repr(layer)


def test_module_shapes_and_backward():
    layer = NystromAttention(32, 4, landmarks=8)
    x = torch.randn(3, 50, 32, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


# --- argument checks -------------------------------------------------------------------------


def test_causal_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="causal"):
        nystrom_attention(q, k, v, 8, causal=True)


@pytest.mark.parametrize("landmarks", [0, -1, 2.0, True, "8", None])
def test_bad_landmarks(landmarks):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="landmarks"):
        nystrom_attention(q, k, v, landmarks)
    with pytest.raises(ValueError, match="landmarks"):
        NystromAttention(16, 2, landmarks=landmarks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pinv_iters": -1}, "pinv_iters"),
        ({"pinv_iters": 1.5}, "pinv_iters"),
        ({"scale": 0.0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": math.inf}, "scale"),
        ({"key_padding_mask": torch.ones(2, 24)}, "key_padding_mask"),
        ({"key_padding_mask": torch.ones(2, 23, dtype=torch.bool)}, "key_padding_mask"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        nystrom_attention(q, k, v, 8, **kwargs)


def test_bad_shapes_and_dtypes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q must be"):
        nystrom_attention(q[0], k, v, 8)
    with pytest.raises(ValueError, match="share"):
        nystrom_attention(q, k[:, :, :10], v, 8)
    with pytest.raises(ValueError, match="dtype"):
        nystrom_attention(q, k.float(), v, 8)
    with pytest.raises(ValueError, match="floating"):
        nystrom_attention(q, k, v.long(), 8)
    for bad in (torch.ones(3), torch.ones(3, 3, dtype=torch.long), [[1.0]]):
        with pytest.raises(ValueError, match="a must be"):
            iterative_pinv(bad, 2)
    for iters in (-1, 1.5, True):
        with pytest.raises(ValueError, match="iters"):
            iterative_pinv(torch.eye(3), iters)
