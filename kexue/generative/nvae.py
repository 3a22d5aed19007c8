"""NVAE: a deep hierarchical VAE with residual cells, residual normal posteriors and IW evaluation.

The latent variables come in G groups z = (z_1, …, z_G), generated top-down and inferred with a
bidirectional encoder (a bottom-up tower of features f_G, …, f_1 shared by the top-down pass);
the groups may sit on several resolutions (``scales``), the top groups on the coarsest grid:

    p(z) = ∏_i p(z_i | z_<i),   q(z | x) = ∏_i q(z_i | x, z_<i),   p(x | z) on the last state.

Prior of group i > 1 is N(μ_p, σ_p²) read from the decoder state; the top group's prior is
N(0, I). The **residual normal** posterior is expressed relative to the prior,

    q(z_i | x, z_<i) = N(μ_p + Δμ, (σ_p·Δσ)²),
    KL(q ‖ p) = ½ (Δμ²/σ_p² + Δσ² − 1 − log Δσ²)   (per dimension, :func:`residual_normal_kl`),

so the encoder only learns the correction and the KL does not depend on μ_p. The training loss is
the negative ELBO, −E_q log p(x|z) + β Σ_i γ_i KL_i, with a KL warm-up β: β_min → 1 over the first
part of training and **KL balancing** γ_i ∝ E_batch[KL_i] / α_i (α_i ∝ the group's size, mean
γ = 1) while β < 1, so no group is switched off early (:func:`kl_balance_coefficients`); plus the
**spectral regulariser** λ Σ_l σ_max(W_l), the largest singular value of every conv's weight
estimated by power iteration with persistent vectors (:class:`SpectralRegularizer`).

Cells (``s`` = residual scale, 0.1 in the paper): encoder
x + s·SE(conv(Swish(BN(conv(Swish(BN(x))))))) with 3×3 convs; decoder
x + s·SE(BN(conv1×1(Swish(BN(dwconv5×5(Swish(BN(conv1×1_expand(BN(x)))))))))).
Every conv is weight-normalised (W = g·v/‖v‖). Outputs: Bernoulli logits (binary images, trained
with dynamic binarisation) or a discretised logistic mixture over 256 bins per channel, coupled
across RGB channels as in PixelCNN++ (:func:`logistic_mixture_log_prob`). Before sampling, the
decoder's BatchNorm statistics are re-estimated from prior samples (:func:`reestimate_batchnorm`).
Evaluation is the importance-weighted bound (:meth:`NVAE.evaluate`),

    log p(x) ≥ L_K = E log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),

which increases with K towards log p(x); L_1 is the ELBO.

Shapes: B batch, C image channels, H×W image, G groups, L latent channels per group, r×r the
finest latent grid (H / 2^downsamples; scale k from the top has r / 2^(scales−1−k)), D model
channels, K mixture components.

References:
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    Salimans et al., "PixelCNN++", ICLR 2017 (discretised logistic mixture).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from kexue.generative.data import ImageData

__all__ = [
    "LIKELIHOODS",
    "NVAE",
    "NVAEConfig",
    "NVAEOutput",
    "NVAETrainer",
    "SpectralRegularizer",
    "kl_balance_coefficients",
    "log_mean_exp",
    "logistic_mixture_log_prob",
    "normal_log_prob",
    "reestimate_batchnorm",
    "residual_normal_kl",
    "sample_logistic_mixture",
]

LIKELIHOODS = ("bernoulli", "logistic_mixture")
_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Densities and divergences
# --------------------------------------------------------------------------------------------

def residual_normal_kl(delta_mu: Tensor, log_delta_sigma: Tensor, log_sigma_p: Tensor) -> Tensor:
    """KL(N(μ_p + Δμ, (σ_p Δσ)²) ‖ N(μ_p, σ_p²)) per dimension, in closed form.

        KL = ½ (Δμ²/σ_p² + Δσ² − 1 − log Δσ²)

    Args:
        delta_mu: Δμ, any shape.
        log_delta_sigma: log Δσ, broadcastable to ``delta_mu``.
        log_sigma_p: log σ_p of the prior, broadcastable to ``delta_mu``.

    Returns:
        The elementwise KL in nats (μ_p does not enter).

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, eq. (2).
    """
    return 0.5 * ((delta_mu * torch.exp(-log_sigma_p)) ** 2 + torch.exp(2 * log_delta_sigma)
                  - 1 - 2 * log_delta_sigma)


def normal_log_prob(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; μ, σ²) elementwise: −½ ((z − μ)/σ)² − log σ − ½ log 2π."""
    return -0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * _LOG_2PI


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """log (1/K) Σ_k exp(x_k) along ``dim`` (K = x.shape[dim]), computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def _log1mexp(u: Tensor) -> Tensor:
    """log(1 − e^u) for u ≤ 0, accurate near 0 and for u → −∞."""
    return torch.where(u > -math.log(2), torch.log(-torch.expm1(u)), torch.log1p(-torch.exp(u)))


def _log_bin_mass(lo: Tensor, hi: Tensor, first: Tensor, last: Tensor) -> Tensor:
    """log(F(hi) − F(lo)) for the standard logistic CDF F = sigmoid, with open end bins.

    ``lo``/``hi`` are standardised bin edges; ``first`` (``last``) marks bins whose lower (upper)
    edge is −∞ (+∞). By symmetry F(hi) − F(lo) = F(−lo) − F(−hi), evaluated on the left tail,
    where log F(t) = −softplus(−t) has no cancellation.
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -lo, hi)  # upper edge of the mirrored bin
    b = torch.where(flip, -hi, lo)  # lower edge
    log_fa = -F.softplus(-a)
    log_fb = -F.softplus(-b)
    mid = log_fa + _log1mexp(torch.clamp(log_fb - log_fa, max=-1e-12))
    out = torch.where(first, -F.softplus(-hi), mid)   # F(hi)
    return torch.where(last, -F.softplus(lo), out)    # 1 − F(lo)


def logistic_mixture_log_prob(
    x: Tensor, logit_pi: Tensor, means: Tensor, log_scales: Tensor,
    coeffs: Tensor | None = None, bins: int = 256,
) -> Tensor:
    """Log-probability of pixels under a discretised logistic mixture (PixelCNN++ form).

    Pixel values are the ``bins`` levels k/(bins − 1) of [0, 1], mapped to y = 2x − 1 in [−1, 1];
    bin k of channel c is [y − δ, y + δ] with δ = 1/(bins − 1), the end bins open to ±∞. For
    component j with weight π_j, channels are coupled autoregressively within the pixel:

        m_1 = μ_1,  m_2 = μ_2 + a_j y_1,  m_3 = μ_3 + b_j y_1 + c_j y_2,
        P(x) = Σ_j π_j ∏_c [σ((y_c + δ − m_c)/s_c) − σ((y_c − δ − m_c)/s_c)],

    so the probabilities of the bins^C values of a pixel sum to 1.

    Args:
        x: (B, C, H, W) in [0, 1] (rounded to the nearest level).
        logit_pi: (B, K, H, W) unnormalised log mixture weights.
        means: (B, K, C, H, W) μ in [−1, 1] units.
        log_scales: (B, K, C, H, W) log s.
        coeffs: (B, K, 3, H, W) the coupling (a, b, c), required when C = 3, else ignored.
        bins: Levels per channel (256 for 8-bit images).

    Returns:
        (B, H, W) log P(pixel) in nats (joint over channels).

    Raises:
        ValueError: If ``bins`` < 2 or C = 3 without ``coeffs``.

    References:
        https://kexue.fm/archives/7574; Salimans et al. 2017; Vahdat & Kautz 2020, §4.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    c = x.shape[1]
    if c == 3 and coeffs is None:
        raise ValueError("coeffs (B, K, 3, H, W) are required for C = 3 channels, got None")
    level = torch.round(x.clamp(0, 1) * (bins - 1))  # (B, C, H, W)
    y = (2 * level / (bins - 1) - 1).unsqueeze(1)     # (B, 1, C, H, W)
    m = _coupled_means(means, coeffs, y) if c == 3 else means
    inv_s = torch.exp(-log_scales.clamp(min=-7.0))
    delta = 1.0 / (bins - 1)
    lo, hi = (y - delta - m) * inv_s, (y + delta - m) * inv_s
    first, last = (level == 0).unsqueeze(1), (level == bins - 1).unsqueeze(1)
    log_p = _log_bin_mass(lo, hi, first.expand_as(lo), last.expand_as(lo)).sum(2)  # (B, K, H, W)
    return torch.logsumexp(log_p + F.log_softmax(logit_pi, dim=1), dim=1)


def _coupled_means(means: Tensor, coeffs: Tensor, y: Tensor) -> Tensor:
    """m_1 = μ_1, m_2 = μ_2 + a y_1, m_3 = μ_3 + b y_1 + c y_2; y is (B, 1 or K, 3, H, W)."""
    a, b, c = coeffs.tanh().unbind(2)  # each (B, K, H, W)
    y1, y2 = y[:, :, 0], y[:, :, 1]
    return torch.stack([means[:, :, 0], means[:, :, 1] + a * y1,
                        means[:, :, 2] + b * y1 + c * y2], dim=2)


def sample_logistic_mixture(
    logit_pi: Tensor, means: Tensor, log_scales: Tensor, coeffs: Tensor | None = None,
    bins: int = 256, generator: torch.Generator | None = None,
) -> Tensor:
    """Draw pixels from the mixture of :func:`logistic_mixture_log_prob` (same arguments).

    Returns:
        (B, C, H, W) values on the grid k/(bins − 1) in [0, 1].
    """
    bsz, k, c, h, w = means.shape
    u = torch.rand(logit_pi.shape, generator=generator, dtype=logit_pi.dtype)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
    pick = (logit_pi + gumbel).argmax(1)  # (B, H, W)
    onehot = F.one_hot(pick, k).permute(0, 3, 1, 2).unsqueeze(2).to(means.dtype)  # (B, K, 1, H, W)
    mu = (means * onehot).sum(1)  # (B, C, H, W)
    s = torch.exp(log_scales.clamp(min=-7.0)) * onehot
    s = s.sum(1)
    u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype).clamp(1e-5, 1 - 1e-5)
    y = mu + s * (torch.log(u) - torch.log1p(-u))  # logistic noise
    if c == 3:
        if coeffs is None:
            raise ValueError("coeffs (B, K, 3, H, W) are required for C = 3 channels, got None")
        a, b, cc = ((coeffs.tanh() * onehot).sum(1)).unbind(1)  # each (B, H, W)
        y0 = y[:, 0].clamp(-1, 1)
        y1 = (y[:, 1] + a * y0).clamp(-1, 1)
        y2 = (y[:, 2] + b * y0 + cc * y1).clamp(-1, 1)
        y = torch.stack([y0, y1, y2], 1)
    level = torch.round((y.clamp(-1, 1) + 1) / 2 * (bins - 1))
    return level / (bins - 1)


# --------------------------------------------------------------------------------------------
# Regularisation and BatchNorm utilities
# --------------------------------------------------------------------------------------------

class SpectralRegularizer(nn.Module):
    """Σ_l σ_max(W_l) over conv/linear layers, each σ by power iteration with a persistent u.

    The weight W_l (C_out, C_in, k, k) is read as the matrix (C_out, C_in·k·k). One iteration
    per call: v ← Wᵀu/‖Wᵀu‖, u ← Wv/‖Wv‖, σ = uᵀWv (differentiable in W; u, v are constants), so
    with u carried across training steps σ tracks the largest singular value at the cost of two
    matrix-vector products. The targets are referenced, not registered as submodules. While a
    weight is exactly zero (NVAE's heads at initialisation) σ = 0 and u is kept, so the
    iteration resumes once the weight moves.

    Args:
        modules: Layers with a ``weight`` attribute (parametrised weights are read through it).
        generator: Source of the initial u.

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, §3.2 (spectral regularisation);
        Yoshida & Miyato 2017.
    """

    def __init__(self, modules: Sequence[nn.Module], generator: torch.Generator | None = None):
        super().__init__()
        self._targets = list(modules)
        for i, m in enumerate(self._targets):
            u = torch.randn(m.weight.shape[0], generator=generator)
            self.register_buffer(f"u{i}", u / u.norm())

    def sigmas(self, iterations: int = 1) -> Tensor:
        """(n_layers,) estimates of σ_max after ``iterations`` power iterations (u updated)."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        out = []
        for i, m in enumerate(self._targets):
            w = m.weight.reshape(m.weight.shape[0], -1)  # (C_out, C_in·k·k)
            u = getattr(self, f"u{i}")
            with torch.no_grad():
                for _ in range(iterations):
                    v = F.normalize(w.t() @ u, dim=0)  # 0 if W = 0
                    wv = w @ v
                    norm = wv.norm()
                    u = torch.where(norm > 0, wv / norm.clamp_min(1e-30), u)  # W = 0: keep u
                getattr(self, f"u{i}").copy_(u)
            out.append(u @ w @ v)
        return torch.stack(out)

    def forward(self, iterations: int = 1) -> Tensor:
        """Σ_l σ_max(W_l), a scalar to be weighted by λ and added to the loss."""
        return self.sigmas(iterations).sum()


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, forward: Callable[[], Any], steps: int) -> None:
    """Recompute the running statistics of every BatchNorm in ``module`` from ``steps`` passes.

    The statistics are reset and the momentum set to None, so after the passes each BN holds
    the plain average over passes of the batch mean and of the (unbiased) batch variance, not an
    exponential average dominated by the last batches; momenta and train/eval modes are then
    restored. NVAE does this with prior samples before generating, as the statistics gathered
    during training come from posterior samples.

    Args:
        module: Module whose BatchNorm layers are re-estimated.
        forward: Zero-argument callable that runs one forward pass through them.
        steps: Number of passes.

    Raises:
        ValueError: If ``steps`` < 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in module.modules()}
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    try:
        for _ in range(steps):
            forward()
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


def kl_balance_coefficients(kl: Tensor, group_sizes: Tensor, floor: float = 0.01) -> Tensor:
    """KL balancing coefficients γ_i ∝ (E_batch[KL_i] + floor) / α_i with mean 1 (no gradient).

    α_i = group_sizes_i / Σ_j group_sizes_j. A group carrying much KL per latent dimension gets
    a larger weight, which pushes information into the other groups and keeps them from
    collapsing while the KL warm-up is on.

    Args:
        kl: (B, G) KL of each group, summed over its dimensions.
        group_sizes: (G,) number of latent dimensions in each group.
        floor: Added to the mean KL so a collapsed group keeps a small weight.

    Returns:
        (G,) coefficients, detached, mean 1.

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, §3.2 / appendix A.
    """
    alpha = group_sizes.to(kl.dtype) / group_sizes.sum()
    gamma = (kl.detach().abs().mean(0) + floor) / alpha
    return gamma / gamma.mean()


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NVAEConfig:
    """Architecture of an :class:`NVAE`.

    Attributes:
        channels: D, channels of every residual cell.
        downsamples: Resolution halvings between the image and the finest latent grid
            (r = H / 2^downsamples).
        groups: Latent groups per scale (G = groups · scales in all, generated top-down).
        scales: Resolutions that carry latent groups: r×r, r/2×r/2, …; the top groups sit on
            the coarsest (NVAE's multi-scale hierarchy; 1 puts every group on r×r).
        latent_channels: L, channels of each group (group size L·r_i·r_i on its grid).
        encoder_cells: Residual cells per resolution of the bottom-up tower and per group.
        decoder_cells: Residual cells between consecutive groups and per resolution after them
            (between scales, a ×2 upsampling cell and max(``decoder_cells`` − 1, 0) plain
            cells: there is always the upsampling cell).
        expand: Channel expansion of the decoder cell's 1×1 conv (NVAE: 6).
        residual_scale: s in x + s·cell(x) (the paper uses 0.1; 0.3 trained better than 0.1
            and 1.0 in short runs on digits).
        likelihood: ``"bernoulli"`` (binary pixels) or ``"logistic_mixture"`` (256 levels).
        mixtures: K, components of the logistic mixture.
        bn_momentum: BatchNorm momentum during training.
    """

    channels: int = 32
    downsamples: int = 1
    groups: int = 2
    scales: int = 1
    latent_channels: int = 4
    encoder_cells: int = 1
    decoder_cells: int = 1
    expand: int = 3
    residual_scale: float = 0.3
    likelihood: str = "bernoulli"
    mixtures: int = 5
    bn_momentum: float = 0.05

    def __post_init__(self) -> None:
        for name in ("channels", "groups", "scales", "latent_channels", "expand", "mixtures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("downsamples", "encoder_cells", "decoder_cells"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")


class _DepthwiseConv(nn.Conv2d):
    """Depthwise k×k conv ('same' padding); on small grids a per-channel (HW, HW) matmul.

    On the CPU, oneDNN's depthwise kernels (backward especially) are several times slower than
    building each channel's conv as the matrix M_c[p, q] = w_c[q − p + k//2] (zero outside the
    kernel) and multiplying, as long as H·W is small; larger grids use ``F.conv2d``.
    """

    dense_max = 64  # largest H·W for the matrix form

    def __init__(self, channels: int, k: int):
        super().__init__(channels, channels, k, padding=k // 2, groups=channels)
        self._index: dict[tuple[int, int], Tensor] = {}

    def _basis(self, h: int, w: int) -> Tensor:
        """(k·k, HW·HW) one-hot map from kernel taps to entries of the per-channel matrix."""
        if (h, w) not in self._index:
            k, p = self.kernel_size[0], self.kernel_size[0] // 2
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            dy = ys[None, :] - ys[:, None] + p  # (HW_out, HW_in): kernel row reading input q
            dx = xs[None, :] - xs[:, None] + p
            inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
            tap = torch.where(inside, dy * k + dx, k * k)
            self._index[h, w] = F.one_hot(tap.flatten(), k * k + 1)[:, :k * k].t().float()
        return self._index[h, w]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h * w > self.dense_max:
            return super().forward(x)
        basis = self._basis(h, w).to(x.dtype)
        m = (self.weight.reshape(c, -1) @ basis).view(c, h * w, h * w)  # (C, HW_out, HW_in)
        y = torch.einsum("cpq,bcq->bcp", m, x.reshape(b, c, h * w))  # (B, C, HW)
        return y.reshape(b, c, h, w) + self.bias[:, None, None]


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Module:
    """Weight-normalised conv with 'same' padding (halving the size when stride = 2)."""
    if groups > 1 and groups == cin == cout and stride == 1:
        return weight_norm(_DepthwiseConv(cin, k))
    return weight_norm(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups))


class _SqueezeExcite(nn.Module):
    """x · sigmoid(W_2 ReLU(W_1 mean_hw(x))), hidden width max(D/16, 4)."""

    def __init__(self, d: int):
        super().__init__()
        hidden = max(d // 16, 4)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))  # (B, D)
        return x * gate[:, :, None, None]


class _EncoderCell(nn.Module):
    """x + s·SE(conv3(Swish(BN(conv3(Swish(BN(x))))))); stride 2 halves the size."""

    def __init__(self, d: int, scale: float, momentum: float, stride: int = 1):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.BatchNorm2d(d, momentum=momentum), nn.SiLU(), _conv(d, d, 3, stride),
            nn.BatchNorm2d(d, momentum=momentum), nn.SiLU(), _conv(d, d, 3), _SqueezeExcite(d))
        self.skip = _conv(d, d, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.scale * self.body(x)


class _DecoderCell(nn.Module):
    """x + s·SE(BN(conv1(Swish(BN(dw5(Swish(BN(conv1_expand(BN(x)))))))))); optional ×2 up."""

    def __init__(self, d: int, expand: int, scale: float, momentum: float, up: bool = False):
        super().__init__()
        e = d * expand
        self.scale = scale
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if up else nn.Identity()
        self.body = nn.Sequential(
            nn.BatchNorm2d(d, momentum=momentum), _conv(d, e, 1),
            nn.BatchNorm2d(e, momentum=momentum), nn.SiLU(), _conv(e, e, 5, groups=e),
            nn.BatchNorm2d(e, momentum=momentum), nn.SiLU(), _conv(e, d, 1),
            nn.BatchNorm2d(d, momentum=momentum), _SqueezeExcite(d))
        self.skip = _conv(d, d, 1) if up else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.up(x)
        return self.skip(x) + self.scale * self.body(x)


def _soft_clamp(x: Tensor, bound: float = 5.0) -> Tensor:
    """bound·tanh(x/bound): keeps log σ in (−bound, bound) with a gradient everywhere."""
    return bound * torch.tanh(x / bound)


class NVAEOutput(NamedTuple):
    """What one pass of :meth:`NVAE.forward` returns (all per image, in nats).

    Attributes:
        log_px: (B,) log p(x | z).
        kl: (B, G) analytic KL(q(z_i | x, z_<i) ‖ p(z_i | z_<i)) of each group at the sampled z_<i.
        log_pz: (B,) log p(z) of the sampled z.
        log_qz: (B,) log q(z | x) of the sampled z.
    """

    log_px: Tensor
    kl: Tensor
    log_pz: Tensor
    log_qz: Tensor


class NVAE(nn.Module):
    """Hierarchical VAE with a bidirectional encoder and residual normal posteriors.

    Bottom-up: stem conv, then per resolution ``encoder_cells`` − 1 cells and a stride-2 cell,
    then per group (from the bottom group G up to the top group 1) ``encoder_cells`` cells whose
    output is f_i, with a stride-2 cell where the next group lies on a coarser scale. Top-down:
    the state starts as a learnt h_0 (D, r_top, r_top) on the coarsest scale; group i reads its
    prior from the state (N(0, I) for i = 1), its posterior correction (Δμ, log Δσ) from
    f_i + conv1×1(state), and merges the sample with conv1×1([state, z_i]); ``decoder_cells``
    cells separate groups, led by a ×2 upsampling cell where the scale changes.
    Then ``decoder_cells`` cells on the latent grid and, per resolution, a ×2 upsampling cell and
    ``decoder_cells`` − 1 cells back to H×W, and an ELU-conv head for the likelihood.
    The posterior and prior heads start at zero (weight-norm gain g = 0), so at initialisation
    every q(z_i | x, z_<i) = p(z_i | z_<i) = N(0, I) and the KL is 0; with random heads the KL
    of the first steps reached thousands of nats on 28×28 digits.

    Args:
        image_shape: (C, H, W); H and W must be divisible by 2^(downsamples + scales − 1).
        config: Architecture.
        generator: Source of the initial weights (the global RNG is left untouched).

    Raises:
        ValueError: For an image size the architecture does not support, or C ∉ {1, 3} with the
            logistic mixture.
    """

    def __init__(self, image_shape: tuple[int, int, int], config: NVAEConfig = NVAEConfig(),
                 generator: torch.Generator | None = None):
        super().__init__()
        c, h, w = image_shape
        f = 2 ** config.downsamples
        top = f * 2 ** (config.scales - 1)
        if c < 1 or h < top or w < top or h % top or w % top:
            raise ValueError(f"image_shape must be (C, H, W) with H and W divisible by "
                             f"2^(downsamples + scales - 1) = {top}, got {tuple(image_shape)}")
        if config.likelihood == "logistic_mixture" and c not in (1, 3):
            raise ValueError(f"the logistic mixture needs C in (1, 3), got image_shape "
                             f"{tuple(image_shape)}")
        self.image_shape, self.config = (c, h, w), config
        d, lat, per = config.channels, config.latent_channels, config.groups
        g = per * config.scales
        self.num_groups = g
        # group i lies on scale i // per, from the coarsest (0) to the finest (scales − 1)
        self.latent_shapes = [(lat, h // f // 2 ** (config.scales - 1 - i // per),
                               w // f // 2 ** (config.scales - 1 - i // per)) for i in range(g)]
        scale, mom = config.residual_scale, config.bn_momentum

        def enc_cells(n: int) -> nn.Sequential:  # n ≥ 0 cells
            return nn.Sequential(*[_EncoderCell(d, scale, mom) for _ in range(n)])

        def dec_cells(n: int, up: bool = False) -> nn.Sequential:  # n ≥ 0 plain cells
            cells = [_DecoderCell(d, config.expand, scale, mom, up=True)] if up else []
            return nn.Sequential(*cells, *[_DecoderCell(d, config.expand, scale, mom)
                                           for _ in range(n)])

        def head(cin: int, cout: int, k: int = 3) -> nn.Sequential:
            return nn.Sequential(nn.ELU(), _conv(cin, cout, k))

        # torch's default initialisers draw from the global RNG; fork it so that state is left
        # as it was, and overwrite every weight from ``generator`` in _init_weights.
        with torch.random.fork_rng(devices=[]):
            self.encoder = nn.ModuleDict({
                "stem": _conv(c, d, 3),
                "down": nn.Sequential(*[nn.Sequential(enc_cells(config.encoder_cells - 1),
                                                      _EncoderCell(d, scale, mom, stride=2))
                                        for _ in range(config.downsamples)]),
                "groups": nn.ModuleList([enc_cells(config.encoder_cells) for _ in range(g)]),
                "coarser": nn.ModuleList([_EncoderCell(d, scale, mom, stride=2)
                                          for _ in range(config.scales - 1)]),
                "posterior": nn.ModuleList([head(d, 2 * lat) for _ in range(g)]),
                "combine": nn.ModuleList([_conv(d, d, 1) for _ in range(g - 1)]),
            })
            if config.likelihood == "bernoulli":
                out_channels = c
            else:
                k = config.mixtures
                out_channels = k * (1 + 2 * c) + (3 * k if c == 3 else 0)
            self.decoder = nn.ModuleDict({
                "cells": nn.ModuleList([  # before group i = 1 … G−1; ×2 up at a new scale
                    dec_cells(max(config.decoder_cells - 1, 0), up=True) if i % per == 0
                    else dec_cells(config.decoder_cells) for i in range(1, g)]),
                "prior": nn.ModuleList([head(d, 2 * lat) for _ in range(g - 1)]),
                "combine": nn.ModuleList([_conv(d + lat, d, 1) for _ in range(g)]),
                "post": nn.Sequential(dec_cells(config.decoder_cells),
                                      *[dec_cells(config.decoder_cells - 1, up=True)
                                        for _ in range(config.downsamples)]),
                "head": head(d, out_channels),
            })
        self.h0 = nn.Parameter(torch.zeros(1, d, *self.latent_shapes[0][1:]))
        if generator is None:  # never the global RNG: a fixed default stream
            generator = torch.Generator().manual_seed(0)
        _init_weights(self, generator)
        with torch.no_grad():  # zero heads: q(z_i | ·) = p(z_i | z_<i) = N(0, I), KL = 0 at init
            for heads in (self.encoder["posterior"], self.decoder["prior"]):
                for h in heads:
                    h[1].parametrizations.weight.original0.zero_()  # weight norm's gain g
        self.spectral = SpectralRegularizer(
            [m for m in self.modules() if isinstance(m, nn.Conv2d)], generator)

    @property
    def group_sizes(self) -> Tensor:
        """(G,) latent dimensions per group."""
        return torch.tensor([math.prod(shape) for shape in self.latent_shapes])

    def _input(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must be (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        return 2 * x - 1

    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """Encoder features [f_1, …, f_G] (top group first), f_i (B, D, r_i, r_i) on its scale."""
        h = self.encoder["down"](self.encoder["stem"](self._input(x)))  # (B, D, r, r)
        per, feats = self.config.groups, [h] * self.num_groups
        for i in reversed(range(self.num_groups)):  # the bottom group sees the shallowest
            h = self.encoder["groups"][i](h)
            feats[i] = h
            if i > 0 and i % per == 0:  # group i − 1 lies one scale coarser
                h = self.encoder["coarser"][i // per - 1](h)  # (B, D, r_i/2, r_i/2)
        return feats

    def _params(self, head: nn.Module, s: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = head(s).chunk(2, dim=1)  # each (B, L, r, r)
        return mu, _soft_clamp(log_sigma)

    def top_down(self, feats: Sequence[Tensor] | None, n: int | None = None,
                 generator: torch.Generator | None = None, temperature: float = 1.0,
                 noise: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample z top-down from q(z | x) (``feats`` given) or from p(z) (``feats`` None).

        z_i = μ_i + σ_i ε_i with ε_i ~ N(0, I) drawn from ``generator``, or taken from ``noise``
        (one (B, L, r_i, r_i) tensor per group), which makes z a deterministic function of ε.

        Returns:
            (final decoder state (B, D, r, r), KL (B, G), log p(z) (B,), log q(z|x) (B,));
            without ``feats`` the KL and log q are zeros.
        """
        dec, enc = self.decoder, self.encoder
        b = feats[0].shape[0] if feats is not None else n
        s = self.h0.expand(b, -1, -1, -1)
        kls, log_pz, log_qz = [], s.new_zeros(b), s.new_zeros(b)
        for i in range(self.num_groups):
            if i == 0:
                mu_p = s.new_zeros(b, *self.latent_shapes[0])
                log_sigma_p = torch.zeros_like(mu_p)
            else:
                s = dec["cells"][i - 1](s)
                mu_p, log_sigma_p = self._params(dec["prior"][i - 1], s)
            eps = (torch.randn(mu_p.shape, generator=generator, dtype=mu_p.dtype)
                   if noise is None else noise[i])
            if feats is None:
                z = mu_p + temperature * torch.exp(log_sigma_p) * eps
                kls.append(s.new_zeros(b))
            else:
                f = feats[i] if i == 0 else feats[i] + enc["combine"][i - 1](s)
                d_mu, log_d_sigma = self._params(enc["posterior"][i], f)
                mu_q, log_sigma_q = mu_p + d_mu, log_sigma_p + log_d_sigma
                z = mu_q + torch.exp(log_sigma_q) * eps
                kls.append(residual_normal_kl(d_mu, log_d_sigma, log_sigma_p).sum((1, 2, 3)))
                log_qz = log_qz + normal_log_prob(z, mu_q, log_sigma_q).sum((1, 2, 3))
            log_pz = log_pz + normal_log_prob(z, mu_p, log_sigma_p).sum((1, 2, 3))
            s = dec["combine"][i](torch.cat([s, z], dim=1))
        return s, torch.stack(kls, 1), log_pz, log_qz

    def decode(self, s: Tensor) -> Tensor:
        """Likelihood parameters (B, out_channels, H, W) from the final decoder state."""
        return self.decoder["head"](self.decoder["post"](s))

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        b, _, h, w = out.shape
        k, c = self.config.mixtures, self.image_shape[0]
        logit_pi = out[:, :k]                                     # (B, K, H, W)
        means = out[:, k:k + k * c].reshape(b, k, c, h, w)        # (B, K, C, H, W)
        log_scales = out[:, k + k * c:k + 2 * k * c].reshape(b, k, c, h, w)
        coeffs = out[:, k + 2 * k * c:].reshape(b, k, 3, h, w) if c == 3 else None
        return logit_pi, means, log_scales, coeffs

    def log_likelihood(self, out: Tensor, x: Tensor) -> Tensor:
        """(B,) log p(x | z) from the decoder output ``out``."""
        if self.config.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
        return logistic_mixture_log_prob(x, *self._split(out)).sum((1, 2))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> NVAEOutput:
        """One posterior sample z ~ q(z | x) and its terms; x is (B, C, H, W) in [0, 1]."""
        s, kl, log_pz, log_qz = self.top_down(self.bottom_up(x), generator=generator)
        return NVAEOutput(self.log_likelihood(self.decode(s), x), kl, log_pz, log_qz)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None,
                 temperature: float = 1.0, mean: bool = True) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] from the prior (Bernoulli: means if ``mean``)."""
        s, *_ = self.top_down(None, n=n, generator=generator, temperature=temperature)
        out = self.decode(s)
        if self.config.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            return p if mean else torch.bernoulli(p, generator=generator)
        return sample_logistic_mixture(*self._split(out), generator=generator)

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int = 100, generator: torch.Generator | None = None,
                 max_batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Per-image Monte Carlo ELBO and importance-weighted bound with K = ``samples``.

            log w_k = log p(x | z_k) + log p(z_k) − log q(z_k | x),   z_k ~ q(z | x),
            ELBO ≈ (1/K) Σ_k log w_k  ≤  L_K = log (1/K) Σ_k w_k.

        Runs in the current mode (call ``eval()`` first to use the running BN statistics), on
        ``max_batch`` rows (images × samples) at a time.

        Returns:
            (elbo (N,), iw (N,)) in nats; −iw is the importance-weighted NLL.

        Raises:
            ValueError: If ``samples`` < 1 or x is empty.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if len(x) == 0:
            raise ValueError("x is empty: need at least one image to evaluate")
        if max_batch is None:  # rows per pass: 4,096 images of 8×8, ~330 of 28×28
            max_batch = 2 ** 18 // (self.image_shape[1] * self.image_shape[2])
        per = max(1, max_batch // samples)
        elbo, iw = [], []
        for xb in x.split(per):
            feats = [f.repeat_interleave(samples, 0) for f in self.bottom_up(xb)]
            s, _, log_pz, log_qz = self.top_down(feats, generator=generator)
            xr = xb.repeat_interleave(samples, 0)  # (B·K, C, H, W)
            log_w = (self.log_likelihood(self.decode(s), xr) + log_pz - log_qz).view(-1, samples)
            elbo.append(log_w.mean(1))
            iw.append(log_mean_exp(log_w, 1))
        return torch.cat(elbo), torch.cat(iw)


@torch.no_grad()
def _init_weights(model: nn.Module, generator: torch.Generator | None) -> None:
    """LeCun-uniform weights (Var = 1/fan_in) drawn from ``generator``, zero biases, g = ‖v‖."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if parametrize.is_parametrized(m, "weight"):
                g, v = m.parametrizations.weight.original0, m.parametrizations.weight.original1
            else:
                g, v = None, m.weight
            fan_in = v[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            v.copy_(torch.rand(v.shape, generator=generator) * 2 * bound - bound)
            if g is not None:
                g.copy_(v.flatten(1).norm(dim=1).view_as(g))
            if m.bias is not None:
                m.bias.zero_()


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------

class NVAETrainer:
    """Trains an :class:`NVAE` on an :class:`~kexue.generative.data.ImageData` (Trainer protocol).

    Per step: a shuffled minibatch (binarised afresh for the Bernoulli likelihood: dynamic
    binarisation), one posterior sample, loss

        mean_b [−log p(x|z) + β_t Σ_i γ_i KL_i] + λ Σ_l σ_max(W_l),

    β_t = max(β_min, t / (warmup·T)) (T total steps), γ from :func:`kl_balance_coefficients` while
    β_t < 1 (ones afterwards), Adamax with a cosine learning rate from ``lr`` to ``lr_min``. All
    randomness (initial weights, shuffling, binarisation, posterior noise) comes from the
    trainer's own generator, saved in :meth:`state_dict`.

    Args:
        data: Training images (``data.train_x``); the test split is not used in training.
        config: Architecture; None: :class:`NVAEConfig` defaults with latents on the 4×4 grid
            for 8×8 images (one halving) and on the 7×7 grid for 28×28 (two).
        epochs: Planned epochs (the schedules refer to them).
        batch_size: Minibatch size.
        lr, lr_min: Cosine learning-rate schedule endpoints.
        kl_warmup: Fraction of training over which β rises to 1.
        kl_min: β_min.
        kl_balance: Whether to balance the KL terms during warm-up.
        spectral: λ of the spectral regulariser.
        weight_decay: Adamax weight decay.
        seed: Seed of the trainer's generator.

    Raises:
        ValueError: For empty training data or out-of-range arguments.
    """

    def __init__(self, data: ImageData, config: NVAEConfig | None = None, *, epochs: int = 50,
                 batch_size: int = 32, lr: float = 2e-2, lr_min: float = 1e-4,
                 kl_warmup: float = 0.3, kl_min: float = 1e-4, kl_balance: bool = True,
                 spectral: float = 1e-3, weight_decay: float = 3e-4, seed: int = 0):
        if len(data.train_x) == 0:
            raise ValueError(f"data {data.name!r} has no training images (train_x is empty)")
        if epochs < 1 or batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
        if not 0 <= kl_warmup <= 1 or not 0 <= kl_min <= 1:
            raise ValueError(f"kl_warmup and kl_min must lie in [0, 1], got {kl_warmup}, {kl_min}")
        x = data.train_x
        if config is None:
            h, w = data.shape[1:]
            config = NVAEConfig(downsamples=2 if min(h, w) >= 16 and h % 4 == w % 4 == 0 else 1)
        if config.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
            raise ValueError("train_x must lie in [0, 1] for the Bernoulli likelihood")
        self.data, self.config = data, config
        self.epochs, self.epoch, self.step = epochs, 0, 0
        self.batch_size, self.lr, self.lr_min = batch_size, lr, lr_min
        self.kl_warmup, self.kl_min, self.kl_balance = kl_warmup, kl_min, kl_balance
        self.spectral = spectral
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.model = NVAE(data.shape, config, generator=self.generator)
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=lr, eps=1e-3, foreach=True,
                                            weight_decay=weight_decay)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.data.train_x)
        full, rest = divmod(n, self.batch_size)
        return full + (rest >= 2)  # a last batch of one image is dropped (BatchNorm)

    def _schedules(self) -> tuple[float, float]:
        total = self.epochs * self.steps_per_epoch
        t = min(self.step / total, 1.0)
        lr = self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))
        warm = self.kl_warmup * total
        beta = 1.0 if warm == 0 else max(self.kl_min, min(1.0, self.step / warm))
        return lr, beta

    def _targets(self, x: Tensor) -> Tensor:
        if self.config.likelihood == "bernoulli":
            return torch.bernoulli(x, generator=self.generator)
        return x

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch; returns the means of loss, neg_elbo, recon, kl, spectral, beta."""
        model, x_all = self.model, self.data.train_x
        model.train()
        order = torch.randperm(len(x_all), generator=self.generator)
        batches = [b for b in order.split(self.batch_size) if len(b) >= 2]
        sums: dict[str, float] = {}
        for j, idx in enumerate(batches):
            lr, beta = self._schedules()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x = self._targets(x_all[idx])
            with parametrize.cached():
                out = model(x, generator=self.generator)
                kl = out.kl  # (B, G)
                if self.kl_balance and beta < 1:
                    gamma = kl_balance_coefficients(kl, model.group_sizes)
                else:
                    gamma = torch.ones(kl.shape[1])
                reg = model.spectral() if self.spectral > 0 else torch.zeros(())
                loss = (-out.log_px + beta * (kl * gamma).sum(1)).mean() + self.spectral * reg
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            terms = {"loss": loss.item(), "neg_elbo": (kl.sum(1) - out.log_px).mean().item(),
                     "recon": -out.log_px.mean().item(), "kl": kl.sum(1).mean().item(),
                     "spectral": reg.item(), "beta": beta}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if on_batch is not None:
                on_batch(j + 1, len(batches))
        self.epoch += 1
        return {k: v / len(batches) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, x: Tensor, samples: int = 100,
                 generator: torch.Generator | None = None) -> dict[str, float]:
        """Mean negative ELBO and importance-weighted NLL (nats) of images ``x`` in eval mode.

        ``x`` must already be in the likelihood's space (binary for Bernoulli: binarise the
        test set once, with a fixed generator, for a static benchmark).
        """
        was_training = self.model.training
        self.model.eval()
        if generator is None:  # reproducible, and never the global RNG
            generator = torch.Generator().manual_seed(self.seed + 1)
        try:
            elbo, iw = self.model.evaluate(x, samples, generator)
        finally:
            self.model.train(was_training)
        return {"neg_elbo": -elbo.mean().item(), "nll": -iw.mean().item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               temperature: float = 1.0, bn_steps: int = 20, bn_batch: int = 64) -> Tensor:
        """``n`` images from the prior after re-estimating the decoder's BN statistics.

        The statistics are re-estimated from ``bn_steps`` batches of prior samples (drawn from
        ``generator``) and put back afterwards, so sampling leaves the trainer unchanged.
        Bernoulli models return pixel probabilities.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if generator is None:  # reproducible, and never the global RNG
            generator = torch.Generator().manual_seed(self.seed + 2)
        model = self.model
        saved = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        was_training = model.training
        reestimate_batchnorm(
            model.decoder,
            lambda: model.generate(bn_batch, generator, temperature=temperature), bn_steps)
        model.eval()
        try:
            return model.generate(n, generator, temperature=temperature)
        finally:
            model.decoder.load_state_dict(saved)
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "epoch": self.epoch,
                "step": self.step, "epochs": self.epochs, "config": asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {**asdict(NVAEConfig()), **state["config"]}  # fields added later: defaults
        if saved != asdict(self.config):
            raise ValueError(f"state was saved with config {saved}, this trainer has "
                             f"{asdict(self.config)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch, self.step, self.epochs = state["epoch"], state["step"], state["epochs"]
