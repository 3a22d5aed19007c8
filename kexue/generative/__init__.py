"""Generative models: the GAN line from DCGAN to SELF-MOD, GLANN, NVAE, and offline metrics.

Every trainer meets one contract (:class:`Trainer`: ``fit_epoch``, ``sample``, ``evaluate``,
``state_dict``), is built from a frozen dataclass config, a seed and a device, and composes the
shared pieces of :mod:`kexue.generative.common`. :data:`TRAINERS` is the registry that
``kexue train MODEL`` and the experiments read; add an entry to add a model::

    from kexue.generative import TRAINERS, load_images

    data = load_images("digits")
    trainer = TRAINERS["gan"].build(data, epochs=30, seed=0, variant="sngan", device="auto")
    while trainer.epoch < trainer.epochs:
        trainer.fit_epoch()
    images = trainer.sample(64)              # (64, 1, 8, 8) in [0, 1]
    scores = trainer.evaluate(data)          # {"cfd": …, "precision": …, "recall": …, "cis": …}

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    https://kexue.fm/archives/6394 (非对抗式生成模型GLANN的简单介绍)
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
"""

from kexue.generative import gan, glann, nvae
from kexue.generative.base import STATE_FORMAT, Trainer, TrainerEntry, image_grid
from kexue.generative.common import (
    EpochLoop,
    init_module,
    power_iteration,
    recalibrated_batchnorm,
    reestimate_batchnorm,
)
from kexue.generative.data import IMAGE_DATA, ImageData, binarize, load_images
from kexue.generative.gan import RECIPES, GANTrainConfig, GANTrainer, make_trainer
from kexue.generative.glann import GLANNTrainConfig, GLANNTrainer
from kexue.generative.metrics import fit_classifier, score_samples
from kexue.generative.nvae import NVAE, NVAEConfig, NVAETrainConfig, NVAETrainer

TRAINERS: dict[str, TrainerEntry] = {"gan": gan.TRAINER, "glann": glann.TRAINER,
                                      "nvae": nvae.TRAINER}
"""The models ``kexue train`` offers: name → :class:`TrainerEntry` (builder, default schedule)."""

__all__ = [
    "IMAGE_DATA",
    "RECIPES",
    "STATE_FORMAT",
    "TRAINERS",
    "EpochLoop",
    "GANTrainConfig",
    "GANTrainer",
    "GLANNTrainConfig",
    "GLANNTrainer",
    "ImageData",
    "NVAE",
    "NVAEConfig",
    "NVAETrainConfig",
    "NVAETrainer",
    "Trainer",
    "TrainerEntry",
    "binarize",
    "fit_classifier",
    "image_grid",
    "init_module",
    "load_images",
    "make_trainer",
    "power_iteration",
    "recalibrated_batchnorm",
    "reestimate_batchnorm",
    "score_samples",
]
