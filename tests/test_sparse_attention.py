"""Sparse attention: mask functions, the dense reference, and the fast paths against it.

The fast paths (local, atrous, local + strided; causal or not; with key padding) are checked
for outputs and gradients against ``dense_attention`` under the equivalent mask function,
computed in float64: the float32 fast path within 2e-5, the float64 fast path to rounding.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kexue.attention import _fused, sparse
from kexue.attention.base import MultiHeadAttention
from kexue.attention.dense import DenseAttention, dense_attention, sdpa_attention
from kexue.attention.masks import and_, causal, dense_mask, dilated, fixed, local, or_, strided
from kexue.attention.sparse import (
    AtrousAttention,
    LocalAttention,
    SparseAttention,
    atrous_attention,
    local_attention,
    sparse_attention,
)

# name -> (fast path with its pattern's arguments bound, mask function, (T, Dh) for the tests)
CASES = {
    "local-w8-T37": (functools.partial(local_attention, window=8), local(8), 37),
    "local-w7-T32": (functools.partial(local_attention, window=7), local(7), 32),
    "local-w1": (functools.partial(local_attention, window=1), local(1), 9),
    "local-w2": (functools.partial(local_attention, window=2), local(2), 10),
    "local-wide": (functools.partial(local_attention, window=100), local(100), 13),
    "atrous-r3-T37": (functools.partial(atrous_attention, rate=3), dilated(3), 37),
    "atrous-r4-T32": (functools.partial(atrous_attention, rate=4), dilated(4), 32),
    "atrous-r1": (functools.partial(atrous_attention, rate=1), dilated(1), 9),
    "atrous-r>T": (functools.partial(atrous_attention, rate=50), dilated(50), 13),
    "sparse-w8-s5-T37": (
        functools.partial(sparse_attention, window=8, stride=5),
        or_(local(8), strided(5)),
        37,
    ),
    "sparse-w8-s4-T32": (
        functools.partial(sparse_attention, window=8, stride=4),
        or_(local(8), strided(4)),
        32,
    ),
    "sparse-w2-s1": (
        functools.partial(sparse_attention, window=2, stride=1),
        or_(local(2), strided(1)),
        9,
    ),
    "sparse-w1-s3": (
        functools.partial(sparse_attention, window=1, stride=3),
        or_(local(1), strided(3)),
        11,
    ),
}


def _inputs(b: int, t: int, dtype: torch.dtype = torch.float64, h: int = 2, dh: int = 8):
    g = torch.Generator().manual_seed(1234 + t)
    return [torch.randn(b, h, t, dh, generator=g, dtype=dtype) for _ in range(3)]


def _padding(b: int, t: int) -> torch.Tensor:
    keep = torch.rand(b, t, generator=torch.Generator().manual_seed(7)) > 0.3
    keep[0, :3] = False  # a sample starting with padding: early causal queries see nothing
    return keep


def _out_and_grads(fn, q, k, v, grad_out, **kwargs):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.fixture(params=["fused", "fused-sliced", "portable"])
def kernel(request, monkeypatch):
    """Run each fast-path test on the fused CPU kernels (backward in blocks of windows; and, for
    "fused-sliced", in blocks of one window with chunks of the whole radius) and on the
    portable path, forced by the documented switch."""
    if request.param == "fused-sliced":
        monkeypatch.setattr(sparse, "_BACKWARD_SLICE", 1)
        monkeypatch.setattr(sparse, "_CHUNKS_PER_RADIUS", 1)
    if request.param == "portable":
        monkeypatch.setenv(_fused.ENV_VAR, "1")
    else:
        assert _fused.fused_available(), "the fused kernels failed their self-check"
    return request.param


# --- mask functions -----------------------------------------------------------------------


def _grid(mask_fn, t):
    return dense_mask(mask_fn, 1, 1, t)[0, 0].int()


def test_masks_match_hand_written_matrices():
    assert _grid(causal(), 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # window 3 and 2 share radius 1; window 4 has radius 2
    band1 = [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    assert _grid(local(3), 4).tolist() == band1
    assert _grid(local(2), 4).tolist() == band1
    assert _grid(local(1), 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert _grid(local(4), 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]
    every_other = [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]] * 2 + [[1, 0, 1, 0, 1]]
    assert _grid(dilated(2), 5).tolist() == every_other
    assert _grid(strided(2), 5).tolist() == every_other
    assert _grid(strided(3), 4).tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
    # fixed(3, 1): own block of 3, plus the last cell of every block (columns 2 and 5)
    assert _grid(fixed(3, 1), 6).tolist() == [
        [1, 1, 1, 0, 0, 1],
        [1, 1, 1, 0, 0, 1],
        [1, 1, 1, 0, 0, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
    ]
    assert _grid(and_(causal(), local(3)), 4).tolist() == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
    ]
    assert _grid(or_(local(1), strided(3)), 4).tolist() == [
        [1, 0, 0, 1],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [1, 0, 0, 1],
    ]


def test_dense_mask_keeps_unused_dims_at_one():
    assert dense_mask(causal(), 3, 4, 5).shape == (1, 1, 5, 5)
    per_batch = dense_mask(lambda b, h, q, k: (k <= q) | (b > 0), 2, 4, 3)
    assert per_batch.shape == (2, 1, 3, 3)
    assert per_batch[1].all() and not per_batch[0].all()


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda x: local(x), "window"),
        (lambda x: dilated(x), "rate"),
        (lambda x: strided(x), "stride"),
        (lambda x: fixed(x, 1), "stride"),
        (lambda x: fixed(4, x), "c"),
    ],
)
@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3"])
def test_mask_arguments_are_checked(make, name, bad):
    with pytest.raises(ValueError, match=name):
        make(bad)


def test_mask_combinators_and_dense_mask_are_checked():
    with pytest.raises(ValueError, match="fixed|c must"):
        fixed(4, 5)
    with pytest.raises(ValueError, match="at least one"):
        and_()
    with pytest.raises(ValueError, match="callable"):
        or_(causal(), 3)
    with pytest.raises(ValueError, match="bool"):
        dense_mask(lambda b, h, q, k: (q - k).float(), 1, 1, 3)


# --- the dense reference --------------------------------------------------------------------


def test_dense_attention_by_hand():
    # T = 2, one head, scale 1: q0 scores the keys (0, 2), q1 scores them (0, 0)
    q = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[0.0, 0.0], [2.0, 0.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    out = dense_attention(q, k, v, scale=1.0)
    p = 1 / (1 + torch.e**2)
    expected = torch.tensor([[p, 1 - p], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected)
    causal_out = dense_attention(q, k, v, causal(), scale=1.0)[0, 0]  # q0 sees key 0 only
    torch.testing.assert_close(causal_out, torch.stack([v[0, 0, 0], v[0, 0, :2].mean(0)]))


def test_dense_attention_matches_sdpa_and_takes_tensor_masks():
    q, k, v = _inputs(2, 11)
    torch.testing.assert_close(dense_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    mask_fn = and_(causal(), local(5))
    as_tensor = dense_mask(mask_fn, 1, 1, 11)[0, 0]  # (T, T), broadcast
    torch.testing.assert_close(
        dense_attention(q, k, v, mask_fn), dense_attention(q, k, v, as_tensor)
    )
    keep = _padding(2, 11)
    torch.testing.assert_close(
        sdpa_attention(q, k, v, local(5), causal=True, key_padding_mask=keep),
        dense_attention(q, k, v, mask_fn, key_padding_mask=keep),
    )
    torch.testing.assert_close(
        sdpa_attention(q, k, v, causal=True), dense_attention(q, k, v, causal())
    )


def test_dense_attention_blind_rows_are_zero_with_finite_grads():
    q, k, v = (x.requires_grad_() for x in _inputs(1, 6))
    keep = torch.tensor([[False, False, True, True, True, True]])
    out = dense_attention(q, k, v, causal(), key_padding_mask=keep)
    assert torch.equal(out[0, :, :2], torch.zeros_like(out[0, :, :2]))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert torch.equal(k.grad[0, :, :2], torch.zeros_like(k.grad[0, :, :2]))


# --- fast paths against the reference -------------------------------------------------------


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "key-padding"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_matches_float64_reference(case, is_causal, padded, kernel):
    fn, mask_fn, t = CASES[case]
    b = 2
    q, k, v = _inputs(b, t)
    grad_out = _inputs(b, t)[0].flip(2)
    keep = _padding(b, t) if padded else None
    ref_mask = and_(causal(), mask_fn) if is_causal else mask_fn
    ref = _out_and_grads(dense_attention, q, k, v, grad_out, mask=ref_mask, key_padding_mask=keep)
    fast64 = _out_and_grads(fn, q, k, v, grad_out, causal=is_causal, key_padding_mask=keep)
    fast32 = _out_and_grads(
        fn, q.float(), k.float(), v.float(), grad_out.float(), causal=is_causal,
        key_padding_mask=keep,
    )
    for name, r, f64, f32 in zip(("out", "dq", "dk", "dv"), ref, fast64, fast32):
        assert f32.dtype == torch.float32 and f64.dtype == torch.float64
        torch.testing.assert_close(f64, r, atol=1e-12, rtol=1e-10, msg=f"{name} (float64)")
        torch.testing.assert_close(f32.double(), r, atol=2e-5, rtol=0, msg=f"{name} (float32)")


# --- the private kernels: one self-checked switch --------------------------------------------

_FLASH_OP = "_scaled_dot_product_flash_attention_for_cpu"


@pytest.fixture
def fresh_verdict():
    """Forget the self-check's verdict before and after the test (it is decided once)."""
    _fused._reset()
    yield
    _fused._reset()
    _fused.use_portable(False)


def _local_case_against_reference():
    """sparse_attention (local + strided, both layouts merged; float64, key padding, causal)
    against the float64 dense reference, outputs and gradients."""
    fn, mask_fn, t = CASES["sparse-w8-s5-T37"]
    q, k, v = _inputs(2, t)
    grad_out = _inputs(2, t)[0].flip(2)
    keep = _padding(2, t)
    ref = _out_and_grads(dense_attention, q, k, v, grad_out, mask=and_(causal(), mask_fn),
                         key_padding_mask=keep)
    got = _out_and_grads(fn, q, k, v, grad_out, causal=True, key_padding_mask=keep)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("switch", ["env", "function"])
def test_switch_forces_the_portable_path(switch, monkeypatch, fresh_verdict):
    assert _fused.fused_available()
    calls = []
    real = _fused.flash_forward
    monkeypatch.setattr(_fused, "flash_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    _local_case_against_reference()
    assert calls, "the fused path was not taken"
    calls.clear()
    if switch == "env":
        monkeypatch.setenv(_fused.ENV_VAR, "1")
    else:
        _fused.use_portable(True)
    assert not _fused.fused_available()
    _local_case_against_reference()
    assert not calls, "the portable path called the private kernel"


def test_self_check_runs_under_no_grad_and_inference_mode(fresh_verdict):
    with torch.inference_mode():
        assert _fused.fused_available()
    _fused._reset()
    with torch.no_grad():
        assert _fused.fused_available()


@pytest.mark.parametrize("failure", ["raises", "wrong-values", "missing"])
def test_a_failing_self_check_selects_the_portable_path(failure, monkeypatch, fresh_verdict):
    real = getattr(torch.ops.aten, _FLASH_OP)
    seen = []

    def broken(*args, **kwargs):
        seen.append(1)
        if failure == "raises":
            raise RuntimeError("signature changed")
        out, lse = real(*args, **kwargs)
        return out * 1.001, lse

    if failure == "missing":
        monkeypatch.delattr(torch.ops.aten, _FLASH_OP, raising=False)
        monkeypatch.setattr(type(torch.ops.aten), "__getattr__", _no_such_op, raising=False)
    else:
        monkeypatch.setattr(torch.ops.aten, _FLASH_OP, broken)
    assert not _fused.fused_available()
    assert failure == "missing" or seen, "the self-check did not call the private op"
    seen.clear()
    _local_case_against_reference()  # the portable path, right
    assert not seen, "after a failed self-check the private op was called again"


def _no_such_op(self, name):
    raise AttributeError(name)


def test_sparse_gradcheck():
    q, k, v = (x.requires_grad_() for x in _inputs(1, 11, h=1, dh=3))
    keep = torch.tensor([[True] * 9 + [False] * 2])
    fn = functools.partial(
        sparse_attention, window=4, stride=3, causal=True, key_padding_mask=keep
    )
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("case", ["local-w8-T37", "atrous-r3-T37", "sparse-w8-s5-T37"])
def test_padded_keys_do_not_leak(case, kernel):
    fn, _, t = CASES[case]
    q, k, v = _inputs(2, t)
    keep = _padding(2, t)
    for is_causal in (False, True):
        out = fn(q, k, v, causal=is_causal, key_padding_mask=keep)
        noise = torch.randn_like(k) * 100 * (~keep)[:, None, :, None]
        out2 = fn(q, k + noise, v + noise, causal=is_causal, key_padding_mask=keep)
        torch.testing.assert_close(out2, out, atol=1e-12, rtol=0)
        kk, vv = k.clone().requires_grad_(), v.clone().requires_grad_()
        fn(q, kk, vv, causal=is_causal, key_padding_mask=keep).sum().backward()
        for grad in (kk.grad, vv.grad):
            assert torch.equal(grad * (~keep)[:, None, :, None], torch.zeros_like(grad))


@pytest.mark.parametrize("case", ["local-w8-T37", "atrous-r3-T37", "sparse-w8-s5-T37"])
def test_samples_are_independent(case, kernel):
    fn, _, t = CASES[case]
    q, k, v = _inputs(3, t)
    keep = _padding(3, t)
    together = fn(q, k, v, key_padding_mask=keep)
    for i in range(3):
        alone = fn(q[i : i + 1], k[i : i + 1], v[i : i + 1], key_padding_mask=keep[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", ["local-w8-T37", "atrous-r3-T37", "sparse-w8-s5-T37"])
def test_causal_passes_no_gradient_to_the_future(case, kernel):
    fn, _, t = CASES[case]
    q, k, v = (x.requires_grad_() for x in _inputs(1, t))
    i = 20
    out = fn(q, k, v, causal=True)
    out[:, :, : i + 1].sum().backward()
    for x in (q, k, v):
        assert torch.equal(x.grad[:, :, i + 1 :], torch.zeros_like(x.grad[:, :, i + 1 :]))
        assert x.grad[:, :, : i + 1].abs().sum() > 0


def test_local_and_atrous_sdpa_calls_take_the_fused_kernel(monkeypatch):
    # the portable path calls F.scaled_dot_product_attention; with only the flash backend
    # allowed it raises unless the masks are the 4-D kind the fused CPU kernel accepts
    monkeypatch.setenv(_fused.ENV_VAR, "1")
    q, k, v = _inputs(2, 37, dtype=torch.float32)
    keep = _padding(2, 37)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        for is_causal in (False, True):
            local_attention(q, k, v, 8, causal=is_causal, key_padding_mask=keep)
            atrous_attention(q, k, v, 3, causal=is_causal, key_padding_mask=keep)
            atrous_attention(q, k, v, 3, causal=is_causal)


def test_scale_is_passed_through():
    q, k, v = _inputs(1, 19)
    for fn, mask_fn in [
        (functools.partial(local_attention, window=6), local(6)),
        (functools.partial(atrous_attention, rate=4), dilated(4)),
        (functools.partial(sparse_attention, window=6, stride=4), or_(local(6), strided(4))),
    ]:
        ref = dense_attention(q, k, v, mask_fn, scale=0.3)
        torch.testing.assert_close(fn(q, k, v, scale=0.3), ref)


# --- modules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, attend",
    [
        (lambda: LocalAttention(16, 4, 6), functools.partial(local_attention, window=6)),
        (
            lambda: AtrousAttention(16, 4, 3, causal=True),
            functools.partial(atrous_attention, rate=3, causal=True),
        ),
        (
            lambda: SparseAttention(16, 4, 6, 4, causal=True),
            functools.partial(sparse_attention, window=6, stride=4, causal=True),
        ),
        (
            lambda: DenseAttention(16, 4, mask=local(6), causal=True),
            functools.partial(dense_attention, mask=and_(causal(), local(6))),
        ),
    ],
)
def test_modules_match_their_functional_form(module, attend):
    mixer = module()
    ref = MultiHeadAttention(16, 4, attend)
    ref.load_state_dict(mixer.state_dict())
    x = torch.randn(2, 21, 16)
    keep = _padding(2, 21)
    y = mixer(x, key_padding_mask=keep)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref(x, key_padding_mask=keep), atol=2e-6, rtol=0)
    y.sum().backward()
    assert all(p.grad is not None for p in mixer.parameters())
    assert "heads=4" in repr(mixer)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda q, k, v: local_attention(q, k, v, 0), "window"),
        (lambda q, k, v: local_attention(q, k, v, 4.0), "window"),
        (lambda q, k, v: atrous_attention(q, k, v, -1), "rate"),
        (lambda q, k, v: atrous_attention(q, k, v, "2"), "rate"),
        (lambda q, k, v: sparse_attention(q, k, v, 4, 0), "stride"),
        (lambda q, k, v: sparse_attention(q, k, v, True, 2), "window"),
        (lambda q, k, v: local_attention(q, k, v.float(), 4), "dtype"),
        (lambda q, k, v: atrous_attention(q[0], k[0], v[0], 2), "q must"),
        (lambda q, k, v: sparse_attention(q, k[:, :, :5], v, 4, 2), "share"),
        (lambda q, k, v: local_attention(q, k, v, 4, key_padding_mask=torch.ones(2, 9)), "bool"),
        (
            lambda q, k, v: atrous_attention(
                q, k, v, 2, key_padding_mask=torch.ones(2, 8, dtype=torch.bool)
            ),
            "key_padding_mask",
        ),
        (lambda q, k, v: local_attention(q, k, v, 4, scale=0.0), "scale"),
        (lambda q, k, v: dense_attention(q, k, v, torch.ones(9, 9)), "mask"),
        (lambda q, k, v: dense_attention(q, k, v, torch.ones(8, 8, dtype=torch.bool)), "mask"),
        (lambda q, k, v: dense_attention(q, k, v, "causal"), "mask"),
        (lambda q, k, v: LocalAttention(8, 2, 0), "window"),
        (lambda q, k, v: AtrousAttention(8, 2, 1.5), "rate"),
        (lambda q, k, v: SparseAttention(8, 2, 4, -3), "stride"),
        (lambda q, k, v: SparseAttention(8, 3, 4, 3), "divide"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, name):
    q, k, v = _inputs(2, 9)
    with pytest.raises(ValueError, match=name):
        call(q, k, v)


# --- empty dimensions: a ValueError, as for dense_attention under the same mask ----------------

_ENTRY_POINTS = {
    "local": (functools.partial(local_attention, window=3), local(3), LocalAttention, (3,)),
    "atrous": (functools.partial(atrous_attention, rate=2), dilated(2), AtrousAttention, (2,)),
    "sparse": (
        functools.partial(sparse_attention, window=3, stride=2),
        or_(local(3), strided(2)),
        SparseAttention,
        (3, 2),
    ),
}


@pytest.mark.parametrize("name", list(_ENTRY_POINTS))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("shape, dim", [((2, 3, 0, 4), "T"), ((0, 3, 5, 4), "B"),
                                        ((2, 0, 5, 4), "H")])
def test_empty_batch_heads_or_sequence_is_a_value_error_like_dense(
    name, is_causal, padded, shape, dim
):
    attend, mask, _, _ = _ENTRY_POINTS[name]
    if is_causal:
        mask = and_(causal(), mask)
    q = k = v = torch.randn(shape, dtype=torch.float64)
    kpm = torch.ones(shape[0], shape[2], dtype=torch.bool) if padded else None
    # The reference: dense attention under the pattern's mask refuses the empty dimension.
    with pytest.raises(ValueError, match=f"{dim} must be"):
        dense_attention(q, k, v, mask, key_padding_mask=kpm)
    with pytest.raises(ValueError, match=rf"must have {dim} >= 1, got {dim} = 0"):
        attend(q, k, v, causal=is_causal, key_padding_mask=kpm)


@pytest.mark.parametrize("name", list(_ENTRY_POINTS))
def test_modules_and_zero_head_width_refuse_empty_input(name):
    attend, _, module, args = _ENTRY_POINTS[name]
    with pytest.raises(ValueError, match="T >= 1, got T = 0"):
        module(8, 2, *args)(torch.randn(2, 0, 8))
    q = torch.randn(2, 3, 5, 0)
    for scale in (None, 1.0):
        with pytest.raises(ValueError, match="Dh >= 1"):
            attend(q, q, q, scale=scale)


def test_dense_attention_with_an_empty_head_size_is_a_clear_error():
    """Dh = 0 with the default scale 1/√Dh was a ZeroDivisionError from deep inside."""
    from kexue.attention import dense_attention

    q = torch.zeros(1, 2, 4, 0)
    with pytest.raises(ValueError, match="head size Dh"):
        dense_attention(q, q, q)
