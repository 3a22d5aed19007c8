"""GAN architectures from DCGAN to SELF-MOD, built by composition, and one trainer for them.

A generator is a stem (linear map of z to a ``base × base`` feature map), ``stages`` up-blocks
that double the resolution, and a head (norm, ReLU, 3×3 conv, tanh); a discriminator mirrors it
with down-blocks and a linear head. What distinguishes the papers is plugged in, not flagged:

=========  ===================================================================================
DCGAN      up-block = norm → ReLU → 4×4 transposed conv (stride 2); down-block = 4×4 conv
           (stride 2) → BN (not on the first) → LeakyReLU(0.2); weights N(0, 0.02²);
           Adam(2e-4, β₁ = 0.5); NS loss. D's BN, which sees real and fake batches separately,
           is what keeps a small DCGAN from collapsing to a few modes
ResNet     residual up/down blocks (two 3×3 convs, nearest upsampling / average pooling, 1×1
           shortcut); Xavier-uniform init
SNGAN      :func:`add_spectral_norm` on every conv/linear of D: W / σ(W), σ from one power
           iteration per training forward with a persistent vector ``u`` (a buffer)
SAGAN      :class:`SelfAttention` (gain γ initialised to 0) in G and D, SN in both nets,
           hinge loss, TTUR (lr_G = 1e-4, lr_D = 4e-4, β = (0, 0.9))
BigGAN     :class:`ConditionalBatchNorm` fed by a shared class embedding ⊕ a chunk of the
           split z per block; projection discriminator; :func:`orthogonal_penalty`;
           :func:`truncated_normal` at sampling
SELF-MOD   :class:`SelfModulatedBatchNorm`: BN without affine, γ(z), β(z) from a small MLP of
           z per layer, γ's output bias initialised at 1 (γ(z) = 1 + …)
=========  ===================================================================================

The norm in the generator is a *factory* ``norm(num_features, cond_dim) -> module`` whose
module maps ``(h, c) -> h'`` for a conditioning vector c (z, a chunk of z, a class embedding,
or their concatenation; plain BN ignores it). :data:`RECIPES` holds each paper's choices
(architecture, loss, learning rates) and :func:`make_trainer` turns one into a
:class:`GANTrainer`, which meets :class:`~kexue.generative.base.Trainer`.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    Radford, Metz & Chintala, "Unsupervised Representation Learning with DCGANs", 2016.
    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018.
    Zhang et al., "Self-Attention Generative Adversarial Networks", 2019.
    Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity Natural Image
    Synthesis", 2019 (BigGAN).
    Chen et al., "On Self Modulation for Generative Adversarial Networks", 2019 (SELF-MOD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kexue.dynamics.games import gradient_penalty, r1_penalty, r2_penalty
from kexue.generative.data import ImageData
from kexue.train import EMA, ema_warmup

__all__ = [
    "LOSSES",
    "RECIPES",
    "NormFactory",
    "BatchNorm",
    "ConditionalBatchNorm",
    "DCGANDown",
    "DCGANUp",
    "Discriminator",
    "GANLoss",
    "GANRecipe",
    "GANTrainer",
    "Generator",
    "ResDown",
    "ResUp",
    "SelfAttention",
    "SelfModulatedBatchNorm",
    "SpectralNorm",
    "add_spectral_norm",
    "init_weights",
    "make_trainer",
    "orthogonal_penalty",
    "spectral_norm",
    "truncated_normal",
]

NormFactory = Callable[[int, int], nn.Module]
ImageShape = tuple[int, int, int]


# -- spectral normalisation ------------------------------------------------------------------


class SpectralNorm(nn.Module):
    """Parametrisation W ↦ W / σ(W), σ the largest singular value of W as an (out, −1) matrix.

    σ is estimated by power iteration on the matrix W_mat = W reshaped to ``(W.shape[dim], −1)``
    with a persistent unit vector u (a buffer, so it is checkpointed and carried across steps):

        v ← Wᵀu / ‖Wᵀu‖,   u ← W v / ‖W v‖,   σ = uᵀ W v.

    One iteration runs per forward in training mode; in eval mode u and v are used as they are.
    u and v are constants for autograd (Miyato et al.'s gradient), so ∂/∂W flows through
    W / σ(W) with σ = uᵀWv.

    Args:
        weight: The weight to be normalised (its shape fixes the sizes of u and v).
        dim: The dimension of the weight that indexes output units (0 for conv/linear, 1 for
            transposed convolutions).
        eps: Floor of the norms in the normalisations and of σ.
        generator: Draws the initial u and v.

    References:
        https://kexue.fm/archives/6549
        Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018.
    """

    def __init__(self, weight: Tensor, *, dim: int = 0, eps: float = 1e-12,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(f"weight must have at least 2 dimensions, got shape "
                             f"{tuple(weight.shape)}")
        if not -weight.ndim <= dim < weight.ndim:
            raise ValueError(f"dim must index a dimension of the {weight.ndim}-D weight, got {dim}")
        self.dim = dim % weight.ndim
        self.eps = eps
        rows = weight.shape[self.dim]
        cols = weight.numel() // rows
        u = torch.randn(rows, generator=generator, dtype=weight.dtype)
        v = torch.randn(cols, generator=generator, dtype=weight.dtype)
        self.register_buffer("u", F.normalize(u, dim=0, eps=eps).to(weight.device))
        self.register_buffer("v", F.normalize(v, dim=0, eps=eps).to(weight.device))

    def matrix(self, weight: Tensor) -> Tensor:
        """W as the (out, −1) matrix whose spectral norm is taken."""
        if self.dim != 0:
            weight = weight.movedim(self.dim, 0)
        return weight.reshape(weight.shape[0], -1)  # (out, in·k·k)

    def sigma(self, weight: Tensor) -> Tensor:
        """σ = uᵀ W v; one power iteration first (updating u and v in place) in training."""
        w = self.matrix(weight)
        if self.training:
            with torch.no_grad():
                v = F.normalize(w.T @ self.u, dim=0, eps=self.eps)
                u = F.normalize(w @ v, dim=0, eps=self.eps)
                self.u.copy_(u)
                self.v.copy_(v)
        # Clones: a later forward updates the buffers in place while this graph still needs them.
        u = F.normalize(self.u, dim=0, eps=self.eps).clone()
        v = F.normalize(self.v, dim=0, eps=self.eps).clone()
        return torch.dot(u, w @ v).clamp_min(self.eps)

    def forward(self, weight: Tensor) -> Tensor:
        return weight / self.sigma(weight)


def spectral_norm(module: nn.Module, name: str = "weight", *, dim: int | None = None,
                  eps: float = 1e-12, generator: torch.Generator | None = None) -> nn.Module:
    """Register :class:`SpectralNorm` on ``module.<name>`` (in place) and return the module.

    Args:
        module: A layer with a weight of at least 2 dimensions.
        name: The weight's attribute name.
        dim: Output dimension of the weight; default 1 for transposed convolutions, else 0.
        eps: See :class:`SpectralNorm`.
        generator: Draws the initial power-iteration vectors.

    Raises:
        ValueError: If ``module`` has no tensor ``name`` or it has fewer than 2 dimensions.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"module {type(module).__name__} has no tensor named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
    parametrize.register_parametrization(
        module, name, SpectralNorm(weight.detach(), dim=dim, eps=eps, generator=generator))
    return module


_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _main_path_layers(model: nn.Module) -> list[nn.Module]:
    """Conv/linear layers of ``model`` outside norm layers (their modulation MLPs stay raw)."""
    found: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if isinstance(m, _NormBase):
            return
        if isinstance(m, _LAYERS):
            found.append(m)
        for child in m.children():
            visit(child)

    visit(model)
    return found


def add_spectral_norm(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Spectrally normalise every conv and linear weight of ``model`` (in place; returns it).

    Layers inside the norm layers (the modulation MLPs of conditional and self-modulated BN,
    whose last layer starts at zero, where σ = 0) are left unnormalised.

    References:
        https://kexue.fm/archives/6549
    """
    for layer in _main_path_layers(model):
        if not parametrize.is_parametrized(layer, "weight"):
            spectral_norm(layer, generator=generator)
    return model


def _raw_weight(layer: nn.Module) -> Tensor:
    """The trained tensor behind ``layer.weight`` (the original under a parametrisation)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def init_weights(model: nn.Module, scheme: str = "normal",
                 generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every parameter and buffer of ``model`` in place; randomness from ``generator``.

    Conv/linear/embedding weights follow ``scheme``: ``"normal"`` N(0, 0.02²) (DCGAN),
    ``"xavier"`` Xavier-uniform (SNGAN, SAGAN), ``"orthogonal"`` (BigGAN); biases are 0. The
    output layers of modulation MLPs get their bias back (1 for a gain, 0 for a shift) and,
    when marked ``_zero_init``, a zero weight; BN layers are reset (γ = 1, β = 0, fresh
    statistics); attention gains are 0. Because every tensor is written, the networks can be
    built on the meta device and materialised with ``to_empty`` first, so that building them
    draws nothing from the global RNG (what :func:`make_trainer` does).

    Raises:
        ValueError: For an unknown scheme.
        TypeError: For a module with parameters of a kind this function does not know.
    """
    inits = {
        "normal": lambda w: nn.init.normal_(w, 0.0, 0.02, generator=generator),
        "xavier": lambda w: nn.init.xavier_uniform_(w, generator=generator),
        "orthogonal": lambda w: nn.init.orthogonal_(w, generator=generator),
    }
    if scheme not in inits:
        raise ValueError(f"scheme must be one of {sorted(inits)}, got {scheme!r}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _LAYERS):
                w = _raw_weight(m)
                if getattr(m, "_zero_init", False):
                    w.zero_()
                else:
                    inits[scheme](w)
                if m.bias is not None:
                    m.bias.fill_(getattr(m, "_bias_init", 0.0))
            elif isinstance(m, nn.Embedding):
                inits[scheme](m.weight)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
            elif isinstance(m, SelfAttention):
                m.gamma.zero_()
            elif any(True for _ in m.parameters(recurse=False)) \
                    and not parametrize.is_parametrized(m):
                raise TypeError(f"init_weights does not know how to initialise "
                                f"{type(m).__name__}")
    return model


def orthogonal_penalty(model: nn.Module, beta: float) -> Tensor:
    """BigGAN's orthogonal regularisation β Σ_W ‖WᵀW ⊙ (1 − I)‖²_F.

    W runs over the conv/linear weights of ``model`` outside norm layers, each as a matrix whose
    columns are the filters (the raw weight under spectral norm), so only the cosines between
    filters are penalised, not their norms.

    Args:
        model: Usually the generator.
        beta: Weight β ≥ 0 (BigGAN: 1e-4).

    Returns:
        A scalar with a graph to the weights.

    Raises:
        ValueError: If β < 0 or the model has no conv/linear layer.

    References:
        https://kexue.fm/archives/6549
        Brock, Donahue & Simonyan, 2019, Sec. 3.1.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    layers = _main_path_layers(model)
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no conv or linear layer")
    total = None
    for layer in layers:
        w = _raw_weight(layer)
        if isinstance(layer, nn.ConvTranspose2d):
            w = w.movedim(1, 0)
        w = w.reshape(w.shape[0], -1).T  # (fan_in, filters): the filters are the columns
        gram = w.T @ w  # (filters, filters)
        off = gram - torch.diag(torch.diagonal(gram))
        term = off.pow(2).sum()
        total = term if total is None else total + term
    return beta * total


def truncated_normal(shape: tuple[int, ...], threshold: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """The truncation trick: z ∼ N(0, I) with every entry |z_i| > threshold resampled.

    Entries are redrawn until all lie in [−threshold, threshold], so each is a standard normal
    conditioned on |z_i| ≤ threshold.

    Args:
        shape: Output shape.
        threshold: Truncation threshold > 0 (BigGAN trades diversity for fidelity below ~2).
        generator: Source of randomness.

    Raises:
        ValueError: If ``threshold`` is not a positive finite number.

    References:
        https://kexue.fm/archives/6549
        Brock, Donahue & Simonyan, 2019, Sec. 3.1.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 < threshold < math.inf:
        raise ValueError(f"threshold must be a positive finite number, got {threshold!r}")
    z = torch.randn(shape, generator=generator)
    out = z.abs() > threshold
    while out.any():
        z[out] = torch.randn(int(out.sum()), generator=generator)
        out = z.abs() > threshold
    return z


# -- normalisation layers: (h, c) -> h' ------------------------------------------------------


class _NormBase(nn.Module):
    """Marker base of the generator's norm layers (their inner layers are not SN'd)."""


class BatchNorm(_NormBase):
    """Plain BatchNorm2d with its own affine γ, β; the conditioning ``c`` is ignored.

    Args:
        num_features: Channels C.
        cond_dim: Unused (kept for the norm-factory contract).
    """

    def __init__(self, num_features: int, cond_dim: int = 0) -> None:
        super().__init__()
        del cond_dim
        self.bn = nn.BatchNorm2d(num_features)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        return self.bn(h)


class ConditionalBatchNorm(_NormBase):
    """BigGAN's conditional BN: per-sample γ, β as linear maps of a conditioning vector.

        h' = (1 + W_γ c) ⊙ (h − μ_B) / √(σ²_B + ε) + W_β c,

    μ_B, σ²_B the batch statistics per channel (BN without its own affine). With c the shared
    class embedding e(y) (⊕ a chunk of z), this is class-conditional BN with per-class gains and
    biases tied through e.

    Args:
        num_features: Channels C.
        cond_dim: Size of c.

    References:
        https://kexue.fm/archives/6549
        Brock, Donahue & Simonyan, 2019, Sec. 3 and Appendix B.
    """

    def __init__(self, num_features: int, cond_dim: int) -> None:
        super().__init__()
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1 for conditional BN, got {cond_dim}")
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Linear(cond_dim, num_features, bias=False)
        self.shift = nn.Linear(cond_dim, num_features, bias=False)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            raise ValueError("ConditionalBatchNorm needs a conditioning vector c, got None")
        gamma = 1 + self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.shift(c)[:, :, None, None]  # (B, C, 1, 1)
        return gamma * self.bn(h) + beta


class SelfModulatedBatchNorm(_NormBase):
    """SELF-MOD: BN without its own affine, modulated by a small MLP of z.

        h' = γ(z) ⊙ (h − μ_B) / √(σ²_B + ε) + β(z),
        γ(z) = A_γ ReLU(W_γ z + b_γ) + a_γ,   β(z) = A_β ReLU(W_β z + b_β) + a_β,

    with a_γ initialised at 1 and a_β at 0. With ``zero_init`` the output matrices A start at
    zero, so at initialisation γ ≡ 1, β ≡ 0 and the layer is exactly plain BN.

    Args:
        num_features: Channels C.
        cond_dim: Size of z (or of whatever conditioning vector is passed).
        hidden: Width of the MLP's hidden layer (the paper: 32).
        zero_init: Start the MLPs' output layers at zero weight.

    References:
        https://kexue.fm/archives/6549
        Chen et al., "On Self Modulation for Generative Adversarial Networks", 2019.
    """

    def __init__(self, num_features: int, cond_dim: int, hidden: int = 32,
                 zero_init: bool = True) -> None:
        super().__init__()
        if cond_dim < 1 or hidden < 1:
            raise ValueError(f"cond_dim and hidden must be >= 1, got {cond_dim} and {hidden}")
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_features))
        self.shift = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, num_features))
        with torch.no_grad():
            for mlp, bias in ((self.gain, 1.0), (self.shift, 0.0)):
                mlp[2].bias.fill_(bias)
                mlp[2]._bias_init = bias  # kept by init_weights
                if zero_init:
                    mlp[2].weight.zero_()
                    mlp[2]._zero_init = True

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            raise ValueError("SelfModulatedBatchNorm needs the latent z as c, got None")
        gamma = self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.shift(c)[:, :, None, None]  # (B, C, 1, 1)
        return gamma * self.bn(h) + beta


# -- blocks ------------------------------------------------------------------------------------


class DCGANUp(nn.Module):
    """norm(h, c) → ReLU → 4×4 transposed conv, stride 2: (B, C_in, s, s) → (B, C_out, 2s, 2s)."""

    def __init__(self, in_ch: int, out_ch: int, norm: NormFactory, cond_dim: int) -> None:
        super().__init__()
        self.norm = norm(in_ch, cond_dim)
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        return self.conv(F.relu(self.norm(h, c)))


class ResUp(nn.Module):
    """Residual up-block: x↑ W_s + conv(ReLU(norm(conv(ReLU(norm(x)))↑)), nearest upsampling."""

    def __init__(self, in_ch: int, out_ch: int, norm: NormFactory, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = norm(in_ch, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch, cond_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        r = F.interpolate(F.relu(self.norm1(h, c)), scale_factor=2, mode="nearest")
        r = self.conv2(F.relu(self.norm2(self.conv1(r), c)))
        return self.skip(F.interpolate(h, scale_factor=2, mode="nearest")) + r


class DCGANDown(nn.Module):
    """4×4 conv, stride 2 → [norm] → LeakyReLU(0.2): (B, C_in, s, s) → (B, C_out, s/2, s/2).

    DCGAN normalises every discriminator layer but the first (the one that sees the image).
    """

    head_activation = nn.Identity  # the block's output is already activated

    def __init__(self, in_ch: int, out_ch: int, first: bool = False,
                 norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.norm = norm(out_ch) if norm is not None and not first else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return F.leaky_relu(self.norm(self.conv(h)), 0.2)


class ResDown(nn.Module):
    """Residual down-block: pool(x W_s) + pool(conv(ReLU(conv(ReLU(x))))), 2×2 average pooling.

    The first block of a discriminator skips the leading ReLU (it sees the image itself). A
    ``norm`` factory, if given, goes before each ReLU of the residual branch.
    """

    head_activation = nn.ReLU  # pre-activation blocks leave their output unactivated

    def __init__(self, in_ch: int, out_ch: int, first: bool = False,
                 norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.first = first
        self.norm1 = norm(in_ch) if norm is not None and not first else nn.Identity()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch) if norm is not None else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, h: Tensor) -> Tensor:
        r = h if self.first else F.relu(self.norm1(h))
        r = self.conv2(F.relu(self.norm2(self.conv1(r))))
        return F.avg_pool2d(self.skip(h), 2) + F.avg_pool2d(r, 2)


class SelfAttention(nn.Module):
    """SAGAN's self-attention over positions, added back with a gain γ that starts at 0.

        f = W_f h, g = W_g h (C/8 channels), v = W_h h;   A = softmax_j(f_iᵀ g_j),
        o_i = W_o Σ_j A_ij v_j,                            y = h + γ o,   γ₀ = 0,

    so the block is the identity at initialisation and the network learns how much non-local
    evidence to use.

    Args:
        channels: C of the feature map.

    References:
        https://kexue.fm/archives/6549
        Zhang et al., "Self-Attention Generative Adversarial Networks", 2019.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        key = max(1, channels // 8)
        self.f = nn.Conv2d(channels, key, 1, bias=False)
        self.g = nn.Conv2d(channels, key, 1, bias=False)
        self.h = nn.Conv2d(channels, channels, 1, bias=False)
        self.o = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        b, ch, hh, ww = h.shape
        f = self.f(h).flatten(2)  # (B, K, N), N = H·W
        g = self.g(h).flatten(2)  # (B, K, N)
        v = self.h(h).flatten(2)  # (B, C, N)
        attn = torch.softmax(f.transpose(1, 2) @ g, dim=-1)  # (B, N_i, N_j)
        o = (v @ attn.transpose(1, 2)).reshape(b, ch, hh, ww)  # (B, C, N_i) -> (B, C, H, W)
        return h + self.gamma * self.o(o)


# -- networks ----------------------------------------------------------------------------------


def _check_shape(image_shape: ImageShape, stages: int) -> tuple[int, int, int]:
    """(channels, size, base) for square images of side size = base · 2^stages, base ≥ 2."""
    if len(image_shape) != 3 or image_shape[1] != image_shape[2] or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with H == W, got {tuple(image_shape)}")
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    c, size, _ = image_shape
    scale = 2 ** stages
    if size % scale or size // scale < 2:
        raise ValueError(
            f"image size {size}×{size} is not supported with stages={stages}: the side must be "
            f"base·2^stages with an integer base >= 2, i.e. a multiple of {scale} that is at "
            f"least {2 * scale} (e.g. 8 or 28 with stages=2)")
    return c, size, size // scale


class Generator(nn.Module):
    """z (and a class y) → image in [−1, 1]: stem, ``stages`` up-blocks, norm-ReLU-conv-tanh.

    Channels halve per stage: 2^stages·width at the base resolution down to ``width``.
    Conditioning vector of block i: ``c_i = z_i ⊕ e(y)``, where z_i is z itself, or with
    ``split_latent`` the i-th of ``stages + 1`` chunks of z, equal up to one (chunk 0 feeds
    the stem, the last block's chunk also feeds the head's norm), and e the shared class
    embedding (only if ``num_classes`` > 0).

    Args:
        image_shape: (C, H, W) of the images, H == W == base·2^stages, base ≥ 2.
        z_dim: Size of z.
        width: Channels of the last stage.
        stages: Number of up-blocks (resolution doublings).
        block: Up-block class ``(in_ch, out_ch, norm, cond_dim)`` (:class:`DCGANUp`,
            :class:`ResUp`).
        norm: Norm factory ``(num_features, cond_dim)`` (:class:`BatchNorm`,
            :class:`ConditionalBatchNorm`, :class:`SelfModulatedBatchNorm`).
        attention: Resolution after which a :class:`SelfAttention` block is inserted, or None.
        num_classes: > 0 for a class-conditional generator.
        embed_dim: Size of the shared class embedding.
        split_latent: Feed z in chunks, one per block (BigGAN's hierarchical latent).

    Raises:
        ValueError: For an unsupported image size, an attention resolution the network does not
            have, or a z_dim too small to split into ``stages + 1`` chunks.
    """

    def __init__(self, image_shape: ImageShape, *, z_dim: int = 64, width: int = 32,
                 stages: int = 2, block: type[nn.Module] = DCGANUp,
                 norm: NormFactory = BatchNorm, attention: int | None = None,
                 num_classes: int = 0, embed_dim: int = 16, split_latent: bool = False) -> None:
        super().__init__()
        channels, size, base = _check_shape(image_shape, stages)
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        if split_latent and z_dim < stages + 1:
            raise ValueError(f"z_dim={z_dim} must be >= stages + 1 = {stages + 1} to split the "
                             f"latent into one chunk per block")
        resolutions = [base * 2 ** i for i in range(stages + 1)]
        if attention is not None and attention not in resolutions:
            raise ValueError(f"attention must be one of the resolutions {resolutions}, "
                             f"got {attention}")
        self.image_shape = (channels, size, size)
        self.z_dim, self.num_classes, self.split_latent = z_dim, num_classes, split_latent
        self.base, self.stages = base, stages
        k = stages + 1
        # chunk sizes differ by at most one: z_dim = 32, 3 chunks -> 11, 11, 10
        self.chunks = ([z_dim // k + (i < z_dim % k) for i in range(k)] if split_latent
                       else [z_dim] * k)
        cond = [c + (embed_dim if num_classes else 0) for c in self.chunks]
        chs = [width * 2 ** (stages - i) for i in range(stages + 1)]
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.stem = nn.Linear(self.chunks[0], chs[0] * base * base)
        self.blocks = nn.ModuleList(block(chs[i], chs[i + 1], norm, cond[i + 1])
                                    for i in range(stages))
        self.attention = nn.ModuleDict(
            {str(r): SelfAttention(chs[i]) for i, r in enumerate(resolutions) if r == attention})
        self.head_norm = norm(chs[-1], cond[-1])
        self.head = nn.Conv2d(chs[-1], channels, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, z_dim) latents (and (B,) labels) → (B, C, H, W) images in [−1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        if self.num_classes and y is None:
            raise ValueError("this generator is class-conditional: pass labels y")
        chunks = z.split(self.chunks, dim=1) if self.split_latent else (z,) * (self.stages + 1)
        extra = [self.embed(y)] if self.embed is not None else []
        conds = [torch.cat([zi, *extra], dim=1) for zi in chunks]  # (B, cond_dim) each
        h = self.stem(chunks[0]).reshape(len(z), -1, self.base, self.base)  # (B, C0, s, s)
        h = self._attend(h)
        for block, c in zip(self.blocks, conds[1:], strict=True):
            h = self._attend(block(h, c))
        h = F.relu(self.head_norm(h, conds[-1]))
        return torch.tanh(self.head(h))

    def _attend(self, h: Tensor) -> Tensor:
        key = str(h.shape[-1])
        return self.attention[key](h) if key in self.attention else h


class Discriminator(nn.Module):
    """Image (and class y) → one score per image: ``stages`` down-blocks then a linear head.

    Channels double per stage from ``width``. With ``num_classes`` > 0 the head adds the
    projection term ⟨e(y), Σ_{positions} h⟩ (Miyato & Koyama's projection discriminator, used by
    SAGAN and BigGAN).

    Args:
        image_shape: (C, H, W), H == W == base·2^stages, base ≥ 2.
        width: Channels of the first block.
        stages: Number of down-blocks.
        block: Down-block class ``(in_ch, out_ch, first, norm)`` (:class:`DCGANDown`,
            :class:`ResDown`).
        norm: Norm factory ``(num_features) -> module`` inside the blocks (DCGAN:
            ``nn.BatchNorm2d``), or None (SNGAN, SAGAN, BigGAN, and any D under a gradient
            penalty).
        attention: Resolution after which a :class:`SelfAttention` block is inserted, or None.
        num_classes: > 0 for a projection discriminator.

    Raises:
        ValueError: For an unsupported image size or attention resolution.
    """

    def __init__(self, image_shape: ImageShape, *, width: int = 32, stages: int = 2,
                 block: type[nn.Module] = DCGANDown,
                 norm: Callable[[int], nn.Module] | None = None, attention: int | None = None,
                 num_classes: int = 0) -> None:
        super().__init__()
        channels, size, base = _check_shape(image_shape, stages)
        resolutions = [size // 2 ** i for i in range(stages + 1)]
        if attention is not None and attention not in resolutions:
            raise ValueError(f"attention must be one of the resolutions {resolutions}, "
                             f"got {attention}")
        self.image_shape = (channels, size, size)
        self.num_classes = num_classes
        chs = [channels] + [width * 2 ** i for i in range(stages)]
        self.blocks = nn.ModuleList(block(chs[i], chs[i + 1], first=i == 0, norm=norm)
                                    for i in range(stages))
        self.attention = nn.ModuleDict(
            {str(r): SelfAttention(chs[i]) for i, r in enumerate(resolutions) if r == attention})
        self.act = block.head_activation()
        self.linear = nn.Linear(chs[-1] * base * base, 1)
        self.embed = nn.Embedding(num_classes, chs[-1]) if num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W) images (and (B,) labels) → (B,) scores."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        h = self._attend(x)
        for block in self.blocks:
            h = self._attend(block(h))
        h = self.act(h)
        out = self.linear(h.flatten(1)).squeeze(1)  # (B,)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass labels y")
            out = out + (self.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)
        return out

    def _attend(self, h: Tensor) -> Tensor:
        key = str(h.shape[-1])
        return self.attention[key](h) if key in self.attention else h


# -- losses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GANLoss:
    """A GAN loss as two functions of discriminator scores, and its default gradient penalty.

    Attributes:
        d: ``d(real_scores, fake_scores) -> scalar`` minimised by D.
        g: ``g(fake_scores) -> scalar`` minimised by G.
        gp: Default weight of the one-centred gradient penalty (WGAN-GP: 10), else 0.
    """

    d: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor], Tensor]
    gp: float = 0.0


LOSSES: dict[str, GANLoss] = {
    # non-saturating: L_D = E softplus(−D(x)) + E softplus(D(G(z))), L_G = E softplus(−D(G(z)))
    "ns": GANLoss(lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
                  lambda f: F.softplus(-f).mean()),
    # hinge: L_D = E relu(1 − D(x)) + E relu(1 + D(G(z))), L_G = −E D(G(z))
    "hinge": GANLoss(lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(),
                     lambda f: -f.mean()),
    # Wasserstein with the gradient penalty γ E (‖∇D(x̂)‖ − 1)², γ = 10
    "wgan-gp": GANLoss(lambda r, f: f.mean() - r.mean(), lambda f: -f.mean(), gp=10.0),
}


# -- the trainer -------------------------------------------------------------------------------


def _check_positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value) \
        and (value >= 0 if zero else value > 0)
    if not ok:
        rule = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be {'an int' if integer else 'a number'} {rule}, "
                         f"got {value!r}")


class GANTrainer:
    """Alternating GAN training with EMA of G, meeting :class:`~kexue.generative.base.Trainer`.

    Per batch of real images x (scaled to [−1, 1]) and z ∼ N(0, I) from the trainer's own
    generator: one D step on L_D + penalties (the GP, R1 on real, R2 on fake), then, every
    ``n_critic`` batches, one G step on L_G (+ the orthogonal penalty) on the same fake batch,
    scored by the updated D, and an EMA update of G.
    Conditional models draw fake labels uniformly. Separate learning rates give TTUR.

    :meth:`sample` generates from the EMA weights after re-estimating G's BN statistics for them
    ("standing statistics": the running averages were gathered with the raw weights).

    Args:
        data: Training images (``train_x``, ``train_y``).
        generator: ``G(z, y) -> (B, C, H, W)`` in [−1, 1] with attributes ``z_dim`` and
            ``num_classes``.
        discriminator: ``D(x, y) -> (B,)``.
        epochs: Planned epochs.
        batch_size: Images per batch (the last incomplete batch is dropped).
        loss: A key of :data:`LOSSES`.
        lr_g, lr_d: Adam learning rates (TTUR when they differ).
        betas: Adam's (β₁, β₂).
        n_critic: D steps per G step.
        gp: Gradient-penalty weight; None takes the loss's default.
        r1, r2: Weights γ of the R1 / R2 penalties.
        ortho: Weight β of the orthogonal penalty on G.
        ema_decay: Final decay of the EMA of G (warmed up with :func:`~kexue.train.ema_warmup`).
        truncation: Threshold of the truncation trick in :meth:`sample`, or None.
        seed: Seed of the trainer's generator (batches, z, labels, GP interpolation).

    Raises:
        ValueError: For empty data, images G cannot produce, an unknown loss or bad numbers.

    References:
        https://kexue.fm/archives/6549, https://kexue.fm/archives/6583 (R1, TTUR)
    """

    def __init__(self, data: ImageData, generator: nn.Module, discriminator: nn.Module, *,
                 epochs: int, batch_size: int = 64, loss: str = "ns", lr_g: float = 2e-4,
                 lr_d: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 n_critic: int = 1, gp: float | None = None, r1: float = 0.0, r2: float = 0.0,
                 ortho: float = 0.0, ema_decay: float = 0.999, truncation: float | None = None,
                 seed: int = 0) -> None:
        if len(data.train_x) == 0:
            raise ValueError(f"data {data.name!r} has no training images")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        _check_positive("epochs", epochs, integer=True)
        _check_positive("batch_size", batch_size, integer=True)
        _check_positive("n_critic", n_critic, integer=True)
        if batch_size > len(data.train_x):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(data.train_x)} "
                             f"training images")
        for name, value in (("lr_g", lr_g), ("lr_d", lr_d)):
            _check_positive(name, value)
        for name, value in (("r1", r1), ("r2", r2), ("ortho", ortho)):
            _check_positive(name, value, zero=True)
        if gp is not None:
            _check_positive("gp", gp, zero=True)
        if truncation is not None:
            _check_positive("truncation", truncation)
        if tuple(getattr(generator, "image_shape", data.shape)) != data.shape:
            raise ValueError(f"generator makes images of shape {generator.image_shape}, but "
                             f"data {data.name!r} has {data.shape}")
        self.data, self.G, self.D = data, generator, discriminator
        self.epochs, self.epoch, self.batch_size = epochs, 0, batch_size
        self.loss_name, self.loss = loss, LOSSES[loss]
        self.gp = self.loss.gp if gp is None else gp
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                         for m in discriminator.modules())
        if batch_norm and max(self.gp, r1, r2) > 0:
            # the penalties take ∇_x Σ_b D(x_b), which is the per-sample gradient only when
            # the samples of a batch do not interact, as they do through BatchNorm
            raise ValueError(f"gradient penalties (gp={self.gp}, r1={r1}, r2={r2}) need a "
                             "discriminator without BatchNorm (e.g. the sngan or sagan recipe)")
        self.r1, self.r2, self.ortho, self.n_critic = r1, r2, ortho, n_critic
        self.truncation, self.seed = truncation, seed
        self.z_dim = int(generator.z_dim)
        self.num_classes = int(getattr(generator, "num_classes", 0))
        # fused: one kernel per step instead of a loop over the many small tensors of a GAN
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=betas, fused=True)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=betas,
                                      fused=True)
        self.ema = EMA(generator, decay=ema_warmup(ema_decay))
        self.rng = torch.Generator().manual_seed(seed)
        self.step = 0
        self._x = data.train_x * 2 - 1  # (N, C, H, W) in [−1, 1]
        self._y = data.train_y

    def _z(self, n: int) -> tuple[Tensor, Tensor | None]:
        z = torch.randn(n, self.z_dim, generator=self.rng)
        y = (torch.randint(self.num_classes, (n,), generator=self.rng)
             if self.num_classes else None)
        return z, y

    def _d(self, x: Tensor, y: Tensor | None) -> Tensor:
        return self.D(x, y) if self.num_classes else self.D(x)

    def _g(self, z: Tensor, y: Tensor | None) -> Tensor:
        return self.G(z, y) if self.num_classes else self.G(z)

    def train_step(self, x: Tensor, y: Tensor | None) -> dict[str, float]:
        """One D step on the batch (x in [−1, 1]) and, every ``n_critic`` steps, one G step.

        The fake batch of a step serves both players: D trains on it detached, then G on D's
        updated scores of it (one G forward per step).
        """
        self.G.train()
        self.D.train()
        y = y if self.num_classes else None
        self.step += 1
        g_turn = self.step % self.n_critic == 0
        z, y_fake = self._z(len(x))
        with torch.set_grad_enabled(g_turn):
            fake = self._g(z, y_fake)
        fake_d = fake.detach()
        # Real and fake in separate forwards, so a D with BN normalises each batch on its own.
        loss_d = self.loss.d(self._d(x, y), self._d(fake_d, y_fake))
        if self.gp:
            loss_d = loss_d + gradient_penalty(lambda t: self._d(t, y), x, fake_d, self.gp,
                                               generator=self.rng)
        if self.r1:
            loss_d = loss_d + r1_penalty(lambda t: self._d(t, y), x, self.r1)
        if self.r2:
            loss_d = loss_d + r2_penalty(lambda t: self._d(t, y_fake), fake_d, self.r2)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        out = {"loss_d": loss_d.item()}
        if g_turn:
            loss_g = self.loss.g(self._d(fake, y_fake))
            if self.ortho:
                loss_g = loss_g + orthogonal_penalty(self.G, self.ortho)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self.ema.update()
            out["loss_g"] = loss_g.item()
        return out

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch over shuffled full batches; returns the mean of each loss."""
        order = torch.randperm(len(self._x), generator=self.rng)
        batches = order[: len(order) // self.batch_size * self.batch_size].split(self.batch_size)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i, idx in enumerate(batches):
            for k, v in self.train_step(self._x[idx], self._y[idx]).items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if on_batch is not None:
                on_batch(i + 1, len(batches))
        self.epoch += 1
        return {k: sums[k] / counts[k] for k in sums}

    def _latents(self, n: int, generator: torch.Generator,
                 balanced: bool) -> tuple[Tensor, Tensor | None]:
        if self.truncation is None:
            z = torch.randn(n, self.z_dim, generator=generator)
        else:
            z = truncated_normal((n, self.z_dim), self.truncation, generator)
        if not self.num_classes:
            return z, None
        if balanced:
            return z, torch.arange(n) % self.num_classes
        return z, torch.randint(self.num_classes, (n,), generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               stat_batches: int = 8, stat_batch_size: int = 256) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] from the EMA of G.

        BN statistics are re-estimated for the EMA weights from ``stat_batches`` batches of
        fresh latents (BigGAN's standing statistics); the training weights and statistics are
        untouched. Conditional generators get labels 0, 1, …, K−1, 0, … in turn.

        Args:
            n: Number of images, >= 0.
            generator: Source of the latents; None uses a generator seeded with the trainer's
                seed, so repeated calls return the same images (the training RNG is not used).
            stat_batches, stat_batch_size: The batches used for the BN statistics.
        """
        _check_positive("n", n, integer=True, zero=True)
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed + 1)
        was_training = self.G.training
        norms = [m for m in self.G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        try:
            with self.ema.swapped():  # buffers inside are copies: the updates below are dropped
                if norms:
                    self.G.train()
                    for m in norms:
                        m.reset_running_stats()
                        m.momentum = None  # cumulative average over the batches
                    for _ in range(stat_batches):
                        self._g(*self._latents(stat_batch_size, generator, balanced=False))
                self.G.eval()
                z, y = self._latents(n, generator, balanced=True)
                out = (self._g(z, y) + 1) / 2 if n else torch.empty(0, *self.data.shape)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.G.train(was_training)
        return out.clamp(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser states, EMA, RNG state and counters: all that resuming needs."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": self.rng.get_state(),
            "seed": self.seed,  # seeds the default sampling generator
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; training then continues bit for bit."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.rng.set_state(state["rng"])
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])


# -- the papers' recipes -----------------------------------------------------------------------


@dataclass(frozen=True)
class GANRecipe:
    """One paper's choices: networks and their init, loss and optimiser settings.

    Attributes:
        generator: Keyword arguments of :class:`Generator` (besides ``image_shape``).
        discriminator: Keyword arguments of :class:`Discriminator`.
        spectral_g, spectral_d: Spectrally normalise G / D.
        init: :func:`init_weights` scheme.
        trainer: Keyword arguments of :class:`GANTrainer` (loss, lrs, betas, …).
        conditional: Uses class labels.
    """

    generator: dict[str, Any] = field(default_factory=dict)
    discriminator: dict[str, Any] = field(default_factory=dict)
    spectral_g: bool = False
    spectral_d: bool = False
    init: str = "normal"
    trainer: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False


_DCGAN_OPT = {"loss": "ns", "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999)}
_SAGAN_OPT = {"loss": "hinge", "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.9)}

RECIPES: dict[str, GANRecipe] = {
    # Radford et al.: transposed convs, BN in G and in D (not on D's input), N(0, 0.02²), NS loss
    "dcgan": GANRecipe(discriminator={"norm": nn.BatchNorm2d}, trainer=_DCGAN_OPT),
    # Chen et al.: the DCGAN with G's BN affine replaced by γ(z), β(z); D unchanged
    "selfmod": GANRecipe(generator={"norm": SelfModulatedBatchNorm},
                         discriminator={"norm": nn.BatchNorm2d}, trainer=_DCGAN_OPT),
    # Gulrajani et al.: residual nets under WGAN-GP, 5 critic steps, Adam(1e-4, β = (0, 0.9))
    "resnet": GANRecipe(generator={"block": ResUp}, discriminator={"block": ResDown},
                        init="xavier", trainer={"loss": "wgan-gp", "lr_g": 1e-4, "lr_d": 1e-4,
                                                "betas": (0.0, 0.9), "n_critic": 5}),
    # Miyato et al.: the DCGAN-style CNN with SN in D instead of BN, hinge loss, one D step.
    # Adam as in TTUR (lr_d 4e-4, lr_g 1e-4, β = (0, 0.9)): with DCGAN's Adam (β₁ = 0.5) the
    # small SN discriminator collapsed on digits in 3 of 3 seeds, with β₁ = 0 at equal rates in
    # 1 of 3, with TTUR in none (30 epochs, width 16)
    "sngan": GANRecipe(spectral_d=True, trainer=_SAGAN_OPT),
    # Zhang et al.: residual nets, self-attention at the middle resolution, SN in G and D,
    # hinge loss, TTUR
    "sagan": GANRecipe(generator={"block": ResUp, "attention": "mid"},
                       discriminator={"block": ResDown, "attention": "mid"},
                       spectral_g=True, spectral_d=True, init="xavier", trainer=_SAGAN_OPT),
    # Brock et al.: SAGAN + class-conditional BN (shared embedding ⊕ split z), projection D,
    # orthogonal init and regularisation (β = 1e-4), 2 D steps per G step, Adam(5e-5 / 2e-4)
    "biggan": GANRecipe(generator={"block": ResUp, "norm": ConditionalBatchNorm,
                                   "split_latent": True, "attention": "mid"},
                        discriminator={"block": ResDown, "attention": "mid"},
                        spectral_g=True, spectral_d=True, init="orthogonal",
                        trainer={"loss": "hinge", "lr_g": 5e-5, "lr_d": 2e-4,
                                 "betas": (0.0, 0.999), "n_critic": 2, "ortho": 1e-4},
                        conditional=True),
}


def _resolve(kwargs: dict[str, Any], shape: ImageShape) -> dict[str, Any]:
    """Replace ``attention="mid"`` by half the image side (a resolution of every network)."""
    if kwargs.get("attention") == "mid":
        kwargs = {**kwargs, "attention": shape[1] // 2}
    return kwargs


def make_trainer(recipe: str, data: ImageData, *, epochs: int, seed: int = 0,
                 z_dim: int = 32, width: int = 16, stages: int = 2, batch_size: int = 16,
                 init: str | None = None, **overrides: Any) -> GANTrainer:
    """Build G and D after ``RECIPES[recipe]`` for ``data`` and wrap them in a trainer.

    Weights and spectral-norm vectors are drawn from a generator seeded with ``seed``; the
    trainer's own generator is seeded with ``seed`` too (a separate stream).

    Args:
        recipe: A key of :data:`RECIPES`.
        data: The images; their shape fixes the networks' input/output.
        epochs: Planned epochs.
        seed: Seed of the initialisation and of training.
        z_dim, width, stages: Network size (see :class:`Generator`); the defaults are the
            sizes measured by the ``gan_digits`` experiment and ``bench_gan``.
        batch_size: Images per batch.
        init: :func:`init_weights` scheme replacing the recipe's.
        **overrides: Keyword arguments of :class:`GANTrainer` that replace the recipe's.

    Raises:
        ValueError: For an unknown recipe, an unsupported image size or bad settings.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    r = RECIPES[recipe]
    if len(data.train_x) == 0:
        raise ValueError(f"data {data.name!r} has no training images (train_x is empty)")
    shape = data.shape
    num_classes = data.num_classes if r.conditional else 0
    init_rng = torch.Generator().manual_seed(seed + 7919)  # a stream apart from training's
    g_kwargs = _resolve(r.generator, shape)
    d_kwargs = _resolve(r.discriminator, shape)
    with torch.device("meta"):  # built without drawing from the global RNG; init_weights fills
        G = Generator(shape, z_dim=z_dim, width=width, stages=stages,
                      num_classes=num_classes, **g_kwargs)
        D = Discriminator(shape, width=width, stages=stages, num_classes=num_classes,
                          **d_kwargs)
    G.to_empty(device="cpu")
    D.to_empty(device="cpu")
    init_weights(G, init or r.init, init_rng)
    init_weights(D, init or r.init, init_rng)
    if r.spectral_g:
        add_spectral_norm(G, init_rng)
    if r.spectral_d:
        add_spectral_norm(D, init_rng)
    return GANTrainer(data, G, D, epochs=epochs, seed=seed, batch_size=batch_size,
                      **{**r.trainer, **overrides})

