"""MLP-family mixers and Block: contract checks over the registry, then each paper's maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from kexue.attention.base import MultiHeadAttention
from kexue.attention.block import MLP_MIXERS, Block, build_mixer
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

B, T, D, H = 3, 8, 16, 2
NAMES = sorted(MLP_MIXERS)


def sdpa(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def make(name: str, *, randomize: bool = True) -> nn.Module:
    """The registry's mixer; randomised so no init (gate ≈ 1, zero W_a) hides token mixing."""
    mixer = build_mixer(name, D, T, H)
    if randomize:
        with torch.no_grad():
            for p in mixer.parameters():
                p.normal_(0.0, 0.5)
    return mixer


def padding_mask() -> Tensor:
    lengths = torch.tensor([T, 5, 2])  # one full row, two padded ones
    return torch.arange(T) < lengths[:, None]  # (B, T)


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_finite(name):
    mixer = make(name, randomize=False)
    x = torch.randn(B, T, D)
    all_padded = padding_mask()
    all_padded[1] = False  # a sample with no real token must not produce NaN either
    for mask in (None, padding_mask(), all_padded):
        y = mixer(x, key_padding_mask=mask)
        assert y.shape == (B, T, D) and y.dtype == x.dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow(name):
    mixer = make(name)
    x = torch.randn(B, T, D, requires_grad=True)
    (mixer(x, key_padding_mask=padding_mask()) * torch.randn(B, T, D)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    mixer = make(name)
    x, mask = torch.randn(B, T, D), padding_mask()
    y = mixer(x, key_padding_mask=mask)
    for i in range(B):
        assert_close(y[i : i + 1], mixer(x[i : i + 1], key_padding_mask=mask[i : i + 1]))


@pytest.mark.parametrize("name", NAMES)
def test_padded_values_do_not_reach_kept_positions(name):
    mixer = make(name)
    x, mask = torch.randn(B, T, D), padding_mask()
    x2 = torch.where(mask[..., None], x, 100 * torch.randn(B, T, D))  # new padded tokens
    y, y2 = mixer(x, key_padding_mask=mask), mixer(x2, key_padding_mask=mask)
    assert torch.isfinite(y2).all()
    assert_close(y2[mask], y[mask])
    # The check can tell: without the mask the new padded tokens do reach kept positions.
    assert rel_err(mixer(x2)[mask], mixer(x)[mask]) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_kept_outputs_give_no_gradient_to_padded_inputs(name):
    mixer = make(name)
    mask = padding_mask()
    x = torch.randn(B, T, D, requires_grad=True)
    y = mixer(x, key_padding_mask=mask)
    (y * mask[..., None]).sum().backward()
    assert (x.grad[~mask] == 0).all()
    assert x.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_float64(name):
    mixer = make(name)
    x, mask = torch.randn(B, T, D), padding_mask()
    y64 = mixer.double()(x.double(), key_padding_mask=mask)
    assert y64.dtype == torch.float64
    y32 = mixer.float()(x, key_padding_mask=mask)
    assert_close(y32, y64.float(), rtol=1e-4, atol=1e-4 * y64.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_wrong_seq_len(name):
    mixer = make(name, randomize=False)
    x = torch.randn(B, T + 3, D)
    if getattr(mixer, "seq_len", None) is None:  # no positional weights: any T works
        assert mixer(x).shape == x.shape
    else:
        with pytest.raises(ValueError, match="seq_len=8"):
            mixer(x)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_dim(name):
    mixer = make(name, randomize=False)
    x = torch.randn(B, T, D + 2)
    if getattr(mixer, "dim", None) is None:  # FNet has no weights: any D works
        assert mixer(x).shape == x.shape
    else:
        with pytest.raises(ValueError, match="dim=16"):
            mixer(x)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    mixer = make(name, randomize=False)
    x = torch.randn(B, T, D)
    with pytest.raises(ValueError, match="key_padding_mask"):
        mixer(x, key_padding_mask=torch.ones(B, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mixer(x, key_padding_mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="x must"):
        mixer(x[0])
    with pytest.raises(ValueError, match="x must"):
        mixer(x.long())


def test_build_mixer_unknown_name():
    with pytest.raises(ValueError, match="name must be one of .*'transformer'"):
        build_mixer("transformer", D, T, H)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: MLPMixerToken(0, T), "dim"),
        (lambda: MLPMixerToken(D, 0), "seq_len"),
        (lambda: MLPMixerToken(D, T, expansion=0.0), "expansion"),
        (lambda: GatingUnit(D, T, attention_dim=0), "attention_dim"),
        (lambda: GatingUnit(D, T, expansion=-1.0), "expansion"),
        (lambda: ResMLPToken(D, 2.5), "seq_len"),
        (lambda: ExternalAttention(D, memory=0), "memory"),
        (lambda: SynthesizerDense(D, T, 3), "heads=3 must divide dim=16"),
        (lambda: SynthesizerRandom(T, 0), "heads"),
        (lambda: SynthesizerRandom(T, 3, dim=D), "heads=3 must divide dim=16"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- FNet


def dft_real_mixing(x: Tensor) -> Tensor:
    """Re(F_T X F_D) from explicit cos/sin matrices: F = C - iS, so Re(F X F) = C X C - S X S."""

    def cos_sin(n: int) -> tuple[Tensor, Tensor]:
        k = torch.arange(n, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(k, k) / n
        return angle.cos(), angle.sin()

    ct, st = cos_sin(x.shape[-2])
    cd, sd = cos_sin(x.shape[-1])
    return ct @ x @ cd - st @ x @ sd


@pytest.mark.parametrize("t, d", [(8, 16), (7, 5), (1, 3), (6, 2)])
def test_fnet_equals_dft_matrices(t, d):
    x = torch.randn(2, t, d, dtype=torch.float64)
    want = dft_real_mixing(x)
    assert_close(FNetMixer()(x), want)
    assert_close(torch.fft.fft2(x).real, want)  # the formula the paper states
    assert_close(FNetMixer()(x.float()), want.float(), rtol=1e-5, atol=1e-5)


def test_fnet_half_precision_runs_in_float32():
    x = torch.randn(2, T, D, dtype=torch.float64)
    y = FNetMixer()(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert rel_err(y.double(), dft_real_mixing(x)) < 2e-2


def test_fnet_padding_is_the_dft_of_the_zeroed_sequence():
    x, mask = torch.randn(B, T, D, dtype=torch.float64), padding_mask()
    assert_close(FNetMixer()(x, key_padding_mask=mask), dft_real_mixing(x * mask[..., None]))


# ----------------------------------------------------------------------------- permutations


def test_channel_mlp_is_token_permutation_equivariant():
    block = Block(D, make("mlp_mixer"))
    x, perm = torch.randn(B, T, D), torch.randperm(T)
    assert_close(block.mlp(block.norm2(x[:, perm])), block.mlp(block.norm2(x))[:, perm])


def test_external_attention_is_token_permutation_equivariant():
    mixer, x, mask = make("external"), torch.randn(B, T, D), padding_mask()
    perm = torch.randperm(T)
    y = mixer(x, key_padding_mask=mask)
    assert_close(mixer(x[:, perm], key_padding_mask=mask[:, perm]), y[:, perm])
    block = Block(D, mixer)
    assert_close(block(x[:, perm], mask[:, perm]), block(x, mask)[:, perm])


def test_fnet_is_equivariant_to_index_negation_only():
    mixer, x = FNetMixer(), torch.randn(B, T, D, dtype=torch.float64)
    neg = (-torch.arange(T)) % T  # n -> -n (mod T) commutes with the DFT
    assert_close(mixer(x[:, neg]), mixer(x)[:, neg])
    # A general permutation, and even a cyclic shift (a phase factor), does not commute.
    for perm in (torch.tensor([1, 0, 2, 3, 4, 5, 6, 7]), torch.roll(torch.arange(T), 1)):
        assert rel_err(mixer(x[:, perm]), mixer(x)[:, perm]) > 0.1


@pytest.mark.parametrize("name", ["mlp_mixer", "gmlp", "resmlp", "synthesizer_random"])
def test_positional_token_mixing_is_not_permutation_equivariant(name):
    mixer, x, perm = make(name), torch.randn(B, T, D), torch.randperm(T)
    assert rel_err(mixer(x[:, perm]), mixer(x)[:, perm]) > 0.1


# ----------------------------------------------------------------------------- MLP-Mixer


def test_mlp_mixer_token_mlp_by_hand():
    mixer = MLPMixerToken(D, T).double()
    assert mixer.hidden == D // 2  # D_S = C / 2 (paper, Table 1)
    x = torch.randn(B, T, D, dtype=torch.float64)
    w1, b1, w2, b2 = mixer.fc1.weight, mixer.fc1.bias, mixer.fc2.weight, mixer.fc2.bias
    want = torch.stack(
        [
            torch.stack([w2 @ F.gelu(w1 @ x[b, :, c] + b1) + b2 for c in range(D)], -1)
            for b in range(B)
        ]
    )
    assert_close(mixer(x), want)


# ----------------------------------------------------------------------------- gMLP / aMLP


@pytest.mark.parametrize("attention_dim", [None, 64])
def test_gmlp_gate_is_identity_at_init(attention_dim):
    """At init W ≈ 0 (entries ~ 1e-3 / sqrt(T)), b = 1 and W_a = 0: the output is V(u) to ~1e-3."""
    mixer = GatingUnit(D, T, attention_dim=attention_dim)
    assert mixer.half == 3 * D  # d_ffn = 6 d_model
    x = torch.randn(B, T, D)
    u = F.gelu(mixer.proj_in(x))[..., : mixer.half]  # the multiplicative bypass Z_1
    bypass = mixer.proj_out(u)
    assert rel_err(mixer(x), bypass) < 1e-2  # declared tolerance: 10 × init_scale
    with torch.no_grad():  # the test can tell a gate that is not ≈ 1
        mixer.spatial.weight.normal_(0.0, 1.0)
    assert rel_err(mixer(x), bypass) > 0.1


def test_gmlp_by_hand():
    mixer = make("amlp").double()
    x, mask = torch.randn(B, T, D, dtype=torch.float64), padding_mask()
    z = F.gelu(x @ mixer.proj_in.weight.T + mixer.proj_in.bias)
    u, v = z[..., : mixer.half], z[..., mixer.half :]
    v = F.layer_norm(v, (mixer.half,), mixer.norm.weight, mixer.norm.bias) * mask[..., None]
    gate = mixer.spatial.weight @ v + mixer.spatial.bias[:, None]
    q, k, va = (x @ mixer.attn_qkv.weight.T + mixer.attn_qkv.bias).split(64, dim=-1)
    scores = (q @ k.transpose(1, 2) / 8.0).masked_fill(~mask[:, None, :], -math.inf)
    attn = scores.exp() / scores.exp().sum(-1, keepdim=True)
    gate = gate + (attn @ va) @ mixer.attn_out.weight.T + mixer.attn_out.bias
    want = (u * gate) @ mixer.proj_out.weight.T + mixer.proj_out.bias
    assert_close(mixer(x, key_padding_mask=mask), want)


def test_gmlp_block_is_the_paper_block():
    block = Block(D, GatingUnit(D, T), mlp_ratio=0)
    assert block.mlp is None
    x = torch.randn(B, T, D)
    assert_close(block(x), x + block.mixer(block.norm1(x)))


# ----------------------------------------------------------------------------- ResMLP


def test_resmlp_affine_and_cross_patch_by_hand():
    aff = Affine(D)
    x = torch.randn(B, T, D)
    assert_close(aff(x), x)  # α = 1, β = 0
    mixer = ResMLPToken(D, T)
    assert_close(mixer.pre(x), x)
    assert_close(mixer.post.alpha, torch.full((D,), 0.1))  # LayerScale-like init, depth 12
    want = 0.1 * (mixer.cross_patch.weight @ x + mixer.cross_patch.bias[:, None])
    assert_close(mixer(x), want)
    with torch.no_grad():
        aff.alpha.copy_(torch.arange(D, dtype=torch.float32))
        aff.beta.fill_(2.0)
    assert_close(aff(x), x * torch.arange(D) + 2.0)


# ----------------------------------------------------------------------------- external attention


def test_external_attention_double_normalisation_by_hand():
    mixer = make("external").double()
    x, mask = torch.randn(B, T, D, dtype=torch.float64), padding_mask()
    logits = x @ mixer.m_k.weight.T  # (B, T, S)
    e = logits.exp() * mask[..., None]
    over_tokens = e / e.sum(dim=1, keepdim=True)  # softmax over kept tokens
    assert_close(over_tokens.sum(dim=1), torch.ones(B, 64, dtype=torch.float64))
    want = over_tokens / over_tokens.sum(dim=-1, keepdim=True)  # L1 over memory units
    attn = mixer.attention(x, key_padding_mask=mask)
    assert_close(attn[mask], want[mask])
    assert_close(attn[mask].sum(-1), torch.ones(int(mask.sum()), dtype=torch.float64))
    assert (attn[~mask] == 0).all()
    assert_close(mixer(x, key_padding_mask=mask), attn @ mixer.m_v.weight.T)


def test_external_attention_padding_equals_dropping_the_padded_tokens():
    mixer, x, mask = make("external"), torch.randn(B, T, D), padding_mask()
    y = mixer(x, key_padding_mask=mask)
    for i, n in enumerate(mask.sum(-1).tolist()):
        assert_close(y[i, :n], mixer(x[i : i + 1, :n])[0])


# ----------------------------------------------------------------------------- Synthesizer


def test_synthesizer_random_by_hand():
    mixer = SynthesizerRandom(T, H).double()
    r = torch.linspace(-3, 3, H * T * T, dtype=torch.float64).view(H, T, T).sin() * 2
    with torch.no_grad():
        mixer.logits.copy_(r)
    x, mask = torch.randn(B, T, D, dtype=torch.float64), padding_mask()
    xh = x.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
    e = r.exp()
    assert_close(mixer(x), ((e / e.sum(-1, keepdim=True)) @ xh).transpose(1, 2).reshape(B, T, D))
    e = r.exp() * mask[:, None, None, :]  # padded key columns dropped, rows renormalised
    want = ((e / e.sum(-1, keepdim=True)) @ xh).transpose(1, 2).reshape(B, T, D)
    assert_close(mixer(x, key_padding_mask=mask), want)


def test_synthesizer_random_projections_and_fixed_variant():
    mixer = make("synthesizer_random").double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    v = (x @ mixer.value.weight.T + mixer.value.bias).view(B, T, H, D // H).transpose(1, 2)
    y = (mixer.logits.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    assert_close(mixer(x), y @ mixer.out.weight.T + mixer.out.bias)
    fixed = SynthesizerRandom(T, H, trainable=False)
    assert "logits" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    with pytest.raises(ValueError, match="heads=2 must divide the input width D=5"):
        fixed(torch.randn(B, T, 5))


def test_synthesizer_dense_by_hand():
    mixer = make("synthesizer_dense").double()
    x, mask = torch.randn(B, T, D, dtype=torch.float64), padding_mask()
    w1, w2 = mixer.synth[0], mixer.synth[2]
    hidden = torch.relu(x @ w1.weight.T + w1.bias)
    logits = (hidden @ w2.weight.T + w2.bias).view(B, T, H, T).transpose(1, 2)  # (B, H, T, T)
    e = logits.exp() * mask[:, None, None, :]
    v = (x @ mixer.value.weight.T + mixer.value.bias).view(B, T, H, D // H).transpose(1, 2)
    y = ((e / e.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(B, T, D)
    assert_close(mixer(x, key_padding_mask=mask), y @ mixer.out.weight.T + mixer.out.bias)


# ----------------------------------------------------------------------------- Block


def block_mixers() -> dict[str, nn.Module]:
    mixers = {name: make(name) for name in NAMES}
    mixers["mha_sdpa"] = MultiHeadAttention(D, H, sdpa)
    return mixers


@pytest.mark.parametrize("name", [*NAMES, "mha_sdpa"])
def test_block_residual_structure(name):
    block = Block(D, block_mixers()[name])
    x, mask = torch.randn(B, T, D), padding_mask()
    y = block(x, mask)
    assert y.shape == (B, T, D) and torch.isfinite(y).all()
    after_mixer = x + block.mixer(block.norm1(x), key_padding_mask=mask)
    assert_close(y, after_mixer + block.mlp(block.norm2(after_mixer)))
    with torch.no_grad():  # MLP output layer zeroed: only the mixer sublayer remains
        block.mlp[-1].weight.zero_()
        block.mlp[-1].bias.zero_()
    assert_close(block(x, mask), after_mixer)
    block.mixer.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    assert_close(block(x, mask), x)  # both output layers zeroed: identity


def test_block_keeps_padding_guarantee_and_runs_with_dropout():
    block = Block(D, make("external"), dropout=0.1)
    x, mask = torch.randn(B, T, D), padding_mask()
    x2 = torch.where(mask[..., None], x, torch.randn(B, T, D))
    block.eval()
    assert_close(block(x2, mask)[mask], block(x, mask)[mask])
    block.train()
    assert block(x, mask).shape == (B, T, D)


def test_block_resmlp_with_affine_norm():
    block = Block(D, ResMLPToken(D, T), norm=Affine)
    assert isinstance(block.norm1, Affine) and isinstance(block.norm2, Affine)
    x = torch.randn(B, T, D)
    assert_close(block(x), x + block.mixer(x) + block.mlp(x + block.mixer(x)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim"),
        ({"mixer": lambda x: x}, "mixer"),
        ({"mlp_ratio": -1.0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm": "layernorm"}, "norm"),
    ],
)
def test_block_bad_arguments(kwargs, match):
    args = {"dim": D, "mixer": FNetMixer(), **kwargs}
    with pytest.raises(ValueError, match=match):
        Block(**args)


def test_block_bad_inputs():
    block = Block(D, FNetMixer())
    with pytest.raises(ValueError, match="dim=16"):
        block(torch.randn(B, T, D + 1))
    with pytest.raises(ValueError, match="key_padding_mask"):
        block(torch.randn(B, T, D), torch.ones(B, T, dtype=torch.int64))
