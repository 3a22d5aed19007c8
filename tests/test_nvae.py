"""NVAE: closed-form KL, exact log-likelihood of a tiny model vs ELBO and IW bounds, the
discretised logistic mixture's normalisation, the spectral regulariser, BN re-estimation,
bit-exact resume and clear errors.

The exact log p(x) comes from a model with two scalar latent groups on 2×2 binary images: with
z_1 = ε_1 and z_2 = μ_p(z_1) + σ_p(z_1) ε_2, p(x) = E_{ε ~ N(0, I₂)} p(x | z(ε)) is a smooth 2-D
Gaussian integral, computed by tensor-product Gauss–Hermite quadrature in float64 and checked for
convergence in the number of nodes. It depends on the decoder only, so it is the same target for
any encoder: the bounds are checked with the trained encoder and with a deliberately poor one.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from kexue.generative.base import Trainer
from kexue.generative.data import ImageData, load_images
from kexue.generative.nvae import (
    NVAE,
    TRAINER,
    NVAEConfig,
    NVAETrainConfig,
    NVAETrainer,
    SpectralRegularizer,
    kl_balance_coefficients,
    logistic_mixture_log_prob,
    normal_log_prob,
    reestimate_batchnorm,
    residual_normal_kl,
    sample_logistic_mixture,
)
from kexue.generative.nvae.model import _DepthwiseConv

torch.set_num_threads(1)

TINY = NVAEConfig(channels=8, downsamples=1, groups=2, latent_channels=1, encoder_cells=1,
                  decoder_cells=1, expand=2)


def _tiny_data(n: int = 256) -> ImageData:
    """2×2 images: four prototypes, pixel intensities 0.05 / 0.95 (binarised when trained)."""
    g = torch.Generator().manual_seed(0)
    protos = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]],
                          dtype=torch.float32)
    y = torch.randint(0, 4, (n,), generator=g)
    x = (protos[y] * 0.9 + 0.05).view(-1, 1, 2, 2)  # (n, 1, 2, 2)
    return ImageData("tiny", x, y, x[:8], y[:8])


def _digits_subset(n: int = 96) -> ImageData:
    d = load_images("digits")
    return ImageData("digits", d.train_x[:n], d.train_y[:n], d.test_x[:16], d.test_y[:16])


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------

def test_residual_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    shape = (5, 3, 4, 4)
    mu_p = torch.randn(shape, generator=g, dtype=torch.float64)
    log_sigma_p = torch.randn(shape, generator=g, dtype=torch.float64)
    d_mu = torch.randn(shape, generator=g, dtype=torch.float64)
    log_d_sigma = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    q = Normal(mu_p + d_mu, torch.exp(log_sigma_p + log_d_sigma))
    p = Normal(mu_p, torch.exp(log_sigma_p))
    torch.testing.assert_close(residual_normal_kl(d_mu, log_d_sigma, log_sigma_p),
                               kl_divergence(q, p), rtol=1e-12, atol=1e-12)
    z = mu_p + torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(normal_log_prob(z, mu_p, log_sigma_p), p.log_prob(z))


def _unzero_heads(model: NVAE) -> NVAE:
    """Give the posterior and prior heads (zero at init) the generic init's gain g = ‖v‖."""
    with torch.no_grad():
        for heads in (model.encoder["posterior"], model.decoder["prior"]):
            for h in heads:
                w = h[1].parametrizations.weight
                w.original0.copy_(w.original1.flatten(1).norm(dim=1).view_as(w.original0))
    return model


def test_at_initialisation_every_posterior_is_its_prior_and_the_prior_is_standard():
    model = NVAE((1, 8, 8), NVAEConfig(channels=8, groups=2, scales=2)).eval()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, torch.Generator().manual_seed(1))
        s, kl, log_pz, log_qz = model.top_down(model.bottom_up(x),
                                               generator=torch.Generator().manual_seed(2))
        _, _, log_pz_prior, _ = model.top_down(None, n=6,
                                               generator=torch.Generator().manual_seed(2))
    assert torch.equal(out.kl, torch.zeros(6, 4))
    torch.testing.assert_close(log_qz, log_pz)
    # the same noise gives the same z under q and p, and log N(ε; 0, I) over all 2·(4 + 16) dims
    torch.testing.assert_close(log_pz, log_pz_prior)
    eps = torch.Generator().manual_seed(2)
    dims = [torch.randn(6, *shape, generator=eps) for shape in model.latent_shapes]
    expected = sum(-0.5 * (e ** 2 + math.log(2 * math.pi)).sum((1, 2, 3)) for e in dims)
    torch.testing.assert_close(log_pz, expected)


@pytest.mark.parametrize("config", [
    NVAEConfig(channels=8, groups=1, latent_channels=2),  # one group: its KL is exact
    NVAEConfig(channels=8, groups=1, scales=2, downsamples=0, latent_channels=2),  # 1×1 + 2×2
])
def test_model_kl_is_the_expected_log_ratio(config):
    """The analytic KL the model returns, summed over groups, equals E_q[log q(z|x) − log p(z)]
    (with several groups the later KLs are themselves random through z_<i)."""
    model = _unzero_heads(NVAE((1, 2, 2), config, generator=torch.Generator().manual_seed(1)))
    model = model.double().eval()
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64).expand(20000, 1, 2, 2)
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(2))
    ratio, kl = out.log_qz - out.log_pz, out.kl.sum(1)
    if model.num_groups == 1:
        torch.testing.assert_close(kl, kl[:1].expand(20000))  # same x, same KL
    diff = ratio - kl  # mean 0 under q
    assert abs(diff.mean()) < 4 * diff.std() / len(diff) ** 0.5
    assert kl.mean() > 0.1  # the posterior differs from the prior: the check has teeth


def test_kl_balance_coefficients():
    kl = torch.tensor([[1.0, 3.0, 0.0], [3.0, 5.0, 0.0]])  # group means 2, 4, 0
    sizes = torch.tensor([10, 10, 20])
    gamma = kl_balance_coefficients(kl, sizes, floor=0.0)
    torch.testing.assert_close(gamma.mean(), torch.tensor(1.0))
    # ∝ mean KL / relative size: (2/0.25, 4/0.25, 0) -> (1, 2, 0) · 1.0
    torch.testing.assert_close(gamma, torch.tensor([1.0, 2.0, 0.0]))


# --------------------------------------------------------------------------------------------
# ELBO ≤ IW bound ≤ log p(x) on a model whose likelihood is computed exactly
# --------------------------------------------------------------------------------------------

def _exact_log_px(model: NVAE, xs: torch.Tensor, nodes: int) -> torch.Tensor:
    """log p(x) for each x by Gauss–Hermite quadrature over ε ∈ R² (float64)."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight e^{−t²/2}
    t, log_w = torch.tensor(t), torch.log(torch.tensor(w / w.sum()))
    e1, e2 = torch.meshgrid(t, t, indexing="ij")
    with torch.no_grad():
        s, *_ = model.top_down(None, n=nodes * nodes,
                               noise=[e1.reshape(-1, 1, 1, 1), e2.reshape(-1, 1, 1, 1)])
        out = model.decode(s)  # (nodes², 1, 2, 2)
        log_lik = torch.stack([model.log_likelihood(out, x.expand_as(out)) for x in xs])
    return torch.logsumexp(log_lik + (log_w[:, None] + log_w[None, :]).flatten(), dim=1)


def _train_tiny(config: NVAEConfig, epochs: int, lr: float) -> NVAE:
    """An NVAE trained on 128 tiny images, in float64 and eval mode."""
    trainer = NVAETrainer(_tiny_data(128), NVAETrainConfig(epochs=epochs, batch_size=32, lr=lr,
                                                           model=config), seed=0)
    for _ in range(trainer.epochs):
        trainer.fit_epoch()
    return trainer.model.double().eval()


@pytest.fixture(scope="module")
def tiny_trained() -> NVAE:
    return _train_tiny(TINY, epochs=10, lr=1e-2)


def test_exact_likelihood_by_quadrature_is_converged_and_normalised(tiny_trained):
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)),
                      dtype=torch.float64).view(16, 1, 2, 2)
    coarse, fine = _exact_log_px(tiny_trained, xs, 40), _exact_log_px(tiny_trained, xs, 90)
    torch.testing.assert_close(coarse, fine, atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.logsumexp(fine, 0), torch.tensor(0.0, dtype=torch.float64))


@pytest.mark.parametrize("encoder", ["trained", "poor"])
def test_elbo_below_iw_below_exact_log_likelihood(tiny_trained, encoder):
    model = copy.deepcopy(tiny_trained)
    if encoder == "poor":  # shift every posterior mean, widen every posterior σ by e^0.7
        with torch.no_grad():
            for head in model.encoder["posterior"]:
                head[1].bias[:1] += 1.0
                head[1].bias[1:] += 0.7
    xs = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 1], [0, 0, 0, 0]],
                      dtype=torch.float64).view(4, 1, 2, 2)
    exact = _exact_log_px(model, xs, 90)
    gen = torch.Generator().manual_seed(0)
    means, errs = {}, {}
    scale = 1 if encoder == "poor" else 4  # the trained encoder's bounds are only checked ≤
    for k, repeats in [(1, 4000), (10, 1600), (100, 160), (1000, 8)]:
        repeats = max(4, repeats // scale)
        iw = model.evaluate(xs.repeat(repeats, 1, 1, 1), k, gen, max_batch=16384)[1]
        iw = iw.view(repeats, len(xs))  # (R, 4): independent estimates of L_K
        means[k], errs[k] = iw.mean(0), iw.std(0) / repeats ** 0.5
    elbo = means[1]  # L_1 is the ELBO
    for k in (10, 100, 1000):  # the IW bound never exceeds log p(x) (up to Monte Carlo error)
        assert (means[k] <= exact + 4 * errs[k] + 1e-3).all(), (k, means[k], exact)
    assert (elbo <= exact + 4 * errs[1] + 1e-3).all()
    if encoder == "poor":  # a real gap, which the IW bound closes as K grows
        gap = exact - elbo
        assert (gap > 0.2).all(), (exact, elbo)
        assert (means[10] > elbo + 3 * (errs[10] + errs[1])).all()
        assert (means[100] > means[10] + 3 * (errs[100] + errs[10])).all()
        assert (exact - means[1000] < 0.1 * gap + 4 * errs[1000]).all()  # ≥ 90% of the gap
    mc_elbo, iw_one = model.evaluate(xs, 500, gen)
    assert (mc_elbo <= iw_one).all()  # Jensen, per draw


# --------------------------------------------------------------------------------------------
# Latent groups on several scales
# --------------------------------------------------------------------------------------------

# one 1×1 group over one 2×2 group (5 latent dimensions), 2×2 binary images
TINY_SCALES = NVAEConfig(channels=8, downsamples=0, groups=1, scales=2, latent_channels=1,
                         encoder_cells=1, decoder_cells=1, expand=2)


def test_groups_live_on_their_scales():
    model = _unzero_heads(NVAE((1, 16, 16), NVAEConfig(channels=8, downsamples=1, groups=2,
                                                       scales=3, latent_channels=3))).eval()
    assert model.latent_shapes == [(3, 2, 2)] * 2 + [(3, 4, 4)] * 2 + [(3, 8, 8)] * 2
    assert model.group_sizes.tolist() == [12, 12, 48, 48, 192, 192]
    feats = model.bottom_up(torch.zeros(5, 1, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(5, 8, r, r) for r in (2, 2, 4, 4, 8, 8)]
    with torch.no_grad():  # prior samples with given noise: z_i has the group's shape
        noise = [torch.zeros(5, *shape) for shape in model.latent_shapes]
        s, kl, log_pz, _ = model.top_down(None, n=5, noise=noise)
    assert s.shape == (5, 8, 8, 8) and kl.shape == (5, 6) and log_pz.shape == (5,)
    out = model(torch.zeros(5, 1, 16, 16), torch.Generator().manual_seed(0))
    assert out.kl.shape == (5, 6) and (out.kl > 0).all()
    assert model.generate(3, torch.Generator().manual_seed(0)).shape == (3, 1, 16, 16)


@pytest.fixture(scope="module")
def tiny_scales_trained() -> NVAE:
    return _train_tiny(TINY_SCALES, epochs=30, lr=3e-2)  # lr 3e-2: the latent gets used


def _prior_monte_carlo_log_px(model: NVAE, xs: Tensor, n: int, gen: torch.Generator
                              ) -> tuple[Tensor, Tensor]:
    """log p(x) = log E_{z ~ p(z)} p(x | z) by plain Monte Carlo, and its standard error."""
    chunks = []
    with torch.no_grad():
        for _ in range(n // 20_000):
            s, *_ = model.top_down(None, n=20_000, generator=gen)
            out = model.decode(s)  # (20000, 1, 2, 2)
            chunks.append(torch.stack([model.log_likelihood(out, x.expand_as(out)) for x in xs]))
    log_lik = torch.cat(chunks, 1)  # (len(xs), n)
    log_px = torch.logsumexp(log_lik, 1) - math.log(log_lik.shape[1])
    ratio = torch.exp(log_lik - log_px[:, None])  # p(x|z) / p̂(x), mean 1
    return log_px, ratio.std(1) / log_lik.shape[1] ** 0.5  # δ-method error of log p̂


_BITS_2X2 = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)),
                        dtype=torch.float64).view(16, 1, 2, 2)  # every 2×2 binary image


@pytest.fixture(scope="module")
def tiny_scales_log_px(tiny_scales_trained) -> tuple[Tensor, Tensor]:
    """log p(x) of every 2×2 image and its error; it depends on the decoder only."""
    return _prior_monte_carlo_log_px(tiny_scales_trained, _BITS_2X2, 400_000,
                                     torch.Generator().manual_seed(0))


@pytest.mark.parametrize("encoder", ["trained", "poor"])
def test_multiscale_iw_bound_converges_to_the_likelihood(tiny_scales_trained,
                                                         tiny_scales_log_px, encoder):
    """The IW bound of a 2-scale model, from below, meets log p(x) estimated independently by
    sampling the prior; so log p(z) and log q(z|x) are right on both scales."""
    model = copy.deepcopy(tiny_scales_trained)
    if encoder == "poor":  # shift every posterior mean by 0.5, widen every σ by e^0.3
        with torch.no_grad():
            for head in model.encoder["posterior"]:
                head[1].bias[:1] += 0.5
                head[1].bias[1:] += 0.3
    xs, (log_px, mc_err) = _BITS_2X2, tiny_scales_log_px  # the poor encoder leaves p alone
    torch.testing.assert_close(torch.logsumexp(log_px, 0),  # the 16 images share all mass
                               torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)
    gen = torch.Generator().manual_seed(1)
    elbo = model.evaluate(xs.repeat(400, 1, 1, 1), 1, gen)[1].view(400, 16)
    iw = model.evaluate(xs.repeat(20, 1, 1, 1), 2000, gen, max_batch=40_000)[1].view(20, 16)
    elbo_mean, elbo_err = elbo.mean(0), elbo.std(0) / 20
    iw_mean, iw_err = iw.mean(0), iw.std(0) / 20 ** 0.5
    tol = 4 * (iw_err + mc_err) + 1e-3
    assert (iw_mean <= log_px + tol).all(), (iw_mean, log_px)
    assert (elbo_mean <= log_px + 4 * (elbo_err + mc_err)).all()
    gap = log_px - elbo_mean
    assert (log_px - iw_mean < 0.1 * gap + tol).all(), (log_px - iw_mean, gap)  # ≥ 90% closed
    if encoder == "poor":
        assert (gap > 0.1).all(), gap


# --------------------------------------------------------------------------------------------
# Discretised logistic mixture
# --------------------------------------------------------------------------------------------

def _mixture_params(b: int, k: int, c: int, hw: int, g: torch.Generator, spread: float = 1.0):
    logit_pi = torch.randn(b, k, hw, hw, generator=g, dtype=torch.float64)
    means = spread * torch.randn(b, k, c, hw, hw, generator=g, dtype=torch.float64)
    log_scales = torch.randn(b, k, c, hw, hw, generator=g, dtype=torch.float64) - 2
    coeffs = torch.randn(b, k, 3, hw, hw, generator=g, dtype=torch.float64)
    return logit_pi, means, log_scales, coeffs


@pytest.mark.parametrize("spread", [0.5, 3.0])  # 3.0: means far outside [−1, 1], tiny scales
def test_grey_logistic_mixture_sums_to_one_over_256_bins(spread):
    g = torch.Generator().manual_seed(0)
    logit_pi, means, log_scales, _ = _mixture_params(2, 4, 1, 3, g, spread)
    log_scales = log_scales - (2 if spread > 1 else 0)
    levels = torch.arange(256, dtype=torch.float64) / 255
    log_p = torch.stack([logistic_mixture_log_prob(
        v.expand(2, 1, 3, 3), logit_pi, means, log_scales) for v in levels])  # (256, 2, 3, 3)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(2, 3, 3, dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_colour_logistic_mixture_sums_to_one_jointly():
    """With the RGB coupling, the 8³ joint values of a pixel (8 bins) sum to 1."""
    g = torch.Generator().manual_seed(1)
    bins = 8
    logit_pi, means, log_scales, coeffs = _mixture_params(1, 3, 3, 2, g)
    levels = torch.arange(bins, dtype=torch.float64) / (bins - 1)
    grid = torch.cartesian_prod(levels, levels, levels)  # (512, 3)
    x = grid[:, :, None, None].expand(-1, 3, 2, 2)  # (512, 3, 2, 2)
    rep = [t.expand(len(grid), *t.shape[1:]) for t in (logit_pi, means, log_scales, coeffs)]
    log_p = logistic_mixture_log_prob(x, *rep, bins=bins)  # (512, 2, 2)
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(2, 2, dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_logistic_mixture_sampler_matches_probabilities():
    g = torch.Generator().manual_seed(2)
    bins, n = 6, 60000
    logit_pi, means, log_scales, _ = _mixture_params(1, 3, 1, 1, g)
    probs = torch.stack([logistic_mixture_log_prob(
        torch.full((1, 1, 1, 1), v / (bins - 1), dtype=torch.float64), logit_pi, means,
        log_scales, bins=bins) for v in range(bins)]).exp().flatten()
    rep = [t.expand(n, *t.shape[1:]) for t in (logit_pi, means, log_scales)]
    draws = sample_logistic_mixture(*rep, bins=bins, generator=g)
    freq = torch.bincount(torch.round(draws.flatten() * (bins - 1)).long(), minlength=bins) / n
    assert (freq - probs).abs().max() < 4 * (0.25 / n) ** 0.5


def test_logistic_mixture_model_trains_on_grey_images():
    arch = NVAEConfig(channels=8, likelihood="logistic_mixture", mixtures=3)
    trainer = NVAETrainer(_digits_subset(48), NVAETrainConfig(epochs=2, batch_size=16, model=arch))
    first = trainer.fit_epoch()["neg_elbo"]
    second = trainer.fit_epoch()["neg_elbo"]
    assert np.isfinite(first) and second < first
    images = trainer.sample(4, torch.Generator().manual_seed(0), bn_steps=2, bn_batch=8)
    assert images.shape == (4, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    levels = images * 255
    torch.testing.assert_close(levels, levels.round())  # on the 256-level grid


# --------------------------------------------------------------------------------------------
# Spectral regulariser, depthwise conv, BatchNorm re-estimation
# --------------------------------------------------------------------------------------------

def test_spectral_regularizer_matches_matrix_norm_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    convs = [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 5, 1), nn.Conv2d(6, 6, 5, groups=6)]
    with torch.no_grad():
        for c in convs:
            c.weight.copy_(torch.randn(c.weight.shape, generator=g))
    reg = SpectralRegularizer(convs, generator=g)
    sigmas = reg.sigmas(iterations=300)
    exact = torch.stack([torch.linalg.matrix_norm(c.weight.reshape(c.weight.shape[0], -1), ord=2)
                         for c in convs])
    torch.testing.assert_close(sigmas, exact.detach(), rtol=1e-4, atol=0)
    reg(iterations=1).backward()
    for c in convs:
        w = c.weight.detach().reshape(c.weight.shape[0], -1).requires_grad_()
        torch.linalg.matrix_norm(w, ord=2).backward()
        torch.testing.assert_close(c.weight.grad.reshape_as(w), w.grad, rtol=1e-3, atol=1e-4)


def test_spectral_regularizer_survives_a_zero_weight():
    """NVAE's heads start at W = 0: σ is 0 and u keeps unit norm, so once W moves the power
    iteration still converges to the true σ_max."""
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight.zero_()
    reg = SpectralRegularizer([conv], generator=torch.Generator().manual_seed(0))
    assert reg.sigmas(iterations=3).item() == 0.0
    torch.testing.assert_close(reg.u0.norm(), torch.tensor(1.0))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1)))
    exact = torch.linalg.matrix_norm(conv.weight.detach().reshape(6, -1), ord=2)
    torch.testing.assert_close(reg.sigmas(iterations=300)[0].detach(), exact, rtol=1e-4, atol=0)


def test_dense_depthwise_conv_equals_conv2d():
    g = torch.Generator().manual_seed(0)
    conv = _DepthwiseConv(6, 5).double()
    x = torch.randn(3, 6, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(conv, (x,))
    ref = F.conv2d(x, conv.weight, conv.bias, padding=2, groups=6)
    torch.testing.assert_close(conv(x), ref)


def test_reestimate_batchnorm_gives_the_average_batch_statistics():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, momentum=0.1)).eval()
    batches = [torch.randn(16, 3, generator=g) * (i + 1) + i for i in range(5)]
    it = iter(batches)
    reestimate_batchnorm(net, lambda: net(next(it)), steps=len(batches))
    with torch.no_grad():
        feats = [net[0](b) for b in batches]  # (16, 5) each
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean(0) for f in feats]).mean(0))
    torch.testing.assert_close(bn.running_var,
                               torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0))
    assert bn.momentum == 0.1 and not net.training and not bn.training


# --------------------------------------------------------------------------------------------
# Trainer: contract, groups, resume, sampling leaves state alone
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups, scales", [(1, 1), (2, 1), (1, 2)])
def test_trainer_meets_the_contract(groups, scales):
    arch = NVAEConfig(channels=8, groups=groups, scales=scales)
    trainer = NVAETrainer(_digits_subset(), NVAETrainConfig(epochs=2, batch_size=32, model=arch))
    assert isinstance(trainer, Trainer)
    calls = []
    losses = trainer.fit_epoch(lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3) and trainer.epoch == 1 and np.isfinite(losses["neg_elbo"])
    x = torch.bernoulli(_digits_subset().test_x, generator=torch.Generator().manual_seed(0))
    result = trainer.log_likelihood(x, samples=8, generator=torch.Generator().manual_seed(0))
    assert result["nll"] <= result["neg_elbo"]
    scores = trainer.evaluate(_digits_subset())  # binarised by the stream (seed, "evaluate")
    assert scores.keys() == {"neg_elbo", "nll"} and scores["nll"] <= scores["neg_elbo"]
    assert scores == trainer.evaluate(_digits_subset())
    before = copy.deepcopy(trainer.state_dict())
    images = trainer.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    after = trainer.state_dict()
    for key, value in before["model"].items():  # re-estimation put the BN statistics back
        torch.testing.assert_close(after["model"][key], value, rtol=0, atol=0)


def test_same_seed_same_model_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = NVAE((1, 8, 8), NVAEConfig(channels=8), generator=torch.Generator().manual_seed(5))
    b = NVAE((1, 8, 8), NVAEConfig(channels=8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_defaults_never_touch_the_global_rng():
    """Without a generator: construction, sampling and evaluation use private streams, and
    repeat exactly."""
    d = load_images("digits")
    data = ImageData("digits", d.train_x[:64], d.train_y[:64], d.test_x[:8], d.test_y[:8])
    state = torch.get_rng_state()
    NVAE((1, 8, 8), NVAEConfig(channels=8))
    trainer = NVAETrainer(data, NVAETrainConfig(epochs=1, batch_size=32,
                                                model=NVAEConfig(channels=8, groups=1)))
    first, second = trainer.sample(4), trainer.sample(4)
    bits = (data.test_x > 0.5).float()
    scores = trainer.log_likelihood(bits, samples=2), trainer.log_likelihood(bits, samples=2)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(first, second) and scores[0] == scores[1]
    assert trainer.model.training  # evaluate restores the mode


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_unsupported_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image_shape.*divisible by .* = 4, got \(1, 10, 10\)"):
        NVAE((1, 10, 10), NVAEConfig(downsamples=2))
    with pytest.raises(ValueError, match=r"scales - 1\) = 8, got \(1, 28, 28\)"):
        NVAE((1, 28, 28), NVAEConfig(downsamples=2, scales=2))  # 7×7 cannot halve
    with pytest.raises(ValueError, match="C in"):
        NVAE((2, 8, 8), NVAEConfig(likelihood="logistic_mixture"))
    model = NVAE((1, 8, 8), NVAEConfig(channels=8))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 8, 8\)"):
        model(torch.zeros(2, 1, 28, 28))


def test_empty_data_and_bad_arguments_are_clear_errors():
    empty = torch.zeros(0, 1, 8, 8)
    labels = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ValueError, match="no training images"):
        NVAETrainer(ImageData("digits", empty, labels, empty, labels))
    model = NVAE((1, 8, 8), NVAEConfig(channels=8)).eval()
    with pytest.raises(ValueError, match="x is empty"):
        model.evaluate(empty)
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        model.evaluate(torch.zeros(1, 1, 8, 8), samples=0)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        NVAEConfig(likelihood="gaussian")
    with pytest.raises(ValueError, match="groups must be an int >= 1"):
        NVAEConfig(groups=0)
    with pytest.raises(ValueError, match="scales must be an int >= 1, got 0"):
        NVAEConfig(scales=0)
    with pytest.raises(ValueError, match="config must be an NVAETrainConfig"):
        NVAETrainer(_digits_subset(), NVAEConfig(channels=8))
    with pytest.raises(ValueError, match="variant"):
        TRAINER.build(_digits_subset(), epochs=1, variant="sngan")
    with pytest.raises(ValueError, match="autocast"):
        NVAETrainer(_digits_subset(), autocast="fp16")  # fp16 needs CUDA


@pytest.mark.parametrize("cls, name, bad", [
    *[(NVAETrainConfig, "epochs", v) for v in (2.5, True, 0)],
    *[(NVAETrainConfig, "batch_size", v) for v in (2.5, True, 1)],
    *[(NVAETrainConfig, n, v) for n in ("lr", "lr_min", "kl_warmup", "kl_min", "spectral",
                                        "weight_decay") for v in (math.nan, True, -0.1, math.inf)],
    (NVAETrainConfig, "lr", 0.0), (NVAETrainConfig, "kl_warmup", 1.5),
    (NVAETrainConfig, "kl_min", 1.5), (NVAETrainConfig, "kl_balance", 1),
    (NVAETrainConfig, "model", "big"),
    *[(NVAEConfig, n, v) for n in ("channels", "groups", "scales", "latent_channels", "expand",
                                   "mixtures", "downsamples", "encoder_cells", "decoder_cells")
      for v in (2.5, True, -1)],
    *[(NVAEConfig, n, v) for n in ("residual_scale", "bn_momentum")
      for v in (math.nan, True, -0.1, math.inf)],
    (NVAEConfig, "residual_scale", 0.0), (NVAEConfig, "bn_momentum", 1.5),
])
def test_configs_reject_out_of_range_values(cls, name, bad):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        cls(**{name: bad})


def test_old_state_format_is_one_clear_error():
    trainer = NVAETrainer(_digits_subset(), NVAETrainConfig(epochs=1, model=NVAEConfig(channels=8)))
    state = trainer.state_dict()
    old = {"model": state["model"], "optimizer": state["optimizer"], "epochs": 1,
           "generator": state["rng"], "epoch": 0, "step": 0,
           "config": dataclasses.asdict(trainer.config.model)}  # the format-1 layout
    with pytest.raises(ValueError, match="format 1.*format 2"):
        trainer.load_state_dict(old)
    other = NVAETrainer(_digits_subset(), NVAETrainConfig(epochs=2, model=NVAEConfig(channels=8)))
    with pytest.raises(ValueError, match="config"):
        trainer.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="seed"):
        trainer.load_state_dict(NVAETrainer(_digits_subset(), trainer.config, seed=1).state_dict())


# --------------------------------------------------------------------------------------------
# Initialisation, registry, precision
# --------------------------------------------------------------------------------------------

def test_initialisation_is_lecun_uniform_with_zero_heads_from_the_init_stream():
    """Every weight-normalised conv's direction v ~ U(±√(3/fan_in)) with g = ‖v‖ (so W = v),
    zero biases, h_0 = 0 and zero posterior/prior gains; a trainer draws them from the stream
    (seed, "init"), so its training generator starts at ``seed`` untouched."""
    from kexue._seeds import stream

    trainer = NVAETrainer(_digits_subset(), NVAETrainConfig(epochs=1, model=NVAEConfig(channels=8)),
                          seed=7)
    model = trainer.model
    assert torch.equal(trainer.rng.get_state(), torch.Generator().manual_seed(7).get_state())
    again = NVAE((1, 8, 8), trainer.config.model, generator=stream(7, "init"))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    heads = {id(h[1]) for hs in (model.encoder["posterior"], model.decoder["prior"]) for h in hs}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 20 and len(heads) == 3
    for conv in convs:
        v = conv.parametrizations.weight.original1
        g = conv.parametrizations.weight.original0
        bound = math.sqrt(3.0 / v[0].numel())
        assert v.abs().max() <= bound and v.abs().max() > 0.5 * bound
        assert not conv.bias.any()
        if id(conv) in heads:
            assert not g.any() and not conv.weight.any()
        else:
            torch.testing.assert_close(conv.weight, v)  # g = ‖v‖
    assert not model.h0.any()
    for i in range(len(convs)):  # the spectral regulariser's vectors are unit
        torch.testing.assert_close(getattr(model.spectral, f"u{i}").norm(), torch.tensor(1.0))


def test_registry_entry_defaults():
    assert TRAINER.epochs((1, 8, 8)) == 50 and TRAINER.epochs((1, 28, 28)) == 20
    trainer = TRAINER.build(_digits_subset(), epochs=3, seed=4)
    assert (trainer.epochs, trainer.seed, trainer.config.model.downsamples) == (3, 4, 1)
    assert trainer.config == NVAETrainConfig(epochs=3, model=NVAEConfig(downsamples=1))
    assert NVAETrainConfig(**dataclasses.asdict(trainer.config)) == trainer.config


def test_bf16_autocast_on_cpu_trains_close_to_float32():
    def make(autocast):
        config = NVAETrainConfig(epochs=2, batch_size=32, model=NVAEConfig(channels=8))
        return NVAETrainer(_digits_subset(64), config, seed=1, autocast=autocast)

    full, half = make(None), make("bf16")
    for _ in range(2):
        exact, approx = full.fit_epoch(), half.fit_epoch()
        assert all(np.isfinite(v) for v in approx.values())
        # the same batches, bits and noise; bf16 convs (8 mantissa bits) move the loss a little
        assert approx["neg_elbo"] == pytest.approx(exact["neg_elbo"], rel=0.05)
    assert half.sample(3).dtype == torch.float32
