"""One trainer for every GAN of the package: alternating D and G steps, penalties, EMA of G.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    https://kexue.fm/archives/6583 (R1, TTUR)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue._seeds import stream
from kexue.generative.base import STATE_FORMAT, check_state
from kexue.generative.common import EpochLoop, recalibrated_batchnorm
from kexue.generative.data import ImageData
from kexue.generative.gan.losses import LOSSES, orthogonal_penalty
from kexue.generative.gan.networks import truncated_normal
from kexue.train import EMA, ema_warmup
from kexue.train.penalties import gradient_penalty, r1_penalty, r2_penalty

__all__ = ["GANTrainConfig", "GANTrainer"]


@dataclass(frozen=True)
class GANTrainConfig:
    """The schedule and optimisation settings of a :class:`GANTrainer`.

    Attributes:
        epochs: Planned epochs, ≥ 1.
        batch_size: Images per batch (the last incomplete batch is dropped), ≥ 1.
        loss: A key of :data:`~kexue.generative.gan.LOSSES`.
        lr_g, lr_d: Adam learning rates of G and D (TTUR when they differ), > 0.
        betas: Adam's (β₁, β₂), each in [0, 1).
        n_critic: D steps per G step, ≥ 1.
        gp: Weight of the one-centred gradient penalty, ≥ 0; None takes the loss's default.
        r1, r2: Weights γ ≥ 0 of the R1 (real) / R2 (fake) penalties.
        ortho: Weight β ≥ 0 of BigGAN's orthogonal penalty on G.
        ema_decay: Final decay of the EMA of G, in [0, 1) (warmed up with
            :func:`~kexue.train.ema_warmup`).
        truncation: Threshold > 0 of the truncation trick at sampling, or None.

    Raises:
        ValueError: For an unknown loss or a setting out of its range (naming it).
    """

    epochs: int = 30
    batch_size: int = 16
    loss: str = "ns"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1
    gp: float | None = None
    r1: float = 0.0
    r2: float = 0.0
    ortho: float = 0.0
    ema_decay: float = 0.999
    truncation: float | None = None

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("n_critic", self.n_critic, low=1)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        for name in ("lr_g", "lr_d"):
            check_real(name, getattr(self, name), low=0, low_open=True)
        for name in ("r1", "r2", "ortho"):
            check_real(name, getattr(self, name), low=0)
        if self.gp is not None:
            check_real("gp", self.gp, low=0)
        if self.truncation is not None:
            check_real("truncation", self.truncation, low=0, low_open=True)
        check_real("ema_decay", self.ema_decay, low=0, high=1, high_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (β₁, β₂), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_real(f"betas[{i}]", beta, low=0, high=1, high_open=True)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def gp_weight(self) -> float:
        """The gradient-penalty weight in force: ``gp``, or the loss's default."""
        return LOSSES[self.loss].gp if self.gp is None else float(self.gp)


class GANTrainer:
    """Alternating GAN training with EMA of G, meeting :class:`~kexue.generative.base.Trainer`.

    Per batch of real images x (scaled to [−1, 1]) and z ∼ N(0, I) from the trainer's own
    generator ``rng``: one D step on L_D + penalties (the GP, R1 on real, R2 on fake), then,
    every ``n_critic`` batches, one G step on L_G (+ the orthogonal penalty) on the same fake
    batch, scored by the updated D, and an EMA update of G. Conditional models draw fake labels
    uniformly. Separate learning rates give TTUR.

    :meth:`sample` generates from the EMA weights after re-estimating G's BN statistics for them
    ("standing statistics": the running averages were gathered with the raw weights).

    Args:
        data: Training images (``train_x``, ``train_y``).
        generator: ``G(z, y) -> (B, C, H, W)`` in [−1, 1] with attributes ``z_dim`` and
            ``num_classes`` (initialised by the caller; :func:`make_trainer` does it all).
        discriminator: ``D(x, y) -> (B,)``.
        config: Schedule and optimisation settings (default :class:`GANTrainConfig`).
        seed: Seed of the trainer's generator (batches, z, labels, GP interpolation) and of the
            named streams of :meth:`sample` and :meth:`evaluate`, an int in [0, 2⁶⁴).
        device: Where G and D train (``"cpu"``, ``"cuda"``, ``"auto"``); they are moved there.
        autocast: None, ``"bf16"`` or ``"fp16"`` (CUDA): the precision of forward passes.

    Raises:
        ValueError: For empty data, images G cannot produce, a batch larger than the data, or
            gradient penalties on a discriminator with BatchNorm.

    References:
        https://kexue.fm/archives/6549, https://kexue.fm/archives/6583 (R1, TTUR)
    """

    def __init__(self, data: ImageData, generator: nn.Module, discriminator: nn.Module,
                 config: GANTrainConfig | None = None, *, seed: int = 0,
                 device: str | torch.device | None = None, autocast: str | None = None) -> None:
        config = GANTrainConfig() if config is None else config
        if not isinstance(config, GANTrainConfig):
            raise ValueError(f"config must be a GANTrainConfig, got {type(config).__name__}")
        if len(data.train_x) == 0:
            raise ValueError(f"data {data.name!r} has no training images")
        if config.batch_size > len(data.train_x):
            raise ValueError(f"batch_size={config.batch_size} exceeds the {len(data.train_x)} "
                             f"training images")
        if tuple(getattr(generator, "image_shape", data.shape)) != data.shape:
            raise ValueError(f"generator makes images of shape {generator.image_shape}, but "
                             f"data {data.name!r} has {data.shape}")
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                         for m in discriminator.modules())
        if batch_norm and max(config.gp_weight, config.r1, config.r2) > 0:
            # the penalties take ∇_x Σ_b D(x_b), which is the per-sample gradient only when
            # the samples of a batch do not interact, as they do through BatchNorm
            raise ValueError(f"gradient penalties (gp={config.gp_weight}, r1={config.r1}, "
                             f"r2={config.r2}) need a discriminator without BatchNorm (e.g. the "
                             "sngan or sagan recipe)")
        self.seed = check_int("seed", seed, low=0, high=2**64 - 1)
        self.config, self.data = config, data
        self.loop = EpochLoop(device, autocast)
        self.device = self.loop.device
        self.G, self.D = generator, discriminator
        self.loop.place(self.G, self.D)
        self.epochs, self.epoch, self.step = config.epochs, 0, 0
        self.loss = LOSSES[config.loss]
        self.z_dim = int(generator.z_dim)
        self.num_classes = int(getattr(generator, "num_classes", 0))
        # fused: one kernel per step instead of a loop over the many small tensors of a GAN
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=config.betas,
                                      fused=True)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d,
                                      betas=config.betas, fused=True)
        self.ema = EMA(generator, decay=ema_warmup(config.ema_decay))
        self.rng = torch.Generator().manual_seed(self.seed)
        self._x = self.loop.put(data.train_x * 2 - 1)  # (N, C, H, W) in [−1, 1]
        self._y = self.loop.put(data.train_y)

    def _z(self, n: int) -> tuple[Tensor, Tensor | None]:
        z = self.loop.randn(n, self.z_dim, generator=self.rng)
        y = (self.loop.put(torch.randint(self.num_classes, (n,), generator=self.rng))
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
        cfg, loop = self.config, self.loop
        self.G.train()
        self.D.train()
        y = y if self.num_classes else None
        self.step += 1
        g_turn = self.step % cfg.n_critic == 0
        z, y_fake = self._z(len(x))
        with torch.set_grad_enabled(g_turn), loop.autocast():
            fake = self._g(z, y_fake)
        fake_d = fake.detach()
        with loop.autocast():
            # Real and fake in separate forwards, so a D with BN normalises each on its own.
            loss_d = self.loss.d(self._d(x, y), self._d(fake_d, y_fake))
            if cfg.gp_weight:
                loss_d = loss_d + gradient_penalty(lambda t: self._d(t, y), x, fake_d,
                                                   cfg.gp_weight, generator=self.rng)
            if cfg.r1:
                loss_d = loss_d + r1_penalty(lambda t: self._d(t, y), x, cfg.r1)
            if cfg.r2:
                loss_d = loss_d + r2_penalty(lambda t: self._d(t, y_fake), fake_d, cfg.r2)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        out = {"loss_d": loss_d.item()}
        if g_turn:
            with loop.autocast():
                loss_g = self.loss.g(self._d(fake, y_fake))
                if cfg.ortho:
                    loss_g = loss_g + orthogonal_penalty(self.G, cfg.ortho)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self.ema.update()
            out["loss_g"] = loss_g.item()
        return out

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch over shuffled full batches; returns the mean of each loss."""
        losses = self.loop.run(
            len(self._x), self.config.batch_size, self.rng,
            lambda index: self.train_step(self._x[index], self._y[index]), on_batch,
            min_batch=self.config.batch_size)
        self.epoch += 1
        return losses

    def _latents(self, n: int, generator: torch.Generator,
                 balanced: bool) -> tuple[Tensor, Tensor | None]:
        if self.config.truncation is None:
            z = torch.randn(n, self.z_dim, generator=generator, device=generator.device)
        else:
            z = truncated_normal((n, self.z_dim), self.config.truncation, generator)
        z = self.loop.put(z)
        if not self.num_classes:
            return z, None
        if balanced:
            return z, self.loop.put(torch.arange(n) % self.num_classes)
        return z, self.loop.put(torch.randint(self.num_classes, (n,), generator=generator,
                                              device=generator.device))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               stat_batches: int = 8, stat_batch_size: int = 256) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1], float32 on the CPU, from the EMA of G.

        BN statistics are re-estimated for the EMA weights from ``stat_batches`` batches of
        fresh latents (BigGAN's standing statistics); the training weights and statistics are
        untouched. Conditional generators get labels 0, 1, …, K−1, 0, … in turn.

        Args:
            n: Number of images, ≥ 0.
            generator: Source of the latents; None uses the trainer's ``"sample"`` stream, so
                repeated calls return the same images (the training RNG is not used).
            stat_batches, stat_batch_size: The batches used for the BN statistics, ≥ 1.
        """
        check_int("n", n, low=0)
        check_int("stat_batches", stat_batches, low=1)
        check_int("stat_batch_size", stat_batch_size, low=1)
        if generator is None:
            generator = stream(self.seed, "sample")
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.G.modules())
        was_training = self.G.training
        try:
            # inside swapped() the EMA weights and buffer copies stand in for G's
            with self.ema.swapped(), self.loop.autocast():
                standing = recalibrated_batchnorm(
                    self.G, lambda: self._g(*self._latents(stat_batch_size, generator, False)),
                    stat_batches) if has_bn else contextlib.nullcontext()
                with standing:
                    self.G.eval()
                    z, y = self._latents(n, generator, balanced=True)
                    out = (self._g(z, y).float() + 1) / 2 if n else torch.empty(0, *self.data.shape)
        finally:
            self.G.train(was_training)
        return out.clamp(0, 1).cpu()

    def evaluate(self, data: ImageData, generator: torch.Generator | None = None
                 ) -> dict[str, float]:
        """cFD, precision, recall and cIS of as many EMA samples as ``data`` has test images
        (:func:`~kexue.generative.metrics.score_samples`); ``generator`` draws the latents
        (default: the trainer's ``"evaluate"`` stream)."""
        from kexue.generative.metrics import score_samples

        if generator is None:
            generator = stream(self.seed, "evaluate")
        samples = self.sample(len(data.test_x), generator)
        return score_samples(samples, data, generator=generator)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser states, EMA, RNG state and counters: all that resuming needs."""
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch,
            "step": self.step,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": self.rng.get_state(),
            "seed": self.seed,  # of the sample and evaluate streams; a load must match it
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; training then continues bit for bit.

        Raises:
            ValueError: For a state of another format or saved with another config.
        """
        check_state(state, self.config, self.seed)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.rng.set_state(state["rng"].cpu())
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
