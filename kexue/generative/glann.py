"""GLANN: generative latent optimisation (GLO), then implicit maximum likelihood (IMLE) on codes.

Stage 1, GLO (Bojanowski et al.): every training image x_i owns a free code z_i on the unit
sphere; codes and a generator G are fitted jointly,

    min_{G, z}  (1/N) Σ_i Lap1(G(z_i), x_i),      z_i ← z_i / ‖z_i‖ after every step,

with the Laplacian-pyramid L1 loss as the offline stand-in for a perceptual (VGG) loss. The
codes start at the images' top principal components, normalised, as in the GLO paper.

Stage 2, IMLE (Li & Malik) in code space: a mapping network T turns noise e ~ N(0, I) into
codes T(e)/‖T(e)‖. For each real code z_i in a batch, the nearest code of a pool of generated
ones, j(i) = argmin_j ‖z_i − T(e_j)‖, is pulled onto it:

    min_T  Σ_i ‖T(e_{j(i)}) − z_i‖²,

so every real code has a generated code nearby (no mode dropping). Sampling is e → T → G.

Baseline "GLO + Gaussian": a full-covariance Gaussian fitted to the learned codes, sampled,
projected to the sphere (where G was trained) and decoded by the same G.

References:
    https://kexue.fm/archives/6394 (非对抗式生成模型GLANN的简单介绍)
    Hoshen, Li & Malik, "Non-Adversarial Image Synthesis with Generative Latent Nearest
    Neighbors", CVPR 2019.
    Bojanowski, Joulin, Lopez-Paz & Szlam, "Optimizing the Latent Space of Generative
    Networks", ICML 2018 (GLO, the Lap1 loss).
    Li & Malik, "Implicit Maximum Likelihood Estimation", 2018.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue._checks import check_generator, check_int, check_real
from kexue._seeds import stream
from kexue.generative.base import STATE_FORMAT, TrainerEntry, check_state
from kexue.generative.common import EpochLoop, init_module
from kexue.generative.data import ImageData
from kexue.generative.metrics import score_samples

__all__ = [
    "TRAINER",
    "GLANNTrainConfig",
    "GLANNTrainer",
    "fit_gaussian",
    "imle_assign",
    "lap1_loss",
    "laplacian_pyramid",
    "project_to_sphere",
    "reconstruct_pyramid",
]

# 5-tap binomial low-pass filter, the classic Burt–Adelson kernel.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    """Separable binomial blur of (B, C, H, W) with replicate padding (constants stay constant)."""
    c = x.shape[1]
    k = _BINOMIAL.to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _check_levels(levels: int | None, h: int, w: int) -> int:
    """``levels`` (default :func:`default_levels`) if it is an int in [1, J_max] for h×w
    images, J_max = ⌊log₂ min(h, w)⌋ + 1 (the coarsest level at least 1 pixel)."""
    if levels is None:
        return default_levels(h, w)
    try:
        return check_int("levels", levels, low=1, high=min(h, w).bit_length())
    except ValueError as error:
        raise ValueError(f"{error} (for {h}×{w} images)") from None


def default_levels(height: int, width: int) -> int:
    """Pyramid depth so the coarsest level is about 2 pixels: ⌊log₂ min(H, W)⌋ (8 → 3, 28 → 4)."""
    return max(1, int(math.log2(min(height, width))))


def laplacian_pyramid(x: Tensor, levels: int | None = None) -> list[Tensor]:
    """Laplacian pyramid of images, finest band first, the low-pass residual last.

        G₀ = x,  G_{j+1} = downsample₂(blur(G_j)),  L_j = G_j − up(G_{j+1}),  L_{J−1} = G_{J−1}

    Args:
        x: (B, C, H, W) images.
        levels: Number of levels J, in [1, ⌊log₂ min(H, W)⌋ + 1] (default
            :func:`default_levels`).

    Returns:
        ``[L_0, …, L_{J−1}]``; L_j has spatial size ≈ (H, W)/2^j.

    Raises:
        ValueError: If ``x`` is not 4-D or ``levels`` is out of range for its size.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    levels = _check_levels(levels, h, w)
    bands = []
    g = x
    for _ in range(levels - 1):
        low = _blur(g)[..., ::2, ::2]  # (B, C, ⌈H/2⌉, ⌈W/2⌉)
        bands.append(g - _up(low, g.shape[-2:]))
        g = low
    bands.append(g)
    return bands


def reconstruct_pyramid(bands: list[Tensor]) -> Tensor:
    """Invert :func:`laplacian_pyramid`: G_{J−1} = L_{J−1}, G_j = L_j + up(G_{j+1}); returns G₀."""
    if not bands:
        raise ValueError("bands must be a non-empty list of pyramid levels")
    g = bands[-1]
    for band in reversed(bands[:-1]):
        g = band + _up(g, band.shape[-2:])
    return g


@functools.lru_cache(maxsize=8)
def _lap1_matrix(height: int, width: int, levels: int) -> Tensor:
    """The weighted pyramid as one linear map: (H·W, K) with columns 2^{2j}/(H·W) · L_j(basis).

    The pyramid is linear in the image, so applying it to the H·W one-hot basis images gives its
    matrix; Lap1 is then one matmul per batch instead of a chain of small convolutions.
    """
    basis = torch.eye(height * width, dtype=torch.float64).view(-1, 1, height, width)
    bands = laplacian_pyramid(basis, levels)
    cols = [4.0 ** j * band.reshape(height * width, -1) for j, band in enumerate(bands)]
    return torch.cat(cols, 1) / (height * width)  # (H·W, K)


def lap1_loss(x: Tensor, y: Tensor, levels: int | None = None) -> Tensor:
    """Laplacian-pyramid L1 distance, averaged over the batch.

        Lap1(x, y) = Σ_j 2^{2j} ‖L_j(x) − L_j(y)‖₁ / (C·H·W)

    GLO's weighting: level j has ~4^j times fewer pixels than level 0, so 2^{2j} gives every
    level the same weight per pixel (the sum is the mean over levels' pixel-mean L1 errors, up
    to rounding of odd sizes). Zero if and only if x = y, since the pyramid is invertible.
    Computed with the pyramid's matrix (exactly the linear map of :func:`laplacian_pyramid`).

    Args:
        x, y: (B, C, H, W) images of the same shape.
        levels: Pyramid depth, in [1, ⌊log₂ min(H, W)⌋ + 1] (default :func:`default_levels`).

    Returns:
        Scalar tensor, differentiable in both arguments.

    Raises:
        ValueError: If the shapes differ or are not 4-D, or ``levels`` is out of range.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"x and y must be (B, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    b, c, h, w = x.shape
    levels = _check_levels(levels, h, w)
    m = _lap1_matrix(h, w, levels).to(x.dtype)
    diff = (x - y).reshape(b * c, h * w)  # (B·C, H·W)
    return (diff @ m).abs().sum() / (b * c)


def project_to_sphere(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of z scaled to unit ℓ₂ norm, z/‖z‖ (a zero row stays zero).

    Args:
        z: (..., D) vectors.
        eps: Floor of the norm, > 0 (keeps a zero row at zero).

    Raises:
        ValueError: If ``eps`` is not a finite number > 0.
    """
    check_real("eps", eps, low=0, low_open=True)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


def imle_assign(real_codes: Tensor, generated_codes: Tensor) -> Tensor:
    """IMLE's selection: for each real code, the index of its nearest generated code.

        j(i) = argmin_j ‖z_i − ẑ_j‖₂

    Args:
        real_codes: (N, D).
        generated_codes: (M, D), M ≥ 1.

    Returns:
        (N,) int64 indices into ``generated_codes``.

    Raises:
        ValueError: If the inputs are not 2-D with the same D, or ``generated_codes`` is empty.
    """
    if real_codes.ndim != 2 or generated_codes.ndim != 2 \
            or real_codes.shape[1] != generated_codes.shape[1]:
        raise ValueError(f"real_codes and generated_codes must be (N, D) and (M, D), got "
                         f"{tuple(real_codes.shape)} and {tuple(generated_codes.shape)}")
    if generated_codes.shape[0] == 0:
        raise ValueError("generated_codes must be non-empty")
    # ‖z − ẑ‖² = ‖z‖² − 2 z·ẑ + ‖ẑ‖²; ‖z‖² is constant per row, so it is left out.
    scores = generated_codes.square().sum(1)[None, :] - 2 * real_codes @ generated_codes.T
    return scores.argmin(1)  # (N,)


def fit_gaussian(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased full covariance (D, D) of codes (N, D), N ≥ 2."""
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must be (N, D) with N >= 2, got {tuple(codes.shape)}")
    return codes.mean(0), torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])


def _mlp(sizes: list[int], out: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


class _ConvGenerator(nn.Module):
    """code → linear → (W, H/4, W/4) → 2 × (up ×2, conv3×3, BN, LeakyReLU) → conv → sigmoid."""

    def __init__(self, code_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = shape
        self.start = (width, -(-h // 4), -(-w // 4))
        self.shape = shape
        self.fc = nn.Linear(code_dim, math.prod(self.start))
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, c, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, *self.start)  # (B, W, ⌈H/4⌉, ⌈W/4⌉)
        _, h, w = self.shape
        return self.body(x)[..., :h, :w]  # (B, C, H, W)


def _make_generator(code_dim: int, shape: tuple[int, int, int], width: int) -> nn.Module:
    """An MLP for images up to 16 pixels (digits), a small upsampling CNN above."""
    if max(shape[1:]) <= 16:
        return nn.Sequential(_mlp([code_dim, width, 2 * width, math.prod(shape)], nn.Sigmoid()),
                             nn.Unflatten(1, shape))  # (B, C, H, W)
    return _ConvGenerator(code_dim, shape, width)


@dataclass(frozen=True)
class GLANNTrainConfig:
    """Schedule and hyper-parameters of a :class:`GLANNTrainer`.

    Attributes:
        glo_epochs: Epochs of stage 1 (codes and G, Lap1 loss), ≥ 1.
        imle_epochs: Epochs of stage 2 (T, IMLE), ≥ 0.
        code_dim: Dimension D of the codes, ≥ 1 (at most min(N, C·H·W) of the data: the codes
            start at the top D principal components).
        noise_dim: Dimension of IMLE's noise e, ≥ 1.
        width: Hidden width of G and of T, ≥ 2.
        batch_size: GLO batch size, ≥ 1.
        lr: Adam learning rate of G and T, > 0 (T's decays by a cosine over the IMLE stage).
        code_lr: SparseAdam learning rate of the codes, > 0.
        imle_batch: Real codes per IMLE step, ≥ 1.
        imle_pool: Generated codes each IMLE step chooses nearest neighbours from, ≥ 1.
        levels: Lap1 pyramid depth, ≥ 1 (None: :func:`default_levels` of the image size).

    Raises:
        ValueError: Naming the field, for a value out of its range (an int field refuses 2.5
            and True, a real one NaN).
    """

    glo_epochs: int = 40
    imle_epochs: int = 20
    code_dim: int = 16
    noise_dim: int = 16
    width: int = 256
    batch_size: int = 64
    lr: float = 1e-3
    code_lr: float = 1e-2
    imle_batch: int = 128
    imle_pool: int = 1024
    levels: int | None = None

    def __post_init__(self) -> None:
        lows = {"glo_epochs": 1, "imle_epochs": 0, "code_dim": 1, "noise_dim": 1, "width": 2,
                "batch_size": 1, "imle_batch": 1, "imle_pool": 1}
        for name, low in lows.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=low))
        for name in ("lr", "code_lr"):
            object.__setattr__(self, name, check_real(name, getattr(self, name), low=0,
                                                      low_open=True))
        if self.levels is not None:
            object.__setattr__(self, "levels", check_int("levels", self.levels, low=1))

    @property
    def epochs(self) -> int:
        """Planned epochs, ``glo_epochs + imle_epochs``."""
        return self.glo_epochs + self.imle_epochs


class GLANNTrainer:
    """GLO for ``config.glo_epochs`` epochs, then IMLE of the code distribution.

    Meets :class:`~kexue.generative.base.Trainer`; ``epochs = glo_epochs + imle_epochs``.
    :meth:`sample` draws from GLANN (e → T → G), :meth:`sample_gaussian` from the GLO +
    Gaussian baseline. Initial weights of G and T come from the stream ``(seed, "init")``
    (torch's default distributions, :func:`~kexue.generative.common.init_module`), the codes
    from the images' principal components; batch order and IMLE noise from the training
    generator ``rng`` (seeded with ``seed``, saved in :meth:`state_dict`); sampling and
    evaluation default to the streams ``(seed, "sample")`` and ``(seed, "evaluate")``.

    Args:
        data: Real images; ``data.train_x`` trains, ``data.test_x`` is what :meth:`evaluate`
            scores against.
        config: Schedule and hyper-parameters (None: :class:`GLANNTrainConfig` defaults).
        seed: Seed of every stream.
        device: Where G, T and the codes train (``"cpu"``, ``"cuda"``, ``"auto"``); random
            draws are made on the CPU and moved, so a seed gives the same run everywhere up to
            floating-point rounding.
        autocast: ``None``, ``"bf16"`` or ``"fp16"`` (CUDA): precision of the forward passes.

    Raises:
        ValueError: For too little data, a ``code_dim`` or ``levels`` the images do not allow,
            or an unknown device or autocast.
    """

    def __init__(self, data: ImageData, config: GLANNTrainConfig | None = None, *,
                 seed: int = 0, device: str | torch.device | None = None,
                 autocast: str | None = None) -> None:
        config = GLANNTrainConfig() if config is None else config
        if not isinstance(config, GLANNTrainConfig):
            raise ValueError(f"config must be a GLANNTrainConfig or None, got "
                             f"{type(config).__name__}")
        self.seed = check_int("seed", seed, low=0, high=2**64 - 1)
        x = data.train_x
        if x.ndim != 4 or len(x) < 2:
            raise ValueError(f"data.train_x must hold at least 2 images (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        n, c, h, w = x.shape
        check_int("code_dim", config.code_dim, low=1, high=min(n, c * h * w))
        self.levels = config.levels if config.levels is not None else default_levels(h, w)
        laplacian_pyramid(x[:1], self.levels)  # validates levels for this size
        self.config = config
        self.loop = EpochLoop(device, autocast)
        self.device = self.loop.device
        self.x = self.loop.put(x)
        self.glo_epochs, self.imle_epochs = config.glo_epochs, config.imle_epochs
        self.epochs = config.epochs
        self.epoch = 0
        self.rng = torch.Generator().manual_seed(seed)

        with torch.device("meta"):
            self.G = _make_generator(config.code_dim, (c, h, w), config.width)
            self.T = _mlp([config.noise_dim, config.width, config.width, config.code_dim])
            self.codes = nn.Embedding(n, config.code_dim, sparse=True)
        init = stream(seed, "init")
        for module in (self.G, self.T, self.codes):
            module.to_empty(device="cpu")
        init_module(self.G, init, "torch")
        init_module(self.T, init, "torch")
        with torch.no_grad():
            self.codes.weight.copy_(self._pca_codes(x, config.code_dim))
        self.loop.place(self.G, self.T, self.codes)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr)
        self.opt_codes = torch.optim.SparseAdam(self.codes.parameters(), lr=config.code_lr)
        self.opt_t = torch.optim.Adam(self.T.parameters(), lr=config.lr)

    @staticmethod
    def _pca_codes(x: Tensor, code_dim: int) -> Tensor:
        """Top-``code_dim`` principal-component scores of the images, on the unit sphere."""
        flat = x.reshape(len(x), -1).double()  # (N, C·H·W)
        flat = flat - flat.mean(0)
        u, s, _ = torch.linalg.svd(flat, full_matrices=False)
        scores = u[:, :code_dim] * s[:code_dim]  # (N, D)
        # An SVD's signs are arbitrary; fix them so initialisation is the same everywhere.
        signs = torch.sign(scores[scores.abs().argmax(0), torch.arange(code_dim)])
        return project_to_sphere(scores * signs).float()

    @property
    def stage(self) -> str:
        """``"glo"`` while epoch < glo_epochs, then ``"imle"``."""
        return "glo" if self.epoch < self.glo_epochs else "imle"

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """One epoch of the current stage; returns ``{"lap1": …}`` or ``{"imle_mse": …}``."""
        if self.stage == "glo":
            out = self._glo_epoch(on_batch)
        else:
            out = self._imle_epoch(on_batch)
        self.epoch += 1
        return out

    def _glo_epoch(self, on_batch: Callable[[int, int], None] | None) -> dict[str, float]:
        self.G.train()

        def step(index: Tensor) -> dict[str, float]:
            idx = self.loop.put(index)
            with self.loop.autocast():
                out = self.G(self.codes(idx))  # codes (B, D) on the sphere since the last step
            loss = lap1_loss(out.float(), self.x[idx], self.levels)
            self.opt_g.zero_grad()
            self.opt_codes.zero_grad()
            loss.backward()
            self.opt_g.step()
            self.opt_codes.step()
            with torch.no_grad():
                self.codes.weight[idx] = project_to_sphere(self.codes.weight[idx])
            return {"lap1": loss.item()}

        return self.loop.run(len(self.x), self.config.batch_size, self.rng, step, on_batch)

    def _imle_epoch(self, on_batch: Callable[[int, int], None] | None) -> dict[str, float]:
        self.G.eval()
        cfg = self.config
        # Cosine decay of T's learning rate over the IMLE stage, a function of the epoch only
        # (so resuming from a checkpoint restores it): the nearest-neighbour targets are noisy.
        k = self.epoch - self.glo_epochs
        for group in self.opt_t.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(k, self.imle_epochs)
                                                       / max(self.imle_epochs, 1)))
        codes = self.codes.weight.detach()

        def step(index: Tensor) -> dict[str, float]:
            real = codes[self.loop.put(index)]  # (B, D)
            e = self.loop.randn(cfg.imle_pool, cfg.noise_dim, generator=self.rng)  # (M, E)
            with torch.no_grad(), self.loop.autocast():
                pool = self.T(e)
            nearest = imle_assign(real, project_to_sphere(pool.float()))  # (B,) into (M, D)
            with self.loop.autocast():
                fake = self.T(e[nearest])
            fake = project_to_sphere(fake.float())  # (B, D)
            loss = (fake - real).square().sum(1).mean()
            self.opt_t.zero_grad()
            loss.backward()
            self.opt_t.step()
            return {"imle_mse": loss.item()}

        return self.loop.run(len(codes), cfg.imle_batch, self.rng, step, on_batch)

    @torch.no_grad()
    def _decode(self, z: Tensor) -> Tensor:
        was_training = self.G.training
        self.G.eval()
        with self.loop.autocast():
            out = torch.cat([self.G(chunk).float() for chunk in z.split(1024)]).clamp(0, 1)
        self.G.train(was_training)
        return out.cpu()

    def _generator(self, generator: torch.Generator | None, name: str) -> torch.Generator:
        # Never the training generator: sampling must not change the course of training.
        if generator is None:
            return stream(self.seed, name)
        return check_generator("generator", generator, "cpu")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """GLANN samples G(T(e)/‖T(e)‖), e ~ N(0, I): (n, C, H, W) in [0, 1], on the CPU.

        ``generator`` (a CPU generator) defaults to a fresh stream ``(seed, "sample")``: the
        same images each call.
        """
        n = check_int("n", n, low=0)
        gen = self._generator(generator, "sample")
        e = self.loop.randn(n, self.config.noise_dim, generator=gen)  # (n, E)
        with self.loop.autocast():
            z = project_to_sphere(self.T(e).float())
        return self._decode(z)

    @torch.no_grad()
    def sample_gaussian(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """GLO + Gaussian baseline: G(z/‖z‖), z ~ N(μ, Σ) fitted to the current codes (CPU)."""
        n = check_int("n", n, low=0)
        gen = self._generator(generator, "sample")
        mean, cov = fit_gaussian(self.codes.weight.detach().double().cpu())
        chol = torch.linalg.cholesky(cov + 1e-8 * torch.eye(len(mean), dtype=cov.dtype))
        eps = torch.randn(n, len(mean), generator=gen, dtype=torch.float64)
        z = mean + eps @ chol.T  # (n, D)
        return self._decode(self.loop.put(project_to_sphere(z).float()))

    @torch.no_grad()
    def reconstruct(self, index: Tensor) -> Tensor:
        """G(z_i) for training images ``index`` (GLO's reconstructions), on the CPU."""
        return self._decode(self.codes.weight[self.loop.put(index)])

    def evaluate(self, data: ImageData, generator: torch.Generator | None = None
                 ) -> dict[str, float]:
        """cFD, precision, recall and cIS of ``len(data.test_x)`` GLANN samples against
        ``data``'s test split (:func:`~kexue.generative.metrics.score_samples`).

        ``generator`` draws the samples (default: a fresh stream ``(seed, "evaluate")``).
        Not under ``no_grad``: the metrics' feature classifier may be trained on first use.
        """
        gen = self._generator(generator, "evaluate")
        return score_samples(self.sample(len(data.test_x), gen), data, generator=gen)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "epoch": self.epoch,
            "rng": self.rng.get_state(),
            "G": self.G.state_dict(),
            "T": self.T.state_dict(),
            "codes": self.codes.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_codes": self.opt_codes.state_dict(),
            "opt_t": self.opt_t.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; training then continues exactly as uninterrupted.

        Raises:
            ValueError: For a state of another format, or saved with a different configuration
                or seed.
        """
        check_state(state, self.config, self.seed)
        self.G.load_state_dict(state["G"])
        self.T.load_state_dict(state["T"])
        self.codes.load_state_dict(state["codes"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_codes.load_state_dict(state["opt_codes"])
        self.opt_t.load_state_dict(state["opt_t"])
        self.rng.set_state(state["rng"].cpu())
        self.epoch = int(state["epoch"])


def _build(data: ImageData, *, epochs: int, seed: int = 0,
           device: str | torch.device | None = None, autocast: str | None = None,
           variant: str | None = None) -> GLANNTrainer:
    """The default GLANN for ``epochs``: 60 % GLO (at least 1 epoch), the rest IMLE."""
    if variant is not None:
        raise ValueError(f"glann has no variants, got variant={variant!r}")
    epochs = check_int("epochs", epochs, low=1)
    glo = max(1, round(0.6 * epochs))
    return GLANNTrainer(data, GLANNTrainConfig(glo_epochs=glo, imle_epochs=epochs - glo),
                        seed=seed, device=device, autocast=autocast)


TRAINER = TrainerEntry(
    build=_build, epochs=lambda shape: 50,
    summary="GLANN: GLO codes and generator (Lap1), then IMLE of the codes (kexue.fm/6394)")
