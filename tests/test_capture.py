"""Tests for kexue.train.capture: recorded outputs and attention maps against hand computations."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from kexue.train.capture import Captured, attention_entropy, attention_top_k, capture

capture_module = importlib.import_module("kexue.train.capture")  # the module, not the function

# -- models written for the tests ----------------------------------------------------------------


class SelfAttention(nn.Module):
    """Causal multi-head self-attention through F.scaled_dot_product_attention; keeps q, k, v."""

    def __init__(self, dim: int = 16, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        self.q, self.k, self.v = q.detach(), k.detach(), v.detach()
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, T, Dh)
        self.y = y.detach()
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        # An SDPA call outside every block: must not be attributed to any of them.
        q = x.unsqueeze(1)  # (B, 1, T, D)
        x = F.scaled_dot_product_attention(q, q, q).squeeze(1)  # (B, T, D)
        return self.head(x)


class SDPACall(nn.Module):
    """Calls F.scaled_dot_product_attention with whatever it is given."""

    def forward(self, *args, **kwargs) -> Tensor:
        return F.scaled_dot_product_attention(*args, **kwargs)


# -- independent float64 references --------------------------------------------------------------


def reference_probs(
    q: Tensor,
    k: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    gqa: bool = False,
) -> Tensor:
    """softmax(Q Kᵀ · scale + M) in float64 with explicit index maths; zeros in dead rows."""
    q, k = q.double(), k.double()
    if gqa:  # query head h reads key head h // (Hq / Hk)
        group = q.shape[-3] // k.shape[-3]
        index = torch.tensor([h // group for h in range(q.shape[-3])])
        k = k.index_select(-3, index)
    tq, tk, e = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (1 / math.sqrt(e)) if scale is None else scale
    logits = torch.einsum("...qe,...ke->...qk", q, k) * s
    allowed = torch.ones(logits.shape, dtype=torch.bool)
    if causal:  # query i sees keys j <= i, top-left aligned
        i = torch.arange(tq).view(tq, 1)
        j = torch.arange(tk).view(1, tk)
        allowed = allowed & (j <= i)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        logits = logits + mask.double()
    logits = logits.masked_fill(~allowed, -math.inf)
    top = logits.amax(dim=-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
    weights = torch.exp(logits - top)  # exp(-inf) = 0
    total = weights.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp_min(1e-300), torch.zeros(()))


def expand_heads(v: Tensor, hq: int) -> Tensor:
    return v.repeat_interleave(hq // v.shape[-3], dim=-3)  # (..., Hq, Tk, Ev)


# (name, query shape, key shape, value shape, SDPA keyword arguments)
def _cases():
    tq, tk = 4, 6
    bool_mask = torch.rand(2, 1, tq, tk) > 0.4  # broadcast over heads
    bool_mask[0, 0, 1] = False  # a fully masked row
    bool_mask[1, 0, 2, 0] = True
    float_mask = torch.randn(tq, tk)
    return [
        ("plain", (2, 3, tq, 8), (2, 3, tk, 8), (2, 3, tk, 5), {}),
        ("causal_square", (2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 5), {"is_causal": True}),
        ("causal_q_short", (2, 3, 3, 8), (2, 3, 7, 8), (2, 3, 7, 5), {"is_causal": True}),
        ("causal_q_long", (2, 3, 7, 8), (2, 3, 3, 8), (2, 3, 3, 5), {"is_causal": True}),
        ("bool_mask", (2, 3, tq, 8), (2, 3, tk, 8), (2, 3, tk, 5), {"attn_mask": bool_mask}),
        ("float_mask", (2, 3, tq, 8), (2, 3, tk, 8), (2, 3, tk, 5), {"attn_mask": float_mask}),
        ("scale", (2, 3, tq, 8), (2, 3, tk, 8), (2, 3, tk, 5), {"scale": 0.7}),
        ("gqa", (2, 6, tq, 8), (2, 2, tk, 8), (2, 2, tk, 5), {"enable_gqa": True}),
        ("unbatched", (3, tq, 8), (3, tk, 8), (3, tk, 5), {}),
        ("five_dims", (2, 2, 3, tq, 8), (2, 2, 3, tk, 8), (2, 2, 3, tk, 5), {"is_causal": True}),
    ]


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sdpa_probabilities_match_float64_reference(case) -> None:
    _, qs, ks, vs, kwargs = case
    q, k, v = torch.randn(*qs), torch.randn(*ks), torch.randn(*vs)
    model = SDPACall()
    with capture(model, "", attention=True) as cap:
        out = model(q, k, v, **kwargs)

    (probs,) = cap.attention[""]
    ref = reference_probs(
        q,
        k,
        mask=kwargs.get("attn_mask"),
        causal=kwargs.get("is_causal", False),
        scale=kwargs.get("scale"),
        gqa=kwargs.get("enable_gqa", False),
    )
    assert probs.dtype == torch.float32
    assert probs.shape == (*qs[:-1], ks[-2])
    assert_close(probs.double(), ref, atol=1e-6, rtol=1e-5)
    # Every row is a distribution, except rows with no key allowed, recorded as zeros.
    sums = probs.double().sum(-1)
    assert_close(sums, (ref.sum(-1) > 0).double(), atol=1e-6, rtol=0)
    # P V is what SDPA returned: the record is the attention the model used.
    assert_close(probs @ expand_heads(v, qs[-3]), out, atol=1e-5, rtol=1e-5)


def reference_stats(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Entropy −Σ p log p (0 log 0 = 0) and the k largest weights of float64 rows, by hand."""
    logs = torch.where(probs > 0, probs.log(), torch.zeros(()))
    return -(probs * logs).sum(-1), probs.sort(dim=-1, descending=True).values[..., :k]


def assert_stats_match(stats: dict, ref: Tensor, k: int) -> None:
    """Streamed entropy and top-k against float64 dense reductions of the reference map."""
    ref_entropy, ref_top = reference_stats(ref, k)
    assert_close(stats["entropy"].double(), ref_entropy, atol=1e-5, rtol=1e-5)
    values, indices = stats["top"]
    assert_close(values.double(), ref_top, atol=1e-6, rtol=1e-5)
    # Ties (e.g. masked zeros) may come in any order: the chosen keys carry the values.
    assert_close(ref.gather(-1, indices), ref_top, atol=1e-6, rtol=1e-5)


STATS = {"entropy": attention_entropy, "top": attention_top_k(3)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sdpa_streamed_stats_match_float64_reductions(case, monkeypatch) -> None:
    _, qs, ks, vs, kwargs = case
    # Blocks of 2 or 3 query rows: every case is streamed in several blocks, the last short.
    lead = math.prod(qs[:-2])
    monkeypatch.setattr(capture_module, "STREAM_BLOCK_ELEMENTS", 2 * lead * ks[-2] + 1)
    q, k, v = torch.randn(*qs), torch.randn(*ks), torch.randn(*vs)
    model = SDPACall()
    with capture(model, "", attention_stats=STATS) as cap:
        model(q, k, v, **kwargs)
    assert cap.attention == {}  # no dense map asked for
    (stats,) = cap.attention_stats[""]
    ref = reference_probs(
        q,
        k,
        mask=kwargs.get("attn_mask"),
        causal=kwargs.get("is_causal", False),
        scale=kwargs.get("scale"),
        gqa=kwargs.get("enable_gqa", False),
    )
    assert stats["entropy"].shape == ref.shape[:-1]
    assert_stats_match(stats, ref, 3)


def test_entropy_and_top_k_closed_forms() -> None:
    # A row on one key: entropy 0; spread over n keys: log n; all zeros (blind): 0.
    rows = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.25] * 4, [0.0, 0.5, 0.5, 0.0], [0.0] * 4])
    assert_close(attention_entropy(rows), torch.tensor([0.0, math.log(4), math.log(2), 0.0]))
    values, indices = attention_top_k(2)(rows[:1])
    assert values.tolist() == [[1.0, 0.0]] and indices[0, 0] == 1
    assert attention_top_k(9)(rows)[0].shape == (4, 4)  # at most Tk keys
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        attention_top_k(0)


def test_sdpa_fully_masked_rows_recorded_as_zeros() -> None:
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    float_mask = torch.zeros(3, 5).masked_fill(~mask, -math.inf)
    model = SDPACall()
    with capture(model, "", attention=True) as cap:
        model(q, k, v, attn_mask=mask)
        model(q, k, v, float_mask)  # positional attn_mask
    for probs in cap.attention[""]:
        assert torch.equal(probs[..., 1, :], torch.zeros(1, 2, 5))
        assert_close(probs[..., [0, 2], :].sum(-1), torch.ones(1, 2, 2))


def test_sdpa_positional_arguments_are_bound_like_sdpa() -> None:
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    model = SDPACall()
    with capture(model, "", attention=True) as cap:
        # (query, key, value, attn_mask, dropout_p, is_causal, *, scale, enable_gqa)
        model(q, k, v, None, 0.0, True, scale=0.5)
    assert_close(cap.attention[""][0].double(), reference_probs(q, k, causal=True, scale=0.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_upcast(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(2, 2, 4, 8).to(dtype) for _ in range(3))
    model = SDPACall()
    with capture(model, "", attention=True) as cap:
        model(q, k, v, is_causal=True)
    probs = cap.attention[""][0]
    assert probs.dtype == torch.float32
    # Exact inputs, float32 maths: float32-level agreement, far better than dtype's eps.
    assert_close(probs.double(), reference_probs(q, k, causal=True), atol=1e-6, rtol=1e-5)


def test_self_attention_module_probabilities() -> None:
    model = TinyTransformer()
    x = torch.randn(2, 5, 16)
    with capture(model, "blocks.*.attn", attention=True) as cap:
        model(x)
    assert sorted(cap.attention) == ["blocks.0.attn", "blocks.1.attn"]
    for i, block in enumerate(model.blocks):
        (probs,) = cap.attention[f"blocks.{i}.attn"]
        attn = block.attn
        assert probs.shape == (2, 4, 5, 5)
        assert_close(probs.double(), reference_probs(attn.q, attn.k, causal=True))
        assert_close(probs @ attn.v, attn.y, atol=1e-5, rtol=1e-5)


def test_attention_goes_to_innermost_matched_module() -> None:
    model = TinyTransformer()
    x = torch.randn(2, 5, 16)
    with capture(model, ["blocks.?", "blocks.1.attn"], attention=True) as cap:
        model(x)
    # blocks.0's SDPA call is inside blocks.0 only; blocks.1's inside blocks.1.attn; the
    # call in TinyTransformer.forward is inside no matched module.
    assert sorted(cap.attention) == ["blocks.0", "blocks.1.attn"]
    with pytest.warns(UserWarning, match=r"\['head'\] ran but made no attention call"):
        with capture(model, "head", attention=True) as cap:
            model(x)
    assert cap.attention == {}
    with capture(model, "", attention=True) as cap:
        model(x)
    assert len(cap.attention[""]) == 3


def test_attention_gradients_with_detach_false() -> None:
    q = torch.randn(1, 2, 4, 8).requires_grad_()
    k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    weights = torch.randn(1, 2, 4, 6)
    model = SDPACall()
    with capture(model, "", attention=True, detach=False) as cap:
        model(q, k, v)
    (cap.attention[""][0] * weights).sum().backward()

    q64 = q.detach().double().requires_grad_()
    (reference_probs(q64, k) * weights.double()).sum().backward()
    assert_close(q.grad.double(), q64.grad, atol=1e-6, rtol=1e-5)


# -- module outputs ------------------------------------------------------------------------------


def test_sequential_outputs_equal_manual_calls() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    with capture(model, ["0", "1", "2"]) as cap:
        y = model(x)
    assert isinstance(cap, Captured)
    assert list(cap.outputs) == ["0", "1", "2"]
    assert_close(cap["0"], model[0](x))
    assert_close(cap["1"], torch.tanh(cap["0"]))
    assert_close(cap["2"], model[2](cap["1"]))
    assert torch.equal(cap["2"], y)
    assert not cap["2"].requires_grad


def test_transformer_block_outputs_equal_manual_calls() -> None:
    model = TinyTransformer()
    x = torch.randn(2, 5, 16)
    with capture(model, ["blocks.0", "blocks.1", "blocks.1.ln1", "blocks.1.attn"]) as cap:
        model(x)
    block = model.blocks[1]
    assert_close(cap["blocks.1.ln1"], block.ln1(cap["blocks.0"]))
    assert_close(cap["blocks.1.attn"], block.attn(cap["blocks.1.ln1"]))
    assert_close(cap["blocks.1"], block(cap["blocks.0"]))


def test_module_called_twice_records_twice() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # one module, two names, two calls
    x = torch.randn(4, 3)
    with capture(model, "2") as cap:  # the alias records under the first matching name
        model(x)
    first, second = cap.outputs["2"]
    assert_close(first, shared(x))
    assert_close(second, shared(torch.relu(first)))
    assert cap["2"] is second


def test_in_place_ops_after_the_module_do_not_change_the_record() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True))
    x = torch.randn(8, 4)
    with capture(model, "0") as cap:
        model(x)
    assert_close(cap["0"], model[0](x))
    assert (cap["0"] < 0).any()


class TupleDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, object]]:
        h = self.lin(x)
        return h, {"sq": h * h, "n": 7, "pair": [h.sum(), None]}


def test_tuple_and_dict_outputs_keep_structure() -> None:
    model = nn.Sequential(TupleDict())
    x = torch.randn(2, 3)
    with capture(model, "0", detach=True) as cap:
        h, extra = model(x)
    got_h, got = cap["0"]
    assert isinstance(cap["0"], tuple) and set(got) == {"sq", "n", "pair"}
    assert_close(got_h, h)
    assert_close(got["sq"], h * h)
    assert got["n"] == 7 and got["pair"][1] is None
    assert_close(got["pair"][0], h.sum())
    assert not got["sq"].requires_grad


def test_detach_false_backpropagates_to_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with capture(model, "1", detach=False) as cap:
        model(x)
    hidden = cap["1"]
    assert hidden.requires_grad
    (hidden**2).sum().backward()

    # L = Σ h², h = tanh(z), z = x Wᵀ + b  ⇒  ∂L/∂z = 2h(1 − h²), ∂L/∂W = (∂L/∂z)ᵀ x.
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    h = torch.tanh(x.double() @ w.T + b)
    dz = 2 * h * (1 - h**2)
    assert_close(model[0].weight.grad, (dz.T @ x.double()).float())
    assert_close(model[0].bias.grad, dz.sum(0).float())
    assert model[2].weight.grad is None  # the loss never touched the last layer


# -- the model is unchanged ----------------------------------------------------------------------


def test_outputs_bit_identical_with_and_without_capture() -> None:
    model = TinyTransformer(dropout=0.2).train()  # attention dropout draws random numbers
    x = torch.randn(3, 6, 16)
    torch.manual_seed(1)
    plain = model(x)
    after_plain = torch.rand(3)
    torch.manual_seed(1)
    # "blocks.*" also matches the blocks' norms and MLPs, which make no attention call.
    with pytest.warns(UserWarning, match="blocks.0.ln1"):
        with capture(model, ["", "blocks.*", "blocks.*.attn"], attention=True) as cap:
            captured = model(x)
    after_captured = torch.rand(3)
    assert torch.equal(plain, captured)
    assert torch.equal(after_plain, after_captured)  # capture drew no random numbers
    assert torch.equal(cap[""], captured)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_and_mode_removed_on_exit() -> None:
    model = TinyTransformer()
    with capture(model, "blocks.*", attention=True):
        assert not _no_hooks(model)
        assert torch._C._len_torch_function_stack() == 1
    assert _no_hooks(model)
    assert torch._C._len_torch_function_stack() == 0


def test_hooks_and_mode_removed_after_exception() -> None:
    model = TinyTransformer()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, ["blocks.*", "head"], attention=True):
            model(torch.randn(1, 4, 16))
            raise RuntimeError("boom")
    assert _no_hooks(model)
    assert torch._C._len_torch_function_stack() == 0


class Raises(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise ValueError("inner failure")


class Recovers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = Raises()

    def forward(self, x: Tensor) -> Tensor:
        try:
            self.child(x)
        except ValueError:
            pass
        return F.scaled_dot_product_attention(x, x, x)


def test_module_that_raises_leaves_the_stack() -> None:
    model = Recovers()
    x = torch.randn(1, 3, 4)
    with capture(model, ["", "child"], attention=True) as cap:
        model(x)
    # The child raised before SDPA ran; the call belongs to the root, not to the child.
    assert list(cap.attention) == [""]
    assert cap.outputs["child"] == []
    assert_close(cap.attention[""][0].double(), reference_probs(x, x))


def test_nested_contexts_and_two_models() -> None:
    a, b = TinyTransformer(), TinyTransformer()
    x = torch.randn(1, 4, 16)
    with capture(a, "blocks.0", attention=True) as outer:
        with capture(a, "blocks.0.attn", attention=True) as inner, capture(b, "head") as other:
            a(x)
            b(x)
        a(x)  # only the outer context is still recording
    assert len(outer.outputs["blocks.0"]) == 2 and len(outer.attention["blocks.0"]) == 2
    assert len(inner.outputs["blocks.0.attn"]) == 1 and len(inner.attention["blocks.0.attn"]) == 1
    assert_close(outer.attention["blocks.0"][0], inner.attention["blocks.0.attn"][0])
    assert_close(other["head"], b(x))
    assert _no_hooks(a) and _no_hooks(b)


# -- torch's own attention modules ---------------------------------------------------------------


def test_transformer_encoder_layer_attention() -> None:
    # nn.MultiheadAttention calls SDPA from inside F.multi_head_attention_forward; capture records
    # it via a dropout-free need_weights=True recomputation. Training mode avoids the fused path.
    dim, heads, t = 16, 4, 5
    layer = nn.TransformerEncoderLayer(dim, heads, 32, dropout=0.0, batch_first=True).train()
    x = torch.randn(2, t, dim)
    causal = nn.Transformer.generate_square_subsequent_mask(t)  # (T, T) float, −inf above
    padding = torch.zeros(2, t)
    padding[1, -2:] = -math.inf  # the last two keys of sample 1 are padding
    with capture(layer, "self_attn", attention=True) as cap:
        y = layer(x, src_mask=causal, src_key_padding_mask=padding)
    assert torch.equal(y, layer(x, src_mask=causal, src_key_padding_mask=padding))
    (probs,) = cap.attention["self_attn"]
    assert probs.shape == (2, heads, t, t)

    mha = layer.self_attn
    weights = mha(
        x,
        x,
        x,
        attn_mask=causal,
        key_padding_mask=padding,
        need_weights=True,
        average_attn_weights=False,
    )[1]
    assert_close(probs, weights.detach())

    # By hand: q = x W_qᵀ + b_q, split into heads; M = causal + padding.
    w, bias = mha.in_proj_weight.detach().double(), mha.in_proj_bias.detach().double()
    qkv = x.double() @ w.T + bias  # (B, T, 3D)
    q, k, v = (z.view(2, t, heads, dim // heads).transpose(1, 2) for z in qkv.chunk(3, -1))
    mask = causal.view(1, 1, t, t) + padding.view(2, 1, 1, t)  # (B, 1, T, T)
    ref = reference_probs(q, k, mask=mask)
    assert_close(probs.double(), ref, atol=1e-6, rtol=1e-5)
    # The record times V, through out_proj, is the attention block's real output.
    heads_out = (probs.double() @ v).transpose(1, 2).reshape(2, t, dim)  # (B, T, D)
    out = heads_out @ mha.out_proj.weight.detach().double().T + mha.out_proj.bias.detach()
    (attn_out, _) = cap["self_attn"]
    assert_close(attn_out.double(), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ["causal_2d", "per_head_3d", "padding"])
def test_multihead_attention_streamed_stats(mask_kind: str, monkeypatch) -> None:
    dim, heads, t, b = 8, 2, 7, 2
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    model = nn.Sequential(mha)
    x = torch.randn(b, t, dim)
    kwargs: dict = {}
    if mask_kind == "causal_2d":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(t)  # (T, T)
    elif mask_kind == "per_head_3d":
        kwargs["attn_mask"] = torch.rand(b * heads, t, t) > 0.3  # True = masked out, for MHA
        kwargs["attn_mask"][..., 0] = False
    else:
        kwargs["key_padding_mask"] = torch.tensor([[False] * t, [False] * 4 + [True] * 3])
    monkeypatch.setattr(capture_module, "STREAM_BLOCK_ELEMENTS", 3 * b * heads * t)  # 3 rows
    with capture(model, "0", attention=True, attention_stats=STATS) as cap:
        mha(x, x, x, need_weights=False, **kwargs)
    (probs,) = cap.attention["0"]
    (stats,) = cap.attention_stats["0"]
    # By hand: M from the mask (MHA's bool masks mean "masked out"), then softmax in float64.
    w, bias = mha.in_proj_weight.detach().double(), mha.in_proj_bias.detach().double()
    qkv = x.double() @ w.T + bias  # (B, T, 3D)
    q, k, _ = (z.view(b, t, heads, dim // heads).transpose(1, 2) for z in qkv.chunk(3, -1))
    if mask_kind == "causal_2d":
        ref = reference_probs(q, k, mask=kwargs["attn_mask"])
    elif mask_kind == "per_head_3d":
        ref = reference_probs(q, k, mask=~kwargs["attn_mask"].view(b, heads, t, t))
    else:
        ref = reference_probs(q, k, mask=~kwargs["key_padding_mask"].view(b, 1, 1, t))
    assert_close(probs.double(), ref, atol=1e-6, rtol=1e-5)
    assert_stats_match(stats, ref, 3)


def test_multihead_attention_dropout_draws_nothing_extra() -> None:
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).train()
    model = nn.Sequential(mha)
    x = torch.randn(2, 4, 8)
    torch.manual_seed(3)
    plain = mha(x, x, x, need_weights=False)[0]
    torch.manual_seed(3)
    with capture(model, "0", attention=True) as cap:
        captured = mha(x, x, x, need_weights=False)[0]
    assert torch.equal(plain, captured)
    (probs,) = cap.attention["0"]
    # Before dropout: proper distributions, not dropped-out and rescaled rows.
    assert_close(probs.sum(-1), torch.ones(2, 2, 4))
    weights = mha.eval()(x, x, x, need_weights=True, average_attn_weights=False)[1]
    assert_close(probs, weights.detach())


def test_nested_contexts_record_each_attention_call_once() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True), SDPACall())
    x = torch.randn(1, 3, 8)
    with capture(model, "*", attention=True) as outer, capture(model, "*", attention=True) as inner:
        model[0](x, x, x, need_weights=False)
        model[1](x, x, x)
    for cap in (outer, inner):
        assert {name: len(p) for name, p in cap.attention.items()} == {"0": 1, "1": 1}


# -- wrappers and bad input ----------------------------------------------------------------------


def test_data_parallel_wrapper_is_unwrapped() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    wrapped = nn.DataParallel(model)  # on CPU it just calls the module
    x = torch.randn(2, 3)
    with capture(wrapped, "0") as cap:
        wrapped(x)
    assert list(cap.outputs) == ["0"]
    assert_close(cap["0"], model[0](x))
    with pytest.raises(ValueError, match="module.0"):
        capture(wrapped, "module.0")


def test_compiled_model_names_have_no_prefix() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    compiled = torch.compile(model, backend="eager")  # wrapping only; nothing is compiled here
    with capture(compiled, "0") as cap:
        model(torch.randn(2, 3))
    assert len(cap.outputs["0"]) == 1


def test_unmatched_pattern_names_it_and_suggests() -> None:
    model = TinyTransformer()
    with pytest.raises(ValueError, match=r"'blocks\.\*\.atn'.*blocks\.0\.attn"):
        capture(model, ["blocks.*.attn", "blocks.*.atn"])


def test_bad_arguments() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="empty"):
        capture(model, [])
    with pytest.raises(TypeError, match="nn.Module"):
        capture(lambda x: x, "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        capture(model, ["0", 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="attention must be a bool, got 'yes'"):
        capture(model, "0", attention="yes")  # type: ignore[arg-type]
    for bad in ({}, [attention_entropy], {"h": 3}, {1: attention_entropy}):
        with pytest.raises(ValueError, match="attention_stats must"):
            capture(model, "0", attention_stats=bad)  # type: ignore[arg-type]
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="max_map_elements must be an int >= 1"):
            capture(model, "0", attention=True, max_map_elements=bad)  # type: ignore[arg-type]


def test_getitem_errors_list_names() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with capture(model, "*") as cap:
        pass
    with pytest.raises(KeyError, match="never ran"):
        cap["0"]
    with capture(model, "0") as cap:
        model(torch.randn(1, 2))
    with pytest.raises(KeyError, match=r"not captured.*\['0'\]"):
        cap["1"]
