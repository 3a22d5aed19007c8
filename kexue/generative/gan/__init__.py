"""GAN architectures from DCGAN to SELF-MOD, built by composition, and one trainer for them.

A generator is a stem (linear map of z to a ``base × base`` feature map), ``stages`` up-blocks
that double the resolution, and a head (norm, ReLU, 3×3 conv, tanh); a discriminator mirrors it
with down-blocks and a linear head. What distinguishes the papers is plugged in, not flagged:
the norm factory ``norm(num_features, cond_dim) -> module`` mapping ``(h, c) -> h'`` (plain,
conditional or self-modulated BN), the block classes, spectral norm, self-attention, the loss.

==============  ===========================================================================
``layers``      spectral norm, the norm layers, up/down blocks, self-attention
``networks``    :class:`Generator`, :class:`Discriminator`, :func:`truncated_normal`
``losses``      :data:`LOSSES` (NS, hinge, WGAN-GP), :func:`orthogonal_penalty`
``trainer``     :class:`GANTrainConfig`, :class:`GANTrainer` (the Trainer contract)
``recipes``     :data:`RECIPES` (each paper's choices), :func:`make_trainer`
==============  ===========================================================================

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    Radford, Metz & Chintala, "Unsupervised Representation Learning with DCGANs", 2016.
    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018.
    Zhang et al., "Self-Attention Generative Adversarial Networks", 2019.
    Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity Natural Image
    Synthesis", 2019 (BigGAN).
    Chen et al., "On Self Modulation for Generative Adversarial Networks", 2019 (SELF-MOD).
"""

from kexue.generative.gan.layers import (
    BatchNorm,
    ConditionalBatchNorm,
    DCGANDown,
    DCGANUp,
    NormFactory,
    ResDown,
    ResUp,
    SelfAttention,
    SelfModulatedBatchNorm,
    SpectralNorm,
    add_spectral_norm,
    init_weights,
    spectral_norm,
)
from kexue.generative.gan.losses import LOSSES, GANLoss, orthogonal_penalty
from kexue.generative.gan.networks import Discriminator, Generator, truncated_normal
from kexue.generative.gan.recipes import RECIPES, TRAINER, GANRecipe, make_trainer
from kexue.generative.gan.trainer import GANTrainConfig, GANTrainer

__all__ = [
    "LOSSES",
    "RECIPES",
    "TRAINER",
    "BatchNorm",
    "ConditionalBatchNorm",
    "DCGANDown",
    "DCGANUp",
    "Discriminator",
    "GANLoss",
    "GANRecipe",
    "GANTrainConfig",
    "GANTrainer",
    "Generator",
    "NormFactory",
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
