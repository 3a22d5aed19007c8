"""capture() on kexue's own attention: local, atrous, local+strided and Nyström.

The recorded maps are checked against float64 references written here from the definitions
(the pattern as index arithmetic, the Nyström formula with its own hyper-power iteration), not
from kexue's mask helpers or kernels; the streamed statistics against float64 reductions of
those references.
"""

from __future__ import annotations

import functools
import importlib
import threading
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from kexue.attention import (
    AtrousAttention,
    LocalAttention,
    NystromAttention,
    SparseAttention,
    _fused,
    atrous_attention,
    local_attention,
    nystrom_attention,
    sparse_attention,
)
from kexue.attention import base as attention_base
from kexue.train.capture import attention_entropy, attention_top_k, capture

capture_module = importlib.import_module("kexue.train.capture")  # the module, not the function
STATS = {"entropy": attention_entropy, "top": attention_top_k(3)}


class Attend(nn.Module):
    """Calls one functional attention with fixed keyword arguments."""

    def __init__(self, fn, **kwargs) -> None:
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return self.fn(q, k, v, **self.kwargs, **kwargs)


# -- float64 references from the definitions -------------------------------------------------------


def allowed(kind: str, t: int, *, window=None, rate=None, stride=None, causal=False) -> Tensor:
    """(T, T) bool: may query i see key j, by the pattern's definition (kexue.fm/archives/6853)."""
    i = torch.arange(t).view(t, 1)
    j = torch.arange(t).view(1, t)
    if kind == "local":  # a band of radius window // 2
        out = (i - j).abs() <= window // 2
    elif kind == "atrous":  # the same residue class mod rate
        out = i % rate == j % rate
    else:  # local band, or a whole number of strides away
        out = ((i - j).abs() <= window // 2) | (i % stride == j % stride)
    return out & (j <= i) if causal else out


def masked_softmax64(q: Tensor, k: Tensor, keep: Tensor, scale: float | None = None) -> Tensor:
    """softmax over the keys ``keep`` (broadcast to (B, H, T, T)) in float64; blind rows 0."""
    q, k = q.double(), k.double()
    s = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * s
    weights = torch.exp(logits - logits.amax(-1, keepdim=True)) * keep
    total = weights.sum(-1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp_min(1e-300), torch.zeros(()))


def hyper_power_pinv(a: Tensor, iters: int) -> Tensor:
    """Z_0 = Aᵀ / (‖A‖₁‖A‖∞), Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ))), per matrix."""
    z = a.mT / (a.abs().sum(-2).amax(-1) * a.abs().sum(-1).amax(-1))[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom64(q: Tensor, k: Tensor, m: int, iters: int, keep: Tensor | None = None) -> Tensor:
    """Nyström's implied (B, H, T, T) matrix softmax(s·QK̃ᵀ) pinv(softmax(s·Q̃K̃ᵀ)) softmax(s·Q̃Kᵀ).

    Landmarks: the kept tokens cut into m runs, the first n % m one token longer. A sample with
    n <= m kept tokens has its tokens as landmarks and an exact inverse (the formula is exact).
    """
    q, k = q.double(), k.double()
    b, h, t, dh = q.shape
    s = dh**-0.5
    keep = torch.ones(b, t, dtype=torch.bool) if keep is None else keep
    out = torch.zeros(b, h, t, t, dtype=torch.float64)
    for n_b in range(b):
        idx = keep[n_b].nonzero().flatten()
        n = len(idx)
        if n <= m:
            runs = [idx[r : r + 1] for r in range(n)]
        else:
            size, extra = divmod(n, m)
            bounds = [0]
            for r in range(m):
                bounds.append(bounds[-1] + size + (r < extra))
            runs = [idx[bounds[r] : bounds[r + 1]] for r in range(m)]
        q_l = torch.stack([q[n_b, :, run].mean(1) for run in runs], 1)  # (H, m', Dh)
        k_l = torch.stack([k[n_b, :, run].mean(1) for run in runs], 1)
        left = torch.softmax(s * q[n_b] @ k_l.mT, -1)  # (H, T, m')
        kernel = torch.softmax(s * q_l @ k_l.mT, -1)  # (H, m', m')
        right = torch.softmax(s * q_l @ k[n_b, :, idx].mT, -1)  # (H, m', n)
        inv = torch.linalg.inv(kernel) if n <= m else hyper_power_pinv(kernel, iters)
        out[n_b][:, :, idx] = left @ inv @ right
    return out


# -- local, atrous, local + strided ----------------------------------------------------------------

# (id, function, pattern arguments, causal, T)
PATTERNS = [
    ("local", local_attention, {"window": 5}, False, 13),
    ("local_even_causal", local_attention, {"window": 6}, True, 13),
    ("local_wide", local_attention, {"window": 40}, False, 9),
    ("atrous", atrous_attention, {"rate": 3}, False, 10),
    ("atrous_causal", atrous_attention, {"rate": 4}, True, 11),
    ("sparse", sparse_attention, {"window": 4, "stride": 3}, False, 14),
    ("sparse_causal", sparse_attention, {"window": 3, "stride": 4}, True, 13),
]


def pattern_reference(fn, kwargs: dict, causal: bool, t: int) -> Tensor:
    kind = {local_attention: "local", atrous_attention: "atrous", sparse_attention: "sparse"}[fn]
    return allowed(kind, t, causal=causal, **kwargs)  # (T, T)


@pytest.mark.parametrize("portable", [False, True], ids=["fused", "portable"])
@pytest.mark.parametrize("padded", [False, True], ids=["", "padded"])
@pytest.mark.parametrize("case", PATTERNS, ids=[c[0] for c in PATTERNS])
def test_sparse_patterns_record_the_masked_softmax(case, padded: bool, portable: bool) -> None:
    _, fn, kwargs, causal, t = case
    q, k, v = (torch.randn(2, 3, t, 4) for _ in range(3))
    padding = None
    keep = pattern_reference(fn, kwargs, causal, t)  # (T, T)
    if padded:  # sample 1 loses its last 3 keys and key 1
        padding = torch.ones(2, t, dtype=torch.bool)
        padding[1, -3:] = False
        padding[1, 1] = False
        keep = keep & padding[:, None, None, :]  # (B, 1, T, T)
    model = Attend(fn, causal=causal, **kwargs)
    _fused.use_portable(portable)
    try:
        with capture(model, "", attention=True) as cap:
            out = model(q, k, v, key_padding_mask=padding)
    finally:
        _fused.use_portable(False)
    # One record per call: the kernel's own pieces (windows, groups) are not recorded.
    (probs,) = cap.attention[""]
    ref = masked_softmax64(q, k, keep)
    assert probs.shape == (2, 3, t, t) and probs.dtype == torch.float32
    assert_close(probs.double(), ref, atol=1e-6, rtol=1e-5)
    assert torch.all(probs[..., ~keep.expand(2, 3, t, t)] == 0)  # exact zeros off the pattern
    assert_close(probs @ v, out, atol=1e-5, rtol=1e-5)  # the map the model used


@pytest.mark.parametrize(
    "module, fn, kwargs",
    [
        (LocalAttention(12, 3, window=5, causal=True), local_attention, {"window": 5}),
        (AtrousAttention(12, 3, rate=3), atrous_attention, {"rate": 3}),
        (SparseAttention(12, 3, window=4, stride=3), sparse_attention, {"window": 4, "stride": 3}),
    ],
    ids=["local", "atrous", "sparse"],
)
def test_sparse_modules_attribute_to_the_module(module, fn, kwargs) -> None:
    model = nn.Sequential(module, nn.Linear(12, 12), module)  # one module, two calls
    x = torch.randn(2, 10, 12)
    with capture(model, ["0"], attention=True) as cap:
        model(x)
    first, second = cap.attention["0"]
    b, t, d = x.shape
    causal = getattr(module, "causal", False)
    keep = pattern_reference(fn, kwargs, causal, t)
    qkv = module.qkv(x).view(b, t, 3, 3, d // 3).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
    assert_close(first.double(), masked_softmax64(qkv[0], qkv[1], keep), atol=1e-6, rtol=1e-5)
    x2 = model[1](model[0](x))
    qkv = module.qkv(x2).view(b, t, 3, 3, d // 3).permute(2, 0, 3, 1, 4)
    assert_close(second.double(), masked_softmax64(qkv[0], qkv[1], keep), atol=1e-6, rtol=1e-5)


def test_sparse_scale_and_gradients_with_detach_false() -> None:
    q = torch.randn(1, 2, 9, 4, requires_grad=True)
    k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4)
    weights = torch.randn(1, 2, 9, 9)
    model = Attend(sparse_attention, window=3, stride=4, scale=0.3)
    with capture(model, "", attention=True, detach=False) as cap:
        model(q, k, v)
    (cap.attention[""][0] * weights).sum().backward()
    q64 = q.detach().double().requires_grad_()
    keep = allowed("sparse", 9, window=3, stride=4)
    (masked_softmax64(q64, k, keep, scale=0.3) * weights.double()).sum().backward()
    assert_close(q.grad.double(), q64.grad, atol=1e-6, rtol=1e-5)


# -- Nyström --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t, m, padded",
    [(13, 4, False), (12, 4, False), (13, 4, True), (6, 8, False), (6, 8, True)],
    ids=["uneven_runs", "even_runs", "padded_mixed", "m_ge_T", "m_ge_T_padded"],
)
def test_nystrom_records_its_implied_matrix(t: int, m: int, padded: bool) -> None:
    q, k, v = (torch.randn(2, 2, t, 4, dtype=torch.float64) for _ in range(3))
    padding = None
    if padded:  # sample 0: n = T - 2 > m (approximate); sample 1: n = 3 <= m (exact)
        padding = torch.zeros(2, t, dtype=torch.bool)
        padding[0, :-2] = True
        padding[1, [0, 2, 5]] = True
    model = Attend(nystrom_attention, landmarks=m, pinv_iters=6)
    with capture(model, "", attention=True) as cap:
        out = model(q, k, v, key_padding_mask=padding)
    (probs,) = cap.attention[""]  # the implied matrix only: no landmark kernels
    assert probs.shape == (2, 2, t, t) and probs.dtype == torch.float64
    if m >= t:  # exact softmax attention over the kept keys
        keep = torch.ones(2, t, dtype=torch.bool) if padding is None else padding
        ref = masked_softmax64(q, k, keep[:, None, None, :])
    else:
        ref = nystrom64(q, k, m, 6, padding)
    assert_close(probs, ref, atol=1e-9, rtol=1e-7)
    assert_close(probs @ v, out, atol=1e-9, rtol=1e-7)
    if m < t and not padded:
        assert (probs < 0).any()  # not a softmax


def test_nystrom_module_float32_and_streamed_top_k(monkeypatch) -> None:
    monkeypatch.setattr(capture_module, "STREAM_BLOCK_ELEMENTS", 2 * 2 * 16 * 4)  # 4 rows
    module = NystromAttention(8, 2, landmarks=4)
    x = torch.randn(2, 16, 8)
    with pytest.warns(UserWarning, match="not probability distributions"):
        with capture(module, "", attention=True, attention_stats=STATS) as cap:
            y = module(x)
    (probs,) = cap.attention[""]
    (stats,) = cap.attention_stats[""]
    qkv = module.qkv(x).view(2, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
    ref = nystrom64(qkv[0], qkv[1], 4, 6)
    assert_close(probs.double(), ref, atol=1e-5, rtol=1e-4)
    heads = (probs @ qkv[2]).transpose(1, 2).reshape(2, 16, 8)  # (B, T, D)
    assert_close(module.out(heads), y, atol=1e-5, rtol=1e-5)
    values, indices = stats["top"]
    ref_top = ref.sort(-1, descending=True).values[..., :3]
    assert_close(values.double(), ref_top, atol=1e-5, rtol=1e-4)
    assert_close(ref.gather(-1, indices), ref_top, atol=1e-5, rtol=1e-4)
    negative = (ref < 0).any(-1)  # entropy is defined only on rows without negative entries
    assert torch.isnan(stats["entropy"][negative]).all()


# -- streamed statistics, size bound, warnings, idle cost ------------------------------------------


@pytest.mark.parametrize("case", PATTERNS[::2], ids=[c[0] for c in PATTERNS[::2]])
def test_sparse_streamed_stats_match_float64_reductions(case, monkeypatch) -> None:
    _, fn, kwargs, causal, t = case
    monkeypatch.setattr(capture_module, "STREAM_BLOCK_ELEMENTS", 2 * 3 * t * 3)  # 3 rows
    q, k, v = (torch.randn(2, 3, t, 4) for _ in range(3))
    model = Attend(fn, causal=causal, **kwargs)
    with capture(model, "", attention_stats=STATS) as cap:
        model(q, k, v)
    (stats,) = cap.attention_stats[""]
    ref = masked_softmax64(q, k, pattern_reference(fn, kwargs, causal, t))
    logs = torch.where(ref > 0, ref.log(), torch.zeros(()))
    assert_close(stats["entropy"].double(), -(ref * logs).sum(-1), atol=1e-5, rtol=1e-5)
    values, indices = stats["top"]
    ref_top = ref.sort(-1, descending=True).values[..., :3]
    assert_close(values.double(), ref_top, atol=1e-6, rtol=1e-5)
    assert_close(ref.gather(-1, indices), ref_top, atol=1e-6, rtol=1e-5)


class LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize(
    "fn",
    [
        functools.partial(local_attention, window=9),
        functools.partial(nystrom_attention, landmarks=8),
        functools.partial(torch.nn.functional.scaled_dot_product_attention, is_causal=True),
    ],
    ids=["local", "nystrom", "sdpa"],
)
def test_streamed_stats_never_form_the_map(fn, monkeypatch) -> None:
    b, h, t = 1, 2, 256
    monkeypatch.setattr(capture_module, "STREAM_BLOCK_ELEMENTS", b * h * t * 16)  # 16 rows
    q, k, v = (torch.randn(b, h, t, 8) for _ in range(3))
    model = Attend(fn)
    spy = LargestOutput()
    with capture(model, "", attention_stats=STATS) as cap, spy, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Nyström's rows are not distributions: tested above
        model(q, k, v)
    assert cap.attention_stats[""][0]["entropy"].shape == (b, h, t)
    # Blocks of 16 rows (8192 entries) and the kernels' own buffers; never (B, H, T, T).
    assert spy.largest < b * h * t * t // 4


def test_dense_map_over_the_bound_names_the_streamed_stats() -> None:
    model = LocalAttention(8, 2, window=3)
    x = torch.randn(1, 12, 8)
    with capture(model, "", attention=True, max_map_elements=2 * 12 * 12) as cap:
        model(x)  # exactly at the bound: recorded
    assert cap.attention[""][0].shape == (1, 2, 12, 12)
    over = r"288 entries, over max_map_elements=287.*attention_stats"
    with pytest.raises(ValueError, match=over):
        with capture(model, "", attention=True, max_map_elements=287):
            model(x)
    with capture(model, "", attention_stats=STATS, max_map_elements=1) as cap:
        model(x)  # statistics have no such bound
    assert cap.attention_stats[""][0]["top"][0].shape == (1, 2, 12, 3)


def test_a_stat_that_drops_the_query_axis_is_an_error() -> None:
    model = Attend(local_attention, window=3)
    q = k = v = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match=r"attention_stats\['total'\].*\(1, 2, 6\)"):
        with capture(model, "", attention_stats={"total": lambda rows: rows.sum()}):
            model(q, k, v)


def test_warns_for_matched_modules_without_attention() -> None:
    model = nn.Sequential(LocalAttention(8, 2, window=3), nn.Linear(8, 8), nn.ReLU())
    x = torch.randn(1, 6, 8)
    with pytest.warns(UserWarning, match=r"\['0.qkv', '0.out', '1'\] ran but made no attention"):
        with capture(model, ["0*", "1"], attention=True) as cap:
            model(x)
    assert list(cap.attention) == ["0"]
    with capture(model, "0", attention=True):  # no warning: "0" made the call
        model(x)
    with capture(model, "", attention_stats=STATS):  # the root contains the call
        model(x)
    with capture(model, "2"):  # outputs only: nothing to warn about
        model(x)


def test_nested_contexts_record_each_kexue_call_once() -> None:
    model = nn.Sequential(SparseAttention(8, 2, window=3, stride=2), NystromAttention(8, 2, 2))
    x = torch.randn(1, 7, 8)
    with pytest.warns(UserWarning, match="made no attention call") as seen:  # projections
        with capture(model, "*", attention=True) as outer:
            with capture(model, "1", attention=True) as inner, capture(model, "0"):
                model(x)
    assert len(seen) == 1  # from the outer context only
    assert {name: len(p) for name, p in outer.attention.items()} == {"0": 1, "1": 1}
    assert {name: len(p) for name, p in inner.attention.items()} == {"1": 1}
    assert_close(outer.attention["1"][0], inner.attention["1"][0])


def test_idle_hooks_do_no_work(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the map was built with no observer installed")

    for module in ("kexue.attention.sparse", "kexue.attention.nystrom"):
        monkeypatch.setattr(importlib.import_module(module), "masked_softmax_rows", boom)
    monkeypatch.setattr(importlib.import_module("kexue.attention.nystrom"), "_implied_rows", boom)
    q = k = v = torch.randn(1, 2, 8, 4)
    model = nn.Sequential(nn.Identity())
    with capture(model, "0"):  # outputs only: no observer
        assert not attention_base.attention_observed()
        for fn in (local_attention, atrous_attention, nystrom_attention):
            fn(q, k, v, 2)
        sparse_attention(q, k, v, 3, 2)
    with capture(model, "0", attention=True):
        assert attention_base.attention_observed()
    assert not attention_base.attention_observed()  # removed on exit


def test_low_precision_inputs_are_recorded_in_float32() -> None:
    q, k, v = (torch.randn(1, 2, 10, 8).bfloat16() for _ in range(3))
    model = Attend(sparse_attention, window=3, stride=4, causal=True)
    with capture(model, "", attention=True) as cap:
        model(q, k, v)
    (probs,) = cap.attention[""]
    assert probs.dtype == torch.float32
    # Exact bf16 inputs, float32 maths: float32-level agreement, far below bf16's eps.
    keep = allowed("sparse", 10, window=3, stride=4, causal=True)
    assert_close(probs.double(), masked_softmax64(q, k, keep), atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("case", PATTERNS, ids=[c[0] for c in PATTERNS])
def test_cuda_sparse_patterns_and_nystrom_against_cpu_float64(case) -> None:
    _, fn, kwargs, causal, t = case
    q, k, v = (torch.randn(2, 3, t, 8) for _ in range(3))
    padding = torch.ones(2, t, dtype=torch.bool)
    padding[1, -2:] = False
    cuda = [x.cuda() for x in (q, k, v)]
    model = Attend(fn, causal=causal, **kwargs)
    with capture(model, "", attention=True, attention_stats=STATS) as cap:
        out = model(*cuda, key_padding_mask=padding.cuda())
    (probs,) = cap.attention[""]
    assert probs.device.type == "cuda"
    keep = pattern_reference(fn, kwargs, causal, t) & padding[:, None, None, :]
    ref = masked_softmax64(q, k, keep)
    assert_close(probs.cpu().double(), ref, atol=1e-5, rtol=1e-4)  # TF32-free float32 maths
    assert_close((probs @ cuda[2]).cpu(), out.cpu(), atol=1e-5, rtol=1e-4)
    values, indices = cap.attention_stats[""][0]["top"]
    assert_close(ref.gather(-1, indices.cpu()), values.cpu().double(), atol=1e-5, rtol=1e-4)

    nystrom = Attend(nystrom_attention, landmarks=3)
    with capture(nystrom, "", attention=True) as cap:
        out = nystrom(*cuda, key_padding_mask=padding.cuda())
    (probs,) = cap.attention[""]
    assert_close(probs.cpu().double(), nystrom64(q, k, 3, 6, padding), atol=1e-4, rtol=1e-3)
    assert_close((probs @ cuda[2]).cpu(), out.cpu(), atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # about 4 s of dynamo tracing
def test_compiled_kexue_attention_runs_and_is_captured() -> None:
    # The fused CPU path runs eagerly inside a compiled model (a graph break), and the hook
    # sees calls from compiled code: dynamo guards on the observers and retraces under capture.
    module = AtrousAttention(8, 2, rate=3, causal=True)
    compiled = torch.compile(module, backend="eager")
    x = torch.randn(2, 9, 8, requires_grad=True)
    y = compiled(x)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    y_eager = module(x)
    (grad_eager,) = torch.autograd.grad(y_eager.square().sum(), x)
    assert torch.equal(y, y_eager) and torch.equal(grad, grad_eager)
    with capture(compiled, "", attention=True) as cap:
        compiled(x)
    with capture(module, "", attention=True) as ref:
        module(x)
    assert torch.equal(cap.attention[""][0], ref.attention[""][0])
    # Nyström is traced whole by dynamo (no graph break). On a fresh thread, whose observer
    # state capture has never touched: the guards on it must hold from the first trace.
    nystrom = NystromAttention(8, 2, landmarks=3)
    compiled = torch.compile(nystrom, backend="eager")
    got: dict = {}

    def run() -> None:
        try:
            with torch.no_grad():
                compiled(x)  # compiled while idle
                with capture(compiled, "", attention=True) as cap:
                    compiled(x)
            got["map"] = cap.attention[""]
        except Exception as error:  # reported in the test's thread
            got["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert "error" not in got, got.get("error")
    with torch.no_grad(), capture(nystrom, "", attention=True) as ref:
        nystrom(x)
    (probs,) = got["map"]  # the implied matrix, not the landmark kernels
    assert torch.equal(probs, ref.attention[""][0])


@pytest.mark.parametrize("which", ["dense", "flex"])
def test_dense_reference_and_flex_record_the_masked_softmax(which: str) -> None:
    # dense_attention (plain ops, no SDPA call) and flex_sparse_attention (FlexAttention's
    # kernel) report the pattern's softmax too; reference: the float64 masked softmax.
    from kexue.attention import dense_attention, flex_sparse_attention, masks

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=gen) for _ in range(3))
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, 9:] = False
    pattern = masks.local(5)
    if which == "dense":
        model = Attend(dense_attention, mask=pattern)
    else:
        model = Attend(flex_sparse_attention, mask=pattern, compiled=False)
    with torch.no_grad(), capture(model, "", attention=True) as cap:
        out = model(q, k, v, key_padding_mask=pad)
    (got,) = cap.attention[""]
    keep = allowed("local", 12, window=5)[None, None] & pad[:, None, None, :]  # (B, 1, T, T)
    want = masked_softmax64(q, k, keep)
    assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert_close(out.double(), want @ v.double(), rtol=1e-5, atol=1e-5)
