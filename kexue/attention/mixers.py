"""MLP-family token mixers: MLP-Mixer, gMLP/aMLP, ResMLP, FNet, external attention, Synthesizer.

Every class is a bare mixing op meeting the contract of :mod:`kexue.attention.base`:
``mixer(x, key_padding_mask=None) -> y`` with x, y of shape (B, T, D) and an optional (B, T) bool
mask, True = a real token. Normalisation and residuals are :class:`kexue.attention.block.Block`'s
job. Mixers holding a (T, T) or T-row weight are built for one ``seq_len`` and refuse other lengths.

Key padding. Every mixer guarantees that the outputs at kept positions do not depend on the values
of padded tokens; outputs at padded positions are finite but unspecified. How:

==================  ==========================================================================
mixer               what it does with padded tokens
==================  ==========================================================================
MLPMixerToken       zeroes them before the token MLP (the positions still count: T is fixed)
GatingUnit          zeroes the normalised gate input v before the spatial projection; aMLP's
                    tiny attention drops padded keys from its softmax
ResMLPToken         zeroes them before the cross-patch linear layer
FNetMixer           zeroes them before the DFT (the transform length stays T)
ExternalAttention   drops them from the softmax over tokens: kept outputs equal those of the
                    sequence with the padded tokens removed
SynthesizerDense    drops padded keys (columns) from the softmax
SynthesizerRandom   drops padded keys (columns) from the softmax
==================  ==========================================================================

References:
    https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue.attention.base import check_heads, check_padding_mask

__all__ = [
    "Affine",
    "ExternalAttention",
    "FNetMixer",
    "GatingUnit",
    "MLPMixerToken",
    "ResMLPToken",
    "SynthesizerDense",
    "SynthesizerRandom",
]


# ----------------------------------------------------------------------------- validation


def _check_input(
    x: Tensor, mask: Tensor | None, *, dim: int | None = None, seq_len: int | None = None
) -> tuple[int, int, int]:
    """Validate a (B, T, D) input and its (B, T) key-padding mask; return (B, T, D)."""
    if not isinstance(x, Tensor) or x.ndim != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, T, D) tensor, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    b, t, d = x.shape
    if dim is not None and d != dim:
        raise ValueError(f"x has D={d} channels but the mixer was built with dim={dim}")
    if seq_len is not None and t != seq_len:
        raise ValueError(
            f"x has T={t} tokens but the mixer was built for seq_len={seq_len}; "
            "pad or crop the sequence to seq_len"
        )
    check_padding_mask(mask, b, t)
    return b, t, d


def _zero_padded(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded rows of a (B, T, C) tensor so token mixing cannot see their values."""
    return x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0.0)


def _mask_keys(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Fill padded key columns of (B, ..., T_q, T_k) logits with the dtype's lowest value.

    A finite fill rather than -inf: a padded key gets exactly zero weight after softmax, and a
    sample with no kept token gets a uniform row instead of NaN.
    """
    if mask is None:
        return logits
    keep = mask.view(mask.shape[0], *([1] * (logits.ndim - 2)), mask.shape[1])  # (B, 1.., T_k)
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


def _mix_tokens(layer: nn.Linear, x: Tensor) -> Tensor:
    """Apply ``layer`` along the token axis: (B, T_in, C) -> (B, T_out, C).

    ``W x + b`` as one batched matmul against a broadcast view of W, which avoids transposing x.
    """
    w = layer.weight.expand(x.shape[0], -1, -1)  # (B, T_out, T_in), no copy
    if layer.bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(layer.bias.unsqueeze(-1), w, x)  # (B, T_out, C)


# ----------------------------------------------------------------------------- MLP-Mixer


class MLPMixerToken(nn.Module):
    """MLP-Mixer's token-mixing MLP: one two-layer MLP across tokens, shared by all channels.

        Y[:, c] = W_2 GELU(W_1 X[:, c] + b_1) + b_2      for every channel c

    with ``W_1`` of shape (D_S, T) and ``W_2`` of shape (T, D_S). The paper sets the token-mixing
    width from the model width, D_S = C / 2, for every model size (Table 1: S/16 has C = 512,
    D_S = 256; B/16 768/384; L/16 1024/512; H/14 1280/640), so ``hidden = round(expansion * dim)``
    with ``expansion = 0.5``. (Some reimplementations scale D_S with the number of patches instead.)

    Key padding: padded tokens are zeroed before the MLP, so kept outputs do not depend on their
    values; they still occupy their positions of the fixed length T.

    Args:
        dim: model width D (C in the paper).
        seq_len: number of tokens T (S in the paper); the mixer only accepts this length.
        expansion: token-MLP hidden width D_S as a multiple of ``dim``.

    Raises:
        ValueError: for a non-positive ``dim`` or ``seq_len``, or an ``expansion`` that is not a
            finite number > 0.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021,
        arXiv:2105.01601.
    """

    def __init__(self, dim: int, seq_len: int, expansion: float = 0.5) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.seq_len = check_int("seq_len", seq_len, low=1)
        expansion = check_real("expansion", expansion, low=0, low_open=True)
        self.hidden = max(1, round(expansion * dim))
        self.fc1 = nn.Linear(seq_len, self.hidden)  # W_1: T -> D_S
        self.fc2 = nn.Linear(self.hidden, seq_len)  # W_2: D_S -> T

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        _check_input(x, key_padding_mask, dim=self.dim, seq_len=self.seq_len)
        x = _zero_padded(x, key_padding_mask)
        h = F.gelu(_mix_tokens(self.fc1, x))  # (B, D_S, D)
        return _mix_tokens(self.fc2, h)  # (B, T, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, seq_len={self.seq_len}, hidden={self.hidden}"


# ----------------------------------------------------------------------------- gMLP / aMLP


class GatingUnit(nn.Module):
    """gMLP's token mixing around a spatial gating unit (SGU), optionally with aMLP's attention.

        Z = GELU(X U)                      # (T, 2e), e = d_ffn / 2
        Z_1, Z_2 = split(Z)                # channel halves: bypass u, gate input v
        s(Z) = Z_1 ⊙ (W LayerNorm(Z_2) + b  [+ Attn(X)])
        Y = s(Z) V                         # (T, D)

    W (T, T) mixes tokens and is shared by all channels. Following the paper, W starts near zero
    and b at one, so at init the gate is ≈ 1 and the unit is ≈ ``V(Z_1)``: a plain per-token FFN
    that learns to mix tokens gradually. Here W ~ N(0, (init_scale / sqrt(T))²), which makes the
    gate's deviation from 1 about ``init_scale`` per entry whatever T is.

    aMLP (``attention_dim``) adds a tiny single-head softmax attention of the mixer input,
    ``Attn(X) = softmax(Q Kᵀ / sqrt(d_a)) V_a W_a`` with Q, K, V_a of width d_a = 64 in the paper,
    to the gate after the spatial projection. ``W_a`` starts at zero (our choice; the paper does not
    say) so that aMLP, too, starts as a per-token FFN.

    Stacked as ``Block(dim, GatingUnit(...), mlp_ratio=0)`` this is exactly the paper's gMLP block
    (pre-norm, residual, no separate channel MLP).

    Key padding: v is zeroed at padded tokens before the spatial projection, and the tiny attention
    drops padded keys, so kept outputs do not depend on padded values (padded positions still count
    in the fixed-length projection).

    Args:
        dim: model width D (d_model).
        seq_len: number of tokens T (n); the mixer only accepts this length.
        expansion: d_ffn / d_model. The paper uses 6 (gMLP-Ti/S/B: 128/768, 256/1536, 512/3072;
            gMLP_base for MLM: 512/3072). d_ffn is rounded to an even number.
        attention_dim: width d_a of aMLP's tiny attention (paper: 64), or None for plain gMLP.
        init_scale: scale of the near-zero initialisation of W.

    Raises:
        ValueError: for non-positive sizes or scales.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Liu, Dai, So, Le, "Pay Attention to MLPs", NeurIPS 2021, arXiv:2105.08050.
    """

    def __init__(
        self,
        dim: int,
        seq_len: int,
        *,
        expansion: float = 6.0,
        attention_dim: int | None = None,
        init_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.seq_len = check_int("seq_len", seq_len, low=1)
        expansion = check_real("expansion", expansion, low=0, low_open=True)
        self.half = max(1, round(expansion * dim / 2))  # e
        self.init_scale = check_real("init_scale", init_scale, low=0, low_open=True)
        self.attention_dim = (
            None if attention_dim is None else check_int("attention_dim", attention_dim, low=1)
        )
        self.proj_in = nn.Linear(dim, 2 * self.half)  # U
        self.norm = nn.LayerNorm(self.half)
        self.spatial = nn.Linear(seq_len, seq_len)  # W, b across tokens
        self.proj_out = nn.Linear(self.half, dim)  # V
        if self.attention_dim is not None:
            self.attn_qkv = nn.Linear(dim, 3 * self.attention_dim)
            self.attn_out = nn.Linear(self.attention_dim, self.half)  # W_a
        self.reset_gate()

    def reset_gate(self) -> None:
        """Re-initialise the gate to ≈ 1: W ≈ 0, b = 1 (and aMLP's W_a = 0)."""
        with torch.no_grad():
            self.spatial.weight.normal_(0.0, self.init_scale / math.sqrt(self.seq_len))
            self.spatial.bias.fill_(1.0)
            if self.attention_dim is not None:
                self.attn_out.weight.zero_()
                self.attn_out.bias.zero_()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        _check_input(x, key_padding_mask, dim=self.dim, seq_len=self.seq_len)
        u, v = F.gelu(self.proj_in(x)).chunk(2, dim=-1)  # each (B, T, e)
        v = _zero_padded(self.norm(v), key_padding_mask)
        gate = _mix_tokens(self.spatial, v)  # (B, T, e)
        if self.attention_dim is not None:
            gate = gate + self._tiny_attention(x, key_padding_mask)
        return self.proj_out(u * gate)  # (B, T, D)

    def _tiny_attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        qkv = self.attn_qkv(x).view(b, t, 3, 1, self.attention_dim)  # (B, T, 3, 1, d_a)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, 1, T, d_a)
        # A 4-D boolean mask keeps SDPA on its fused kernel; padded keys get zero weight.
        attn_mask = None if mask is None else mask.view(b, 1, 1, t)  # (B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, 1, T, d_a)
        return self.attn_out(y.squeeze(1))  # (B, T, e)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, seq_len={self.seq_len}, d_ffn={2 * self.half}, "
            f"attention_dim={self.attention_dim}"
        )


# ----------------------------------------------------------------------------- ResMLP


class Affine(nn.Module):
    """ResMLP's Affine layer, a per-channel rescale and shift: ``Aff(x) = α ⊙ x + β``.

    Starts as the identity (α = 1, β = 0) unless ``init`` sets α. It takes ``dim`` like a norm
    layer, so ``Block(dim, ResMLPToken(...), norm=Affine)`` uses it in place of LayerNorm, as
    ResMLP does.

    Args:
        dim: number of channels D.
        init: initial value of every α, a finite number.

    References:
        Touvron et al., "ResMLP: Feedforward networks for image classification with data-efficient
        training", IEEE TPAMI 2022, arXiv:2105.03404.
    """

    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.alpha = nn.Parameter(torch.full((dim,), check_real("init", init)))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.beta, self.alpha, x)  # α ⊙ x + β, broadcast over (B, T)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ResMLPToken(nn.Module):
    """ResMLP's token-mixing sublayer: a cross-patch linear layer between two Affine layers.

        Y = Aff_post( A Aff_pre(X) + a )      # A: (T, T) shared by all channels, a: (T,)

    Aff_pre starts as the identity (α = 1, β = 0); Aff_post plays LayerScale's role and starts at
    α = ``layerscale`` (paper: 0.1 for depth 12, 1e-5 for depth 24, 1e-6 beyond).

    Key padding: padded tokens are zeroed after Aff_pre, before A, so kept outputs do not depend on
    their values; they still occupy their positions of the fixed length T.

    Args:
        dim: model width D.
        seq_len: number of tokens T; the mixer only accepts this length.
        layerscale: initial α of the post-Affine, a finite number.

    Raises:
        ValueError: for a non-positive ``dim`` or ``seq_len``.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Touvron et al., "ResMLP: Feedforward networks for image classification with data-efficient
        training", IEEE TPAMI 2022, arXiv:2105.03404.
    """

    def __init__(self, dim: int, seq_len: int, *, layerscale: float = 0.1) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.seq_len = check_int("seq_len", seq_len, low=1)
        self.pre = Affine(dim)
        self.cross_patch = nn.Linear(seq_len, seq_len)  # A, a
        self.post = Affine(dim, init=check_real("layerscale", layerscale))

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        _check_input(x, key_padding_mask, dim=self.dim, seq_len=self.seq_len)
        x = _zero_padded(self.pre(x), key_padding_mask)
        return self.post(_mix_tokens(self.cross_patch, x))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, seq_len={self.seq_len}"


# ----------------------------------------------------------------------------- FNet


class FNetMixer(nn.Module):
    """FNet's parameter-free Fourier mixing: the real part of the 2-D DFT over (tokens, channels).

        Y = Re( F_T X F_D ),    (F_N)_{kn} = exp(-2πi k n / N)

    Computed with a real FFT: for real X the spectrum is Hermitian, Ŷ[k, D - l] = conj Ŷ[-k, l],
    so only D/2 + 1 channel frequencies are transformed and the rest are read off by index
    (≈ 3× faster forward and ≈ 1.3× faster forward+backward on CPU than ``fft2(x).real``).
    float16/bfloat16 inputs are transformed in float32 and cast back.

    The DFT is equivariant to no general token permutation: it is to n -> -n (mod T), but a
    cyclic shift becomes a phase factor, not a shift.

    Key padding: padded tokens are zeroed before the transform, so kept outputs do not depend on
    their values. Every output still mixes all T positions with unit-modulus weights: the result
    is the DFT of the zero-padded sequence, not of the shorter one.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Lee-Thorp, Ainslie, Eckstein, Ontañón, "FNet: Mixing Tokens with Fourier Transforms",
        NAACL 2022, arXiv:2105.03824.
    """

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        _, t, d = _check_input(x, key_padding_mask)
        x = _zero_padded(x, key_padding_mask)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        half = torch.fft.rfft2(xf).real  # (B, T, D//2 + 1): channel frequencies 0..D//2
        neg = (-torch.arange(t, device=x.device)) % t  # token frequency -k (mod T)
        # Frequencies l = D//2+1 .. D-1 equal Re Ŷ[-k, D - l], i.e. columns D - l = D-D//2-1 .. 1.
        rest = half[:, neg, 1 : d - d // 2].flip(-1)  # (B, T, D - D//2 - 1)
        return torch.cat([half, rest], dim=-1).to(x.dtype)  # (B, T, D)


# ----------------------------------------------------------------------------- external attention


class ExternalAttention(nn.Module):
    """External attention: attention to two small learned memories, with double normalisation.

        Ã = X M_kᵀ                                 # (T, S), S memory units
        Â[i, j] = exp(Ã[i, j]) / Σ_t exp(Ã[t, j])  # softmax over tokens
        A[i, j] = Â[i, j] / Σ_s Â[i, s]            # L1 over memory units
        Y = A M_v                                  # (T, D)

    ``M_k`` and ``M_v`` are bias-free linear layers with S = ``memory`` units (paper: 64). Cost is
    linear in T and, having no positional weights, the mixer takes any T and is equivariant to
    token permutations.

    Key padding: padded tokens are left out of the softmax over tokens, so the outputs at kept
    positions equal those of the sequence with the padded tokens removed. Padded rows of A are 0.

    Args:
        dim: model width D.
        memory: number of memory units S.
        eps: added to the L1 denominator (only matters for padded rows, which are all zero).

    Raises:
        ValueError: for a non-positive ``dim``, ``memory`` or ``eps``.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Guo, Liu, Mu, Hu, "Beyond Self-attention: External Attention using Two Linear Layers for
        Visual Tasks", IEEE TPAMI 2022, arXiv:2105.02358.
    """

    def __init__(self, dim: int, memory: int = 64, *, eps: float = 1e-9) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, low=1)
        self.memory = check_int("memory", memory, low=1)
        self.eps = check_real("eps", eps, low=0, low_open=True)
        self.m_k = nn.Linear(dim, memory, bias=False)
        self.m_v = nn.Linear(memory, dim, bias=False)

    def attention(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """The doubly normalised attention map A of shape (B, T, S); kept rows sum to 1."""
        _check_input(x, key_padding_mask, dim=self.dim)
        logits = self.m_k(x)  # (B, T, S)
        if key_padding_mask is not None:
            keep = key_padding_mask.unsqueeze(-1)  # (B, T, 1)
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        attn = logits.softmax(dim=1)  # over tokens
        if key_padding_mask is not None:
            attn = attn.masked_fill(~keep, 0.0)  # a fully padded sample would be uniform
        return attn / (attn.sum(dim=-1, keepdim=True) + self.eps)  # L1 over memory units

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        return self.m_v(self.attention(x, key_padding_mask))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, memory={self.memory}"


# ----------------------------------------------------------------------------- Synthesizer


class SynthesizerDense(nn.Module):
    """Dense Synthesizer: each token synthesises its own row of attention weights, no dot products.

        B_h[i, :] = (W_2 ReLU(W_1 x_i + b_1) + b_2)[h]      # (T,) per head h
        Y = concat_h( softmax(B_h) X W_v,h ) W_o

    ``W_1`` (D × D) is shared by the heads and ``W_2`` maps D to H·T, one length-T row per head
    (the paper writes one F per head; sharing the hidden layer keeps the parameter count at
    D² + D·H·T). Values and output are the usual multi-head projections.

    Key padding: padded keys (columns of B) get zero weight in the softmax and a row of B depends
    only on its own token, so kept outputs do not depend on padded values.

    Args:
        dim: model width D.
        seq_len: number of tokens T; the mixer only accepts this length.
        heads: number of heads H; must divide ``dim``.

    Raises:
        ValueError: for non-positive sizes or ``heads`` not dividing ``dim``.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Tay, Bahri, Metzler, Juan, Zhao, Zheng, "Synthesizer: Rethinking Self-Attention for
        Transformer Models", ICML 2021, arXiv:2005.00743.
    """

    def __init__(self, dim: int, seq_len: int, heads: int) -> None:
        super().__init__()
        self.head_dim = check_heads(dim, heads)
        self.dim, self.heads = dim, heads
        self.seq_len = check_int("seq_len", seq_len, low=1)
        self.synth = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, heads * seq_len)
        )  # F: W_1, W_2
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, t, d = _check_input(x, key_padding_mask, dim=self.dim, seq_len=self.seq_len)
        logits = self.synth(x).view(b, t, self.heads, t).transpose(1, 2)  # (B, H, T, T)
        attn = _mask_keys(logits, key_padding_mask).softmax(dim=-1)
        v = self.value(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        y = torch.matmul(attn, v)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, seq_len={self.seq_len}, heads={self.heads}"


class SynthesizerRandom(nn.Module):
    """Random Synthesizer: a learned (or fixed) random attention matrix per head, input-independent.

        Y = concat_h( softmax(R_h) G_h(X) )  [W_o]         # R_h: (T, T), R ~ N(0, 1) at init

    With ``dim`` given, G is a value projection and W_o the output projection, as in the paper's
    multi-head layer. Without it the mixer is the bare op G(X) = X split into H channel groups,
    ``Y_h = softmax(R_h) X_h``, and takes any width D divisible by H.

    Key padding: padded keys (columns of R) get zero weight in the softmax, so kept outputs do not
    depend on padded values.

    Args:
        seq_len: number of tokens T; the mixer only accepts this length.
        heads: number of heads H.
        dim: model width D for the value and output projections, or None for none.
        trainable: whether R is learned (paper's "Random") or a fixed buffer ("Fixed Random").

    Raises:
        ValueError: for non-positive sizes or ``heads`` not dividing ``dim``.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Tay, Bahri, Metzler, Juan, Zhao, Zheng, "Synthesizer: Rethinking Self-Attention for
        Transformer Models", ICML 2021, arXiv:2005.00743.
    """

    def __init__(
        self, seq_len: int, heads: int, *, dim: int | None = None, trainable: bool = True
    ) -> None:
        super().__init__()
        self.seq_len = check_int("seq_len", seq_len, low=1)
        self.heads = check_int("heads", heads, low=1)
        self.dim = None if dim is None else check_int("dim", dim, low=1)
        logits = torch.randn(heads, seq_len, seq_len)  # (H, T, T)
        if trainable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        if dim is not None:
            check_heads(dim, heads)
            self.value = nn.Linear(dim, dim)
            self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, t, d = _check_input(x, key_padding_mask, dim=self.dim, seq_len=self.seq_len)
        if d % self.heads:
            raise ValueError(f"heads={self.heads} must divide the input width D={d}")
        v = x if self.dim is None else self.value(x)
        v = v.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, Dh)
        logits = self.logits.to(x.dtype)  # (H, T, T), shared by the batch
        if key_padding_mask is not None:
            logits = _mask_keys(logits.expand(b, -1, -1, -1), key_padding_mask)  # (B, H, T, T)
        y = torch.matmul(logits.softmax(dim=-1), v)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return y if self.dim is None else self.out(y)

    def extra_repr(self) -> str:
        return f"seq_len={self.seq_len}, heads={self.heads}, dim={self.dim}"
