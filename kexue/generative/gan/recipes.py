"""Each paper's choices as data, and the one function that turns a recipe into a trainer.

=========  ===================================================================================
DCGAN      up-block = norm → ReLU → 4×4 transposed conv (stride 2); down-block = 4×4 conv
           (stride 2) → BN (not on the first) → LeakyReLU(0.2); weights N(0, 0.02²);
           Adam(2e-4, β₁ = 0.5); NS loss. D's BN, which sees real and fake batches separately,
           is what keeps a small DCGAN from collapsing to a few modes
SELF-MOD   the DCGAN with G's BN affine replaced by γ(z), β(z) from a small MLP of z per layer
ResNet     residual up/down blocks, Xavier-uniform init, WGAN-GP with 5 critic steps
SNGAN      spectral norm on every conv/linear of D instead of BN, hinge loss, TTUR
SAGAN      self-attention (gain γ initialised to 0) in G and D, SN in both nets, hinge, TTUR
BigGAN     conditional BN fed by a shared class embedding ⊕ a chunk of the split z, projection
           discriminator, orthogonal init and regularisation, truncation at sampling
=========  ===================================================================================

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kexue._seeds import stream
from kexue.generative.base import TrainerEntry
from kexue.generative.common import init_module
from kexue.generative.data import ImageData
from kexue.generative.gan.layers import (
    ConditionalBatchNorm,
    ResDown,
    ResUp,
    SelfModulatedBatchNorm,
    add_spectral_norm,
)
from kexue.generative.gan.networks import Discriminator, Generator
from kexue.generative.gan.trainer import GANTrainConfig, GANTrainer

__all__ = ["RECIPES", "TRAINER", "GANRecipe", "make_trainer"]

ImageShape = tuple[int, int, int]


@dataclass(frozen=True)
class GANRecipe:
    """One paper's choices: networks and their init, loss and optimiser settings.

    Attributes:
        generator: Keyword arguments of :class:`Generator` (besides ``image_shape``).
        discriminator: Keyword arguments of :class:`Discriminator`.
        spectral_g, spectral_d: Spectrally normalise G / D.
        init: Weight scheme, a key of :data:`~kexue.generative.common.INIT_SCHEMES`.
        train: The paper's optimisation settings (its ``epochs`` is the default schedule).
        conditional: Uses class labels.
    """

    generator: dict[str, Any] = field(default_factory=dict)
    discriminator: dict[str, Any] = field(default_factory=dict)
    spectral_g: bool = False
    spectral_d: bool = False
    init: str = "normal"
    train: GANTrainConfig = field(default_factory=GANTrainConfig)
    conditional: bool = False


_DCGAN_OPT = GANTrainConfig(loss="ns", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))
_SAGAN_OPT = GANTrainConfig(loss="hinge", lr_g=1e-4, lr_d=4e-4, betas=(0.0, 0.9))

RECIPES: dict[str, GANRecipe] = {
    # Radford et al.: transposed convs, BN in G and in D (not on D's input), N(0, 0.02²), NS loss
    "dcgan": GANRecipe(discriminator={"norm": nn.BatchNorm2d}, train=_DCGAN_OPT),
    # Chen et al.: the DCGAN with G's BN affine replaced by γ(z), β(z); D unchanged
    "selfmod": GANRecipe(generator={"norm": SelfModulatedBatchNorm},
                         discriminator={"norm": nn.BatchNorm2d}, train=_DCGAN_OPT),
    # Gulrajani et al.: residual nets under WGAN-GP, 5 critic steps, Adam(1e-4, β = (0, 0.9))
    "resnet": GANRecipe(generator={"block": ResUp}, discriminator={"block": ResDown},
                        init="xavier", train=GANTrainConfig(loss="wgan-gp", lr_g=1e-4, lr_d=1e-4,
                                                           betas=(0.0, 0.9), n_critic=5)),
    # Miyato et al.: the DCGAN-style CNN with SN in D instead of BN, hinge loss, one D step.
    # Adam as in TTUR (lr_d 4e-4, lr_g 1e-4, β = (0, 0.9)): with DCGAN's Adam (β₁ = 0.5) the
    # small SN discriminator collapsed on digits in 3 of 3 seeds, with β₁ = 0 at equal rates in
    # 1 of 3, with TTUR in none (30 epochs, width 16)
    "sngan": GANRecipe(spectral_d=True, train=_SAGAN_OPT),
    # Zhang et al.: residual nets, self-attention at the middle resolution, SN in G and D,
    # hinge loss, TTUR
    "sagan": GANRecipe(generator={"block": ResUp, "attention": "mid"},
                       discriminator={"block": ResDown, "attention": "mid"},
                       spectral_g=True, spectral_d=True, init="xavier", train=_SAGAN_OPT),
    # Brock et al.: SAGAN + class-conditional BN (shared embedding ⊕ split z), projection D,
    # orthogonal init and regularisation (β = 1e-4), 2 D steps per G step, Adam(5e-5 / 2e-4)
    "biggan": GANRecipe(generator={"block": ResUp, "norm": ConditionalBatchNorm,
                                   "split_latent": True, "attention": "mid"},
                        discriminator={"block": ResDown, "attention": "mid"},
                        spectral_g=True, spectral_d=True, init="orthogonal",
                        train=GANTrainConfig(loss="hinge", lr_g=5e-5, lr_d=2e-4,
                                             betas=(0.0, 0.999), n_critic=2, ortho=1e-4),
                        conditional=True),
}


def _resolve(kwargs: dict[str, Any], shape: ImageShape) -> dict[str, Any]:
    """Replace ``attention="mid"`` by half the image side (a resolution of every network)."""
    if kwargs.get("attention") == "mid":
        kwargs = {**kwargs, "attention": shape[1] // 2}
    return kwargs


def make_trainer(recipe: str, data: ImageData, config: GANTrainConfig | None = None, *,
                 seed: int = 0, device: str | torch.device | None = None,
                 autocast: str | None = None, z_dim: int = 32, width: int = 16,
                 stages: int = 2, init: str | None = None, **overrides: Any) -> GANTrainer:
    """Build G and D after ``RECIPES[recipe]`` for ``data`` and wrap them in a trainer.

    Weights and spectral-norm vectors are drawn from the ``"init"`` stream of ``seed``
    (:func:`kexue._seeds.stream`), apart from the trainer's own generator (seeded with
    ``seed``); the networks are built on the meta device, so nothing is drawn from the
    global RNG.

    Args:
        recipe: A key of :data:`RECIPES`.
        data: The images; their shape fixes the networks' input/output.
        config: Optimisation settings; default the recipe's (``recipe.train``).
        seed: Seed of the initialisation and of training.
        device, autocast: See :class:`GANTrainer`.
        z_dim, width, stages: Network size (see :class:`Generator`); the defaults are the
            sizes measured by the ``gan_digits`` experiment and ``bench_gan``.
        init: Weight scheme replacing the recipe's.
        **overrides: Fields of :class:`GANTrainConfig` replacing the config's
            (``epochs=8``, ``batch_size=32``, …).

    Raises:
        ValueError: For an unknown recipe or field, an unsupported image size or bad settings.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    r = RECIPES[recipe]
    if len(data.train_x) == 0:
        raise ValueError(f"data {data.name!r} has no training images (train_x is empty)")
    fields = {f.name for f in dataclasses.fields(GANTrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown GANTrainConfig field(s) {unknown}; fields are {sorted(fields)}")
    config = dataclasses.replace(r.train if config is None else config, **overrides)
    shape = data.shape
    num_classes = data.num_classes if r.conditional else 0
    init_rng = stream(seed, "init")
    with torch.device("meta"):  # built without drawing from the global RNG; init fills
        G = Generator(shape, z_dim=z_dim, width=width, stages=stages,
                      num_classes=num_classes, **_resolve(r.generator, shape))
        D = Discriminator(shape, width=width, stages=stages, num_classes=num_classes,
                          **_resolve(r.discriminator, shape))
    G.to_empty(device="cpu")  # initialised on the CPU stream; the trainer moves them
    D.to_empty(device="cpu")
    init_module(G, init_rng, init or r.init)
    init_module(D, init_rng, init or r.init)
    if r.spectral_g:
        add_spectral_norm(G, init_rng)
    if r.spectral_d:
        add_spectral_norm(D, init_rng)
    return GANTrainer(data, G, D, config, seed=seed, device=device, autocast=autocast)


def _build(data: ImageData, *, epochs: int, seed: int = 0,
           device: str | torch.device | None = None, autocast: str | None = None,
           variant: str | None = None) -> GANTrainer:
    return make_trainer(variant or "dcgan", data, seed=seed, device=device, autocast=autocast,
                        epochs=epochs)


TRAINER = TrainerEntry(
    build=_build,
    # mnist5k has 2.8× the images of digits and 12× the pixels
    epochs=lambda shape: 8 if shape[1] > 16 else 30,
    summary="GAN after a paper's recipe (--recipe): DCGAN, SELF-MOD, ResNet, SNGAN, SAGAN, BigGAN",
    variants=tuple(RECIPES),
)
