"""The GAN building blocks: spectral normalisation, the generator's norm layers, up/down
blocks and SAGAN's self-attention.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018.
    Zhang et al., "Self-Attention Generative Adversarial Networks", 2019.
    Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity Natural Image
    Synthesis", 2019 (BigGAN).
    Chen et al., "On Self Modulation for Generative Adversarial Networks", 2019 (SELF-MOD).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kexue._checks import check_int, check_real
from kexue.generative.common import init_children, init_module, power_iteration

__all__ = [
    "BatchNorm",
    "ConditionalBatchNorm",
    "DCGANDown",
    "DCGANUp",
    "NormFactory",
    "ResDown",
    "ResUp",
    "SelfAttention",
    "SelfModulatedBatchNorm",
    "SpectralNorm",
    "add_spectral_norm",
    "init_weights",
    "spectral_norm",
]

NormFactory = Callable[[int, int], nn.Module]


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
            transposed convolutions), an int in [−weight.ndim, weight.ndim).
        eps: Floor of the norms in the normalisations and of σ, > 0.
        generator: Draws the initial u and v.

    Raises:
        ValueError: For a weight of fewer than 2 dimensions, or ``dim`` or ``eps`` out of range.

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
        self.dim = check_int("dim", dim, low=-weight.ndim, high=weight.ndim - 1) % weight.ndim
        self.eps = check_real("eps", eps, low=0, low_open=True)
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
            u, v = power_iteration(w, self.u, eps=self.eps)
            with torch.no_grad():
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
        eps: Floor of the norms, > 0 (see :class:`SpectralNorm`).
        generator: Draws the initial power-iteration vectors.

    Raises:
        ValueError: If ``module`` has no tensor ``name``, it has fewer than 2 dimensions, or
            ``dim`` or ``eps`` is out of range (the module is then left unchanged).
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


def main_path_layers(model: nn.Module) -> list[nn.Module]:
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
    for layer in main_path_layers(model):
        if not parametrize.is_parametrized(layer, "weight"):
            spectral_norm(layer, generator=generator)
    return model


def init_weights(model: nn.Module, scheme: str = "normal",
                 generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every parameter of ``model`` in place after one of the papers' schemes.

    :func:`kexue.generative.common.init_module` with ``scheme`` (``"normal"`` N(0, 0.02²) for
    DCGAN, ``"xavier"`` for SNGAN and SAGAN, ``"orthogonal"`` for BigGAN; biases 0, BN reset);
    the layers below bring their own ``init_parameters`` hooks (modulation MLPs keep their
    output bias and start at zero weight, attention gains start at 0).

    Raises:
        ValueError: For an unknown scheme.
        TypeError: For a module with parameters of a kind the initialiser does not know.
    """
    if generator is None:  # never the global RNG: a fixed default stream
        generator = torch.Generator().manual_seed(0)
    return init_module(model, generator, scheme)


# -- normalisation layers: (h, c) -> h' ------------------------------------------------------


class _NormBase(nn.Module):
    """Marker base of the generator's norm layers (their inner layers are not SN'd)."""


class BatchNorm(_NormBase):
    """Plain BatchNorm2d with its own affine γ, β; the conditioning ``c`` is ignored.

    Args:
        num_features: Channels C, ≥ 1.
        cond_dim: Unused (kept for the norm-factory contract), ≥ 0.
    """

    def __init__(self, num_features: int, cond_dim: int = 0) -> None:
        super().__init__()
        check_int("num_features", num_features, low=1)
        check_int("cond_dim", cond_dim, low=0)
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
        check_int("num_features", num_features, low=1)
        check_int("cond_dim", cond_dim, low=1)
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
        check_int("num_features", num_features, low=1)
        check_int("cond_dim", cond_dim, low=1)
        check_int("hidden", hidden, low=1)
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_features))
        self.shift = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, num_features))
        self.zero_init = zero_init
        self._start_as_batchnorm()

    @torch.no_grad()
    def _start_as_batchnorm(self) -> None:
        for mlp, bias in ((self.gain, 1.0), (self.shift, 0.0)):
            mlp[2].bias.fill_(bias)
            if self.zero_init:
                mlp[2].weight.zero_()

    def init_parameters(self, generator: torch.Generator, scheme: str) -> None:
        """The MLPs after ``scheme``, then their output layers back at bias 1 (γ) or 0 (β) and,
        with ``zero_init``, zero weight, so that the layer starts as plain BN."""
        init_children(self, generator, scheme)
        self._start_as_batchnorm()

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            raise ValueError("SelfModulatedBatchNorm needs the latent z as c, got None")
        gamma = self.gain(c)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.shift(c)[:, :, None, None]  # (B, C, 1, 1)
        return gamma * self.bn(h) + beta


# -- blocks ------------------------------------------------------------------------------------


def _check_block(in_ch: int, out_ch: int, cond_dim: int | None = None) -> None:
    check_int("in_ch", in_ch, low=1)
    check_int("out_ch", out_ch, low=1)
    if cond_dim is not None:
        check_int("cond_dim", cond_dim, low=0)


class DCGANUp(nn.Module):
    """norm(h, c) → ReLU → 4×4 transposed conv, stride 2: (B, C_in, s, s) → (B, C_out, 2s, 2s).

    Args:
        in_ch, out_ch: Channels in and out, ≥ 1.
        norm: Norm factory ``(num_features, cond_dim) -> module``.
        cond_dim: Size of the conditioning vector c, ≥ 0 (0 when the norm ignores it).
    """

    def __init__(self, in_ch: int, out_ch: int, norm: NormFactory, cond_dim: int) -> None:
        super().__init__()
        _check_block(in_ch, out_ch, cond_dim)
        self.norm = norm(in_ch, cond_dim)
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        return self.conv(F.relu(self.norm(h, c)))


class ResUp(nn.Module):
    """Residual up-block: x↑ W_s + conv(ReLU(norm(conv(ReLU(norm(x)))↑)), nearest upsampling.

    Args:
        in_ch, out_ch: Channels in and out, ≥ 1.
        norm: Norm factory ``(num_features, cond_dim) -> module``.
        cond_dim: Size of the conditioning vector c, ≥ 0 (0 when the norm ignores it).
    """

    def __init__(self, in_ch: int, out_ch: int, norm: NormFactory, cond_dim: int) -> None:
        super().__init__()
        _check_block(in_ch, out_ch, cond_dim)
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

    Args:
        in_ch, out_ch: Channels in and out, ≥ 1.
        first: The block sees the image (no norm).
        norm: Norm factory ``(num_features) -> module``, or None.
    """

    head_activation = nn.Identity  # the block's output is already activated

    def __init__(self, in_ch: int, out_ch: int, first: bool = False,
                 norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        _check_block(in_ch, out_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.norm = norm(out_ch) if norm is not None and not first else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        return F.leaky_relu(self.norm(self.conv(h)), 0.2)


class ResDown(nn.Module):
    """Residual down-block: pool(x W_s) + pool(conv(ReLU(conv(ReLU(x))))), 2×2 average pooling.

    The first block of a discriminator skips the leading ReLU (it sees the image itself). A
    ``norm`` factory, if given, goes before each ReLU of the residual branch.

    Args:
        in_ch, out_ch: Channels in and out, ≥ 1.
        first: The block sees the image (no leading ReLU, no first norm).
        norm: Norm factory ``(num_features) -> module``, or None.
    """

    head_activation = nn.ReLU  # pre-activation blocks leave their output unactivated

    def __init__(self, in_ch: int, out_ch: int, first: bool = False,
                 norm: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        _check_block(in_ch, out_ch)
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
        check_int("channels", channels, low=1)
        key = max(1, channels // 8)
        self.f = nn.Conv2d(channels, key, 1, bias=False)
        self.g = nn.Conv2d(channels, key, 1, bias=False)
        self.h = nn.Conv2d(channels, channels, 1, bias=False)
        self.o = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator, scheme: str) -> None:
        """γ = 0 (the block starts as the identity); the 1×1 convs after ``scheme``."""
        self.gamma.zero_()
        init_children(self, generator, scheme)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        b, ch, hh, ww = h.shape
        f = self.f(h).flatten(2)  # (B, K, N), N = H·W
        g = self.g(h).flatten(2)  # (B, K, N)
        v = self.h(h).flatten(2)  # (B, C, N)
        attn = torch.softmax(f.transpose(1, 2) @ g, dim=-1)  # (B, N_i, N_j)
        o = (v @ attn.transpose(1, 2)).reshape(b, ch, hh, ww)  # (B, C, N_i) -> (B, C, H, W)
        return h + self.gamma * self.o(o)


