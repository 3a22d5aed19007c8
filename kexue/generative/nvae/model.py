"""The NVAE network: weight-normalised residual cells, the bidirectional encoder, the top-down
decoder with residual normal posteriors, the spectral regulariser and the IW bound.

See :mod:`kexue.generative.nvae` for the model's equations and the shape legend.

References:
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from kexue._checks import check_int, check_real
from kexue.generative.common import init_children, init_module, power_iteration
from kexue.generative.nvae.likelihoods import (
    LIKELIHOODS,
    log_mean_exp,
    logistic_mixture_log_prob,
    normal_log_prob,
    residual_normal_kl,
    sample_logistic_mixture,
    standard_normal,
    uniform,
)

__all__ = ["NVAE", "NVAEConfig", "NVAEOutput", "SpectralRegularizer"]


class SpectralRegularizer(nn.Module):
    """Σ_l σ_max(W_l) over conv/linear layers, each σ by power iteration with a persistent u.

    The weight W_l (C_out, C_in, k, k) is read as the matrix (C_out, C_in·k·k). One iteration
    per call: v ← Wᵀu/‖Wᵀu‖, u ← Wv/‖Wv‖, σ = uᵀWv (differentiable in W; u, v are constants), so
    with u carried across training steps σ tracks the largest singular value at the cost of two
    matrix-vector products. The targets are referenced, not registered as submodules. While a
    weight is exactly zero (NVAE's heads at initialisation) σ = 0 and u is kept, so the
    iteration resumes once the weight moves.

    The power iteration is :func:`kexue.generative.common.power_iteration`.

    Args:
        modules: Layers with a ``weight`` attribute (parametrised weights are read through it).
        generator: Source of the initial u (None: a fixed stream, never the global RNG).

    References:
        https://kexue.fm/archives/7574; Vahdat & Kautz 2020, §3.2 (spectral regularisation);
        Yoshida & Miyato 2017.
    """

    def __init__(self, modules: Sequence[nn.Module], generator: torch.Generator | None = None):
        super().__init__()
        self._targets = list(modules)
        for i, m in enumerate(self._targets):
            self.register_buffer(f"u{i}", torch.empty(m.weight.shape[0]))
        if not any(u.is_meta for u in self.buffers()):  # built on "meta": init_module draws u
            self.init_parameters(generator if generator is not None
                                 else torch.Generator().manual_seed(0))

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator, scheme: str = "lecun") -> None:
        """Draw every u uniformly on its unit sphere from ``generator`` (the init hook of
        :func:`~kexue.generative.common.init_module`; ``scheme`` does not apply)."""
        for i in range(len(self._targets)):
            u = getattr(self, f"u{i}")
            draw = torch.randn(u.shape, generator=generator, device=generator.device)
            u.copy_(draw / draw.norm())

    def sigmas(self, iterations: int = 1) -> Tensor:
        """(n_layers,) estimates of σ_max after ``iterations`` power iterations (u updated)."""
        out = []
        for i, m in enumerate(self._targets):
            w = m.weight.reshape(m.weight.shape[0], -1)  # (C_out, C_in·k·k)
            u, v = power_iteration(w, getattr(self, f"u{i}"), iterations, eps=1e-30)
            getattr(self, f"u{i}").copy_(u)
            out.append(u @ w @ v)  # ∂σ/∂W = u vᵀ
        return torch.stack(out)

    def forward(self, iterations: int = 1) -> Tensor:
        """Σ_l σ_max(W_l), a scalar to be weighted by λ and added to the loss."""
        return self.sigmas(iterations).sum()


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
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=1))
        for name in ("downsamples", "encoder_cells", "decoder_cells"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=0))
        object.__setattr__(self, "residual_scale", check_real(
            "residual_scale", self.residual_scale, low=0, low_open=True))
        object.__setattr__(self, "bn_momentum", check_real("bn_momentum", self.bn_momentum,
                                                           low=0, high=1))
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
        self._index: dict[tuple[int, int, torch.device], Tensor] = {}

    def _basis(self, h: int, w: int, device: torch.device) -> Tensor:
        """(k·k, HW·HW) one-hot map from kernel taps to entries of the per-channel matrix."""
        if (h, w, device) not in self._index:
            k, p = self.kernel_size[0], self.kernel_size[0] // 2
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            dy = ys[None, :] - ys[:, None] + p  # (HW_out, HW_in): kernel row reading input q
            dx = xs[None, :] - xs[:, None] + p
            inside = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
            tap = torch.where(inside, dy * k + dx, k * k)
            basis = F.one_hot(tap.flatten(), k * k + 1)[:, :k * k].t().float()
            self._index[h, w, device] = basis.to(device)
        return self._index[h, w, device]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h * w > self.dense_max:
            return super().forward(x)
        basis = self._basis(h, w, x.device).to(x.dtype)
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
    of the first steps reached thousands of nats on 28×28 digits. Initialisation is
    :func:`~kexue.generative.common.init_module` with the ``"lecun"`` scheme (Var = 1/fan_in,
    zero biases, g = ‖v‖) through :meth:`init_parameters`, which adds h_0 = 0 and the zero heads.

    Args:
        image_shape: (C, H, W); H and W must be divisible by 2^(downsamples + scales − 1).
        config: Architecture.
        generator: Source of the initial weights (None: a fixed stream; the global RNG is
            never read).

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

        # built on "meta" (torch's default initialisers never run), then initialised once from
        # ``generator`` by init_module and the init_parameters hook
        with torch.device("meta"):
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
            self.h0 = nn.Parameter(torch.empty(1, d, *self.latent_shapes[0][1:]))
            self.spectral = SpectralRegularizer(
                [m for m in self.modules() if isinstance(m, nn.Conv2d)])
        self.to_empty(device="cpu")
        init_module(self, generator if generator is not None else torch.Generator().manual_seed(0),
                    "lecun")

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator, scheme: str = "lecun") -> None:
        """The init hook of :func:`~kexue.generative.common.init_module`: every layer by
        ``scheme``, the spectral regulariser's vectors, then h_0 = 0 and the posterior and prior
        heads' weight-norm gains g = 0 (q(z_i | ·) = p(z_i | z_<i) = N(0, I), KL = 0)."""
        init_children(self, generator, scheme)
        self.h0.zero_()
        for heads in (self.encoder["posterior"], self.decoder["prior"]):
            for h in heads:
                h[1].parametrizations.weight.original0.zero_()  # weight norm's gain g

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
            eps = standard_normal(mu_p, generator) if noise is None else noise[i]
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
        """``n`` images (n, C, H, W) in [0, 1] from the prior (Bernoulli: means if ``mean``).

        ``temperature`` ≥ 0 scales the prior's standard deviations.

        Raises:
            ValueError: If ``n`` is not an int ≥ 0 or ``temperature`` not a finite number ≥ 0.
        """
        n = check_int("n", n, low=0)
        temperature = check_real("temperature", temperature, low=0)
        s, *_ = self.top_down(None, n=n, generator=generator, temperature=temperature)
        out = self.decode(s)
        if self.config.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            return p if mean else (uniform(p, generator) < p).to(p.dtype)
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
            ValueError: If ``samples`` or ``max_batch`` is not an int ≥ 1, or x is empty.
        """
        samples = check_int("samples", samples, low=1)
        if len(x) == 0:
            raise ValueError("x is empty: need at least one image to evaluate")
        if max_batch is None:  # rows per pass: 4,096 images of 8×8, ~330 of 28×28
            max_batch = 2 ** 18 // (self.image_shape[1] * self.image_shape[2])
        max_batch = check_int("max_batch", max_batch, low=1)
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
