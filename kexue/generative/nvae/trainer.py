"""The NVAE trainer: negative ELBO with KL warm-up and balancing, spectral regularisation,
Adamax with a cosine learning rate, on :class:`~kexue.generative.common.EpochLoop`.

References:
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from kexue._checks import check_generator, check_int, check_real
from kexue._seeds import stream
from kexue.generative.base import STATE_FORMAT, TrainerEntry, check_state
from kexue.generative.common import EpochLoop, recalibrated_batchnorm
from kexue.generative.data import ImageData
from kexue.generative.nvae.likelihoods import kl_balance_coefficients, uniform
from kexue.generative.nvae.model import NVAE, NVAEConfig

__all__ = ["TRAINER", "NVAETrainConfig", "NVAETrainer"]


@dataclass(frozen=True)
class NVAETrainConfig:
    """Schedule and hyper-parameters of an :class:`NVAETrainer`.

    Attributes:
        epochs: Planned epochs (the schedules refer to them), ≥ 1.
        batch_size: Minibatch size, ≥ 2 (BatchNorm).
        lr, lr_min: Cosine learning-rate schedule endpoints, lr > 0 and lr_min ≥ 0.
        kl_warmup: Fraction of training over which β rises to 1, in [0, 1].
        kl_min: β_min, in [0, 1].
        kl_balance: Whether to balance the KL terms during warm-up.
        spectral: λ of the spectral regulariser, ≥ 0.
        weight_decay: Adamax weight decay, ≥ 0.
        model: The architecture; None: :class:`NVAEConfig` defaults with latents on the 4×4
            grid for 8×8 images (one halving) and on the 7×7 grid for 28×28 (two).

    Raises:
        ValueError: Naming the field, for a value out of its range (an int field refuses 2.5
            and True, a real one NaN).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-2
    lr_min: float = 1e-4
    kl_warmup: float = 0.3
    kl_min: float = 1e-4
    kl_balance: bool = True
    spectral: float = 1e-3
    weight_decay: float = 3e-4
    model: NVAEConfig | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("epochs", check_int("epochs", self.epochs, low=1))
        put("batch_size", check_int("batch_size", self.batch_size, low=2))
        put("lr", check_real("lr", self.lr, low=0, low_open=True))
        for name in ("lr_min", "spectral", "weight_decay"):
            put(name, check_real(name, getattr(self, name), low=0))
        for name in ("kl_warmup", "kl_min"):
            put(name, check_real(name, getattr(self, name), low=0, high=1))
        if not isinstance(self.kl_balance, bool):
            raise ValueError(f"kl_balance must be a bool, got {self.kl_balance!r}")
        if isinstance(self.model, dict):  # as dataclasses.asdict wrote it in a state
            put("model", NVAEConfig(**self.model))
        if self.model is not None and not isinstance(self.model, NVAEConfig):
            raise ValueError(f"model must be an NVAEConfig or None, got "
                             f"{type(self.model).__name__}")


def default_architecture(shape: tuple[int, int, int]) -> NVAEConfig:
    """:class:`NVAEConfig` defaults, with two halvings (7×7 latents for 28×28) for images of
    at least 16 pixels divisible by 4, else one (4×4 for 8×8)."""
    h, w = shape[1:]
    return NVAEConfig(downsamples=2 if min(h, w) >= 16 and h % 4 == w % 4 == 0 else 1)


class NVAETrainer:
    """Trains an :class:`NVAE` on an :class:`~kexue.generative.data.ImageData` (Trainer protocol).

    Per step: a shuffled minibatch (binarised afresh for the Bernoulli likelihood: dynamic
    binarisation), one posterior sample, loss

        mean_b [−log p(x|z) + β_t Σ_i γ_i KL_i] + λ Σ_l σ_max(W_l),

    β_t = max(β_min, t / (warmup·T)) (T total steps), γ from :func:`kl_balance_coefficients` while
    β_t < 1 (ones afterwards), Adamax with a cosine learning rate from ``lr`` to ``lr_min``.
    Initial weights come from the stream ``(seed, "init")``; shuffling, binarisation and
    posterior noise from the training generator ``rng`` (seeded with ``seed``, saved in
    :meth:`state_dict`), drawn on the CPU and moved to the device; :meth:`sample` and
    :meth:`evaluate` default to the streams ``(seed, "sample")`` and ``(seed, "evaluate")``.

    Args:
        data: Training images (``data.train_x``); :meth:`evaluate` scores ``data.test_x``.
        config: Schedule, hyper-parameters and architecture (None: defaults).
        seed: Seed of every stream.
        device: Where the model trains (``"cpu"``, ``"cuda"``, ``"auto"``).
        autocast: ``None``, ``"bf16"`` or ``"fp16"`` (CUDA): precision of the forward passes.

    Attributes:
        config: The configuration, its ``model`` resolved to the architecture built.
        model: The :class:`NVAE`.

    Raises:
        ValueError: For empty training data, images the architecture does not support, or an
            unknown device or autocast.
    """

    def __init__(self, data: ImageData, config: NVAETrainConfig | None = None, *,
                 seed: int = 0, device: str | torch.device | None = None,
                 autocast: str | None = None) -> None:
        config = NVAETrainConfig() if config is None else config
        if not isinstance(config, NVAETrainConfig):
            raise ValueError(f"config must be an NVAETrainConfig or None, got "
                             f"{type(config).__name__}")
        if len(data.train_x) == 0:
            raise ValueError(f"data {data.name!r} has no training images (train_x is empty)")
        self.seed = check_int("seed", seed, low=0, high=2**64 - 1)
        x = data.train_x
        arch = config.model if config.model is not None else default_architecture(data.shape)
        if arch.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
            raise ValueError("train_x must lie in [0, 1] for the Bernoulli likelihood")
        self.config = dataclasses.replace(config, model=arch)
        self.data = data
        self.loop = EpochLoop(device, autocast)
        self.device = self.loop.device
        self.x = self.loop.put(x)
        self.epochs, self.epoch, self.step = config.epochs, 0, 0
        self.rng = torch.Generator().manual_seed(seed)
        self.model = NVAE(data.shape, arch, generator=stream(seed, "init"))
        self.loop.place(self.model)
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=config.lr, eps=1e-3,
                                            foreach=True, weight_decay=config.weight_decay)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.x), self.config.batch_size)
        return full + (rest >= 2)  # a last batch of one image is dropped (BatchNorm)

    def _schedules(self) -> tuple[float, float]:
        cfg = self.config
        total = self.epochs * self.steps_per_epoch
        t = min(self.step / total, 1.0)
        lr = cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1 + math.cos(math.pi * t))
        warm = cfg.kl_warmup * total
        beta = 1.0 if warm == 0 else max(cfg.kl_min, min(1.0, self.step / warm))
        return lr, beta

    def _targets(self, x: Tensor) -> Tensor:
        if self.config.model.likelihood == "bernoulli":  # dynamic binarisation
            return (uniform(x, self.rng) < x).to(x.dtype)
        return x

    def fit_epoch(self, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train one epoch; returns the means of loss, neg_elbo, recon, kl, spectral, beta."""
        model, cfg = self.model, self.config
        model.train()

        def step(index: Tensor) -> dict[str, float]:
            lr, beta = self._schedules()
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x = self._targets(self.x[self.loop.put(index)])
            with parametrize.cached():
                with self.loop.autocast():
                    out = model(x, generator=self.rng)
                log_px, kl = out.log_px.float(), out.kl.float()  # (B,), (B, G)
                if cfg.kl_balance and beta < 1:
                    gamma = kl_balance_coefficients(kl, model.group_sizes)
                else:
                    gamma = kl.new_ones(kl.shape[1])
                reg = model.spectral() if cfg.spectral > 0 else kl.new_zeros(())
                loss = (-log_px + beta * (kl * gamma).sum(1)).mean() + cfg.spectral * reg
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            return {"loss": loss.item(), "neg_elbo": (kl.sum(1) - log_px).mean().item(),
                    "recon": -log_px.mean().item(), "kl": kl.sum(1).mean().item(),
                    "spectral": reg.item(), "beta": beta}

        out = self.loop.run(len(self.x), cfg.batch_size, self.rng, step, on_batch, min_batch=2)
        self.epoch += 1
        return out

    def _generator(self, generator: torch.Generator | None, name: str) -> torch.Generator:
        # Never the training generator: sampling and scoring leave the course of training alone.
        if generator is None:
            return stream(self.seed, name)
        return check_generator("generator", generator, "cpu")

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, samples: int = 100,
                       generator: torch.Generator | None = None) -> dict[str, float]:
        """Mean negative ELBO and importance-weighted NLL (nats) of images ``x`` in eval mode.

        ``x`` must already be in the likelihood's space (binary for Bernoulli: binarise the
        test set once, with a fixed generator, for a static benchmark). ``generator`` (CPU)
        draws the posterior samples; default: a fresh stream ``(seed, "evaluate")``.

        Returns:
            ``{"neg_elbo": −ELBO, "nll": −L_K}`` with K = ``samples`` (:meth:`NVAE.evaluate`).
        """
        samples = check_int("samples", samples, low=1)
        gen = self._generator(generator, "evaluate")
        was_training = self.model.training
        self.model.eval()
        try:  # in full precision whatever ``autocast``: log w sums hundreds of terms
            elbo, iw = self.model.evaluate(self.loop.put(x), samples, gen)
        finally:
            self.model.train(was_training)
        return {"neg_elbo": -elbo.mean().item(), "nll": -iw.mean().item()}

    @torch.no_grad()
    def evaluate(self, data: ImageData, generator: torch.Generator | None = None,
                 samples: int = 20) -> dict[str, float]:
        """Negative ELBO and IW NLL (K = ``samples``) of ``data``'s test split, in nats.

        For the Bernoulli likelihood the test images are binarised first, with ``generator``
        (default: a fresh stream ``(seed, "evaluate")``), which then draws the posterior
        samples; see :meth:`log_likelihood`.
        """
        gen = self._generator(generator, "evaluate")
        x = data.test_x
        if self.config.model.likelihood == "bernoulli":
            x = (uniform(x, gen) < x).to(x.dtype)
        return self.log_likelihood(x, samples, gen)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               temperature: float = 1.0, bn_steps: int = 20, bn_batch: int = 64) -> Tensor:
        """``n`` images from the prior after re-estimating the decoder's BN statistics.

        The statistics are re-estimated from ``bn_steps`` batches of prior samples (drawn from
        ``generator``, default a fresh stream ``(seed, "sample")``) and put back afterwards
        (:func:`~kexue.generative.common.recalibrated_batchnorm`), so sampling leaves the
        trainer unchanged. Bernoulli models return pixel probabilities; on the CPU.
        ``temperature`` ≥ 0 scales the prior's standard deviations; ``bn_steps`` and
        ``bn_batch`` are ints ≥ 1.
        """
        n = check_int("n", n, low=0)
        temperature = check_real("temperature", temperature, low=0)
        check_int("bn_steps", bn_steps, low=1)
        check_int("bn_batch", bn_batch, low=1)
        gen = self._generator(generator, "sample")
        model = self.model
        was_training = model.training

        def prior_batch() -> None:
            with self.loop.autocast():
                model.generate(bn_batch, gen, temperature=temperature)

        try:
            with recalibrated_batchnorm(model.decoder, prior_batch, bn_steps):
                model.eval()
                with self.loop.autocast():
                    return model.generate(n, gen, temperature=temperature).float().cpu()
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "config": dataclasses.asdict(self.config),
                "seed": self.seed, "epoch": self.epoch, "step": self.step,
                "rng": self.rng.get_state(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; training then continues exactly as uninterrupted.

        Raises:
            ValueError: For a state of another format, or saved with a different configuration
                or seed.
        """
        check_state(state, self.config, self.seed)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"].cpu())
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def _default_epochs(shape: tuple[int, int, int]) -> int:
    """20 epochs for images bigger than 16 pixels (mnist5k), else 50 (digits)."""
    return 20 if shape[1] > 16 else 50


def _build(data: ImageData, *, epochs: int, seed: int = 0,
           device: str | torch.device | None = None, autocast: str | None = None,
           variant: str | None = None) -> NVAETrainer:
    """The default NVAE (architecture for the image size) trained for ``epochs``."""
    if variant is not None:
        raise ValueError(f"nvae has no variants, got variant={variant!r}")
    return NVAETrainer(data, NVAETrainConfig(epochs=epochs), seed=seed, device=device,
                       autocast=autocast)


TRAINER = TrainerEntry(
    build=_build, epochs=_default_epochs,
    summary="NVAE: hierarchical VAE, residual normal posteriors, IW likelihood (kexue.fm/7574)")
