"""GLANN: the Laplacian pyramid and Lap1, IMLE's nearest neighbours, and the trainer's contract.

References are independent of the implementation: a brute-force double loop for nearest
neighbours, ``numpy.cov`` for the fitted Gaussian, closed forms for the pyramid of a constant
image and for Lap1 under a constant shift, and an uninterrupted run for checkpoint resume.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from kexue.generative.base import Trainer
from kexue.generative.data import ImageData, load_images
from kexue.generative.glann import (
    TRAINER,
    GLANNTrainConfig,
    GLANNTrainer,
    fit_gaussian,
    imle_assign,
    lap1_loss,
    laplacian_pyramid,
    project_to_sphere,
    reconstruct_pyramid,
)

torch.set_num_threads(1)

SMALL = GLANNTrainConfig(glo_epochs=2, imle_epochs=2, code_dim=4, noise_dim=3, width=16,
                         batch_size=32, imle_batch=40, imle_pool=64)


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_images("digits", seed=0)


@pytest.fixture(scope="module")
def small(digits) -> ImageData:
    return ImageData("digits", digits.train_x[:120], digits.train_y[:120],
                     digits.test_x[:30], digits.test_y[:30])


# --------------------------------------------------------------------------- pyramid, Lap1

@pytest.mark.parametrize("size", [(8, 8), (28, 28), (7, 12)])
def test_pyramid_reconstructs_exactly(size):
    x = torch.rand(3, 2, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bands = laplacian_pyramid(x)
    assert bands[0].shape == x.shape and len(bands) >= 2
    torch.testing.assert_close(reconstruct_pyramid(bands), x, rtol=0, atol=1e-12)


def test_pyramid_of_constant_image_is_all_low_pass():
    x = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    bands = laplacian_pyramid(x, levels=3)
    assert [tuple(b.shape[-2:]) for b in bands] == [(8, 8), (4, 4), (2, 2)]
    for band in bands[:-1]:
        torch.testing.assert_close(band, torch.zeros_like(band), rtol=0, atol=1e-15)
    torch.testing.assert_close(bands[-1], torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64))


def test_lap1_closed_forms():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=gen)
    assert lap1_loss(x, x).item() == 0.0
    # A constant shift c lives only in the 2×2 low-pass: 2^{2·2} · 4|c| / 64 = |c|.
    assert lap1_loss(x, x + 0.25).item() == pytest.approx(0.25, rel=1e-12)
    # Any other change is seen (the pyramid is invertible): one pixel changed in one image.
    y = x.clone()
    y[2, 0, 3, 5] += 1e-3
    assert lap1_loss(x, y).item() > 0
    # The matrix route equals the definition summed band by band.
    z = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=gen)
    direct = sum(4.0 ** j * (a - b).abs().sum() / 64
                 for j, (a, b) in enumerate(zip(laplacian_pyramid(x), laplacian_pyramid(z))))
    assert lap1_loss(x, z).item() == pytest.approx(direct.item() / 4, rel=1e-12)


def test_pyramid_and_lap1_reject_bad_input():
    with pytest.raises(ValueError, match="levels"):
        laplacian_pyramid(torch.zeros(1, 1, 8, 8), levels=6)
    with pytest.raises(ValueError, match="same shape"):
        lap1_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))


# --------------------------------------------------------------------------- IMLE, Gaussian

def test_imle_assign_matches_brute_force():
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(37, 5, dtype=torch.float64, generator=gen)
    fake = torch.randn(200, 5, dtype=torch.float64, generator=gen)
    got = imle_assign(real, fake)
    for i in range(len(real)):
        best = min(range(len(fake)), key=lambda j: float(((real[i] - fake[j]) ** 2).sum()))
        assert got[i].item() == best
    # A generated copy of each real code is always its own nearest neighbour.
    perm = torch.randperm(len(real), generator=gen)
    pool = torch.cat([fake, real[perm]])
    expected = len(fake) + torch.argsort(perm)
    assert torch.equal(imle_assign(real, pool), expected)
    with pytest.raises(ValueError):
        imle_assign(real, torch.zeros(0, 5, dtype=torch.float64))


def test_fit_gaussian_matches_numpy():
    codes = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mean, cov = fit_gaussian(codes)
    np.testing.assert_allclose(mean.numpy(), codes.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(codes.numpy(), rowvar=False), rtol=1e-12)


# --------------------------------------------------------------------------- trainer

def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def _flat(trainer: GLANNTrainer) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("G", "T", "codes"):
        for k, v in getattr(trainer, name).state_dict().items():
            out[f"{name}.{k}"] = v
    return out


def test_trainer_contract_and_global_rng(small):
    before = torch.get_rng_state()
    trainer = GLANNTrainer(small, SMALL, seed=0)
    assert isinstance(trainer, Trainer)
    stages = []
    while trainer.epoch < trainer.epochs:
        stages.append(trainer.stage)
        out = trainer.fit_epoch(on_batch=lambda done, total: None)
        assert all(np.isfinite(v) for v in out.values())
    assert stages == ["glo", "glo", "imle", "imle"]
    # GLO keeps every code on the unit sphere.
    torch.testing.assert_close(trainer.codes.weight.norm(dim=1), torch.ones(len(small.train_x)))
    for draw in (trainer.sample, trainer.sample_gaussian):
        x = draw(7, torch.Generator().manual_seed(0))
        assert x.shape == (7, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
        assert torch.equal(draw(7), draw(7))  # default generator: the same draw every call
    assert torch.equal(torch.get_rng_state(), before)


def test_glo_and_imle_learn(small):
    config = dataclasses.replace(SMALL, glo_epochs=8, imle_epochs=8, width=64)
    trainer = GLANNTrainer(small, config, seed=1)
    glo = [trainer.fit_epoch()["lap1"] for _ in range(config.glo_epochs)]
    assert glo[-1] < 0.8 * glo[0]
    codes = trainer.codes.weight.detach()
    e = torch.randn(500, config.noise_dim, generator=torch.Generator().manual_seed(0))

    def coverage() -> float:  # mean distance from a real code to its nearest generated code
        with torch.no_grad():
            pool = project_to_sphere(trainer.T(e))
        return float((codes - pool[imle_assign(codes, pool)]).norm(dim=1).mean())

    before = coverage()
    for _ in range(config.imle_epochs):
        trainer.fit_epoch()
    assert coverage() < 0.8 * before


def test_trainer_rejects_bad_input(small):
    empty = ImageData("digits", small.train_x[:0], small.train_y[:0], small.test_x, small.test_y)
    with pytest.raises(ValueError, match="train_x"):
        GLANNTrainer(empty)
    with pytest.raises(ValueError, match="code_dim"):
        GLANNTrainer(small, GLANNTrainConfig(code_dim=65))
    with pytest.raises(ValueError, match="levels"):
        GLANNTrainer(small, GLANNTrainConfig(levels=6))
    with pytest.raises(ValueError, match="config must be a GLANNTrainConfig"):
        GLANNTrainer(small, {"glo_epochs": 1})
    with pytest.raises(ValueError, match="variant"):
        TRAINER.build(small, epochs=2, variant="dcgan")
    trainer = GLANNTrainer(small, SMALL, seed=0)
    other = GLANNTrainer(small, dataclasses.replace(SMALL, width=8), seed=0)
    with pytest.raises(ValueError, match="config"):
        trainer.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="seed"):
        trainer.load_state_dict(GLANNTrainer(small, SMALL, seed=1).state_dict())
    old = {k: v for k, v in trainer.state_dict().items() if k not in ("format", "rng")}
    old["generator"] = trainer.rng.get_state()  # the format-1 layout
    with pytest.raises(ValueError, match="format 1.*format 2"):
        trainer.load_state_dict(old)


@pytest.mark.parametrize("name, bad", [
    *[(name, value) for name in ("glo_epochs", "code_dim", "noise_dim", "width", "batch_size",
                                 "imle_batch", "imle_pool", "levels")
      for value in (2.5, True, 0)],
    ("imle_epochs", 2.5), ("imle_epochs", True), ("imle_epochs", -1), ("width", 1),
    *[(name, value) for name in ("lr", "code_lr") for value in (math.nan, True, 0.0, -1e-3,
                                                                math.inf)],
])
def test_config_rejects_out_of_range_values(name, bad):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        GLANNTrainConfig(**{name: bad})


def test_config_and_registry_defaults(small):
    config = GLANNTrainConfig()
    assert config.epochs == 60 and GLANNTrainConfig(glo_epochs=3, imle_epochs=0).epochs == 3
    assert TRAINER.epochs((1, 8, 8)) == TRAINER.epochs((1, 28, 28)) == 50
    for epochs, glo in ((1, 1), (5, 3)):  # round(0.6 · epochs), at least 1
        trainer = TRAINER.build(small, epochs=epochs, seed=2)
        assert (trainer.glo_epochs, trainer.epochs, trainer.seed) == (glo, epochs, 2)


def test_streams_initialisation_and_evaluation(small):
    """Weights come from the stream (seed, "init"), not from the training generator: the same
    seed gives the same G and T, another seed others; the codes start at the data's principal
    components whatever the seed; evaluation scores GLANN samples of the default stream."""
    a, b = GLANNTrainer(small, SMALL, seed=4), GLANNTrainer(small, SMALL, seed=4)
    c = GLANNTrainer(small, SMALL, seed=5)
    assert torch.equal(a.rng.get_state(), torch.Generator().manual_seed(4).get_state())
    fa, fb, fc = _flat(a), _flat(b), _flat(c)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert torch.equal(fa["codes.weight"], fc["codes.weight"])
    assert not torch.equal(fa["G.0.0.weight"], fc["G.0.0.weight"])
    # torch's default for a Linear layer: U(±1/√fan_in), weight and bias
    bound = 1 / math.sqrt(SMALL.code_dim)
    w = fa["G.0.0.weight"]
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    scores = a.evaluate(small)
    assert set(scores) == {"cfd", "precision", "recall", "cis"}
    assert scores == a.evaluate(small)
    gen = torch.Generator().manual_seed(9)
    assert a.evaluate(small, gen) != scores


def test_bf16_autocast_on_cpu_trains_close_to_float32(small):
    config = dataclasses.replace(SMALL, glo_epochs=1, imle_epochs=1)  # one epoch of each
    full = GLANNTrainer(small, config, seed=0)
    half = GLANNTrainer(small, config, seed=0, autocast="bf16")
    assert half.device == torch.device("cpu")
    for _ in range(config.epochs):
        exact, approx = full.fit_epoch(), half.fit_epoch()
        assert exact.keys() == approx.keys()
        for k in exact:  # bf16 has 8 mantissa bits: the losses agree to a few per cent
            assert approx[k] == pytest.approx(exact[k], rel=0.05), k
    with pytest.raises(ValueError, match="autocast"):
        GLANNTrainer(small, SMALL, autocast="fp8")
