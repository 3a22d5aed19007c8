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

Modules: :mod:`~kexue.generative.nvae.likelihoods` (densities, KL, bounds),
:mod:`~kexue.generative.nvae.model` (cells, :class:`NVAE`, :class:`SpectralRegularizer`),
:mod:`~kexue.generative.nvae.trainer` (:class:`NVAETrainer` and its config).

References:
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
    Vahdat & Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020.
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    Salimans et al., "PixelCNN++", ICLR 2017 (discretised logistic mixture).
"""

from kexue.generative.common import reestimate_batchnorm
from kexue.generative.nvae.likelihoods import (
    LIKELIHOODS,
    kl_balance_coefficients,
    log_mean_exp,
    logistic_mixture_log_prob,
    normal_log_prob,
    residual_normal_kl,
    sample_logistic_mixture,
)
from kexue.generative.nvae.model import NVAE, NVAEConfig, NVAEOutput, SpectralRegularizer
from kexue.generative.nvae.trainer import TRAINER, NVAETrainConfig, NVAETrainer

__all__ = [
    "LIKELIHOODS",
    "NVAE",
    "TRAINER",
    "NVAEConfig",
    "NVAEOutput",
    "NVAETrainConfig",
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
