"""Offline generative metrics against closed forms, hand-built cases and a calibration test.

References are independent of the implementation: the 1-D and commuting-covariance closed
forms of the Fréchet distance and scipy's general ``sqrtm``; precision/recall counted by hand
on points on a line; the Inception score of one-hot and identical predictions. Calibration:
held-out real images must score at the floor, blurred and class-dropped images far worse.
"""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from kexue.generative.data import load_images
from kexue.generative.metrics import (
    fit_classifier,
    frechet_distance,
    frechet_distance_gaussian,
    inception_score,
    precision_recall,
    score_samples,
)

torch.set_num_threads(1)


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n points whose sample mean and unbiased sample covariance are exactly ``mean``, ``cov``."""
    d = len(mean)
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    white = z @ torch.linalg.inv(chol).T  # sample covariance exactly I
    return mean + white @ torch.linalg.cholesky(cov).T


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", seed=0)


# --------------------------------------------------------------------------- Fréchet distance

def test_frechet_1d_closed_form():
    a = _with_moments(50, torch.tensor([1.5], dtype=torch.float64),
                      torch.tensor([[4.0]], dtype=torch.float64), 0)
    b = _with_moments(80, torch.tensor([-0.5], dtype=torch.float64),
                      torch.tensor([[0.25]], dtype=torch.float64), 1)
    # (μ1 − μ2)² + (σ1 − σ2)² = 4 + (2 − 0.5)²
    assert frechet_distance(a, b) == pytest.approx(4.0 + 1.5 ** 2, rel=1e-10)


def test_frechet_commuting_covariances_closed_form():
    # Diagonal covariances: d² = ‖μ1 − μ2‖² + Σ_i (√a_i − √b_i)².
    va = torch.tensor([1.0, 4.0, 9.0, 0.5], dtype=torch.float64)
    vb = torch.tensor([2.0, 1.0, 9.0, 3.0], dtype=torch.float64)
    ma = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mb = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    expected = float((ma - mb).square().sum() + (va.sqrt() - vb.sqrt()).square().sum())
    got = frechet_distance(_with_moments(30, ma, torch.diag(va), 2),
                           _with_moments(40, mb, torch.diag(vb), 3))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_general_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(0)
    d = 6
    a1, a2 = (torch.randn(d, d, dtype=torch.float64, generator=gen) for _ in range(2))
    cov1, cov2 = a1 @ a1.T + 0.1 * torch.eye(d), a2 @ a2.T + 0.1 * torch.eye(d)
    mu1, mu2 = (torch.randn(d, dtype=torch.float64, generator=gen) for _ in range(2))
    c1, c2 = cov1.numpy(), cov2.numpy()
    expected = (float((mu1 - mu2).square().sum()) + c1.trace() + c2.trace()
                - 2 * scipy.linalg.sqrtm(c1 @ c2).real.trace())  # tr √(Σ1Σ2), the FID textbook form
    assert frechet_distance_gaussian(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
    x1, x2 = _with_moments(40, mu1, cov1, 4), _with_moments(25, mu2, cov2, 5)
    assert frechet_distance(x1, x2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(x2, x1) == pytest.approx(expected, rel=1e-8)  # symmetric


def test_frechet_identical_sets_is_zero_and_rank_deficient_is_fine():
    x = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))  # D > N: singular Σ
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shifted = x + torch.full((30,), 0.5)
    assert frechet_distance(x, shifted) == pytest.approx(30 * 0.25, rel=1e-6)


@pytest.mark.parametrize("bad", [torch.zeros(1, 3), torch.zeros(5), torch.full((4, 3), math.nan)])
def test_frechet_rejects_bad_features(bad):
    with pytest.raises(ValueError):
        frechet_distance(bad, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="feature dimension"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))


# --------------------------------------------------------------------------- precision/recall

def test_precision_recall_hand_built():
    # Real points 0, 1, 2, 3 on a line; with k = 1 each real ball has radius 1, covering [−1, 4].
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # Fake 3.5 and −0.9 are inside a real ball, 10 and 12 are not → precision 2/4. Fake k = 1
    # radii: 3.5 → 4.4 (to −0.9), so its ball [−0.9, 7.9] holds every real point → recall 1.
    fake = torch.tensor([[3.5], [-0.9], [10.0], [12.0]])
    p, r = precision_recall(real, fake, k=1)
    assert (p, r) == (0.5, 1.0)
    # k = 2: real radii are the 2nd-nearest distances 2, 1, 1, 2 → balls [−2, 2], [0, 2],
    # [1, 3], [1, 5]: 3.5 and −0.9 inside → precision 1/2. Fake radii: 3.5 → 6.5, −0.9 → 10.9,
    # 10 → 6.5, 12 → 8.5 → every real point is recalled.
    assert precision_recall(real, fake, k=2) == (0.5, 1.0)
    # Fakes far away and tightly clustered: nothing inside either way.
    far = torch.tensor([[100.0], [100.1], [100.2]])
    assert precision_recall(real, far, k=1) == (0.0, 0.0)


def test_precision_recall_rejects_bad_input():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="at least"):
        precision_recall(x, x, k=5)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(x, torch.full((5, 2), math.nan), k=1)


# --------------------------------------------------------------------------- Inception score

def test_inception_score_closed_forms():
    eye = torch.eye(10)
    assert inception_score(eye.repeat(3, 1)) == pytest.approx(10.0, rel=1e-12)  # log IS = log 10
    assert inception_score(torch.full((7, 10), 0.1)) == pytest.approx(1.0, rel=1e-12)
    # Two classes, confident but unbalanced 3:1: KL(one-hot ‖ (3/4, 1/4)) = −log p(y).
    probs = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])
    expected = math.exp(-(3 * math.log(0.75) + math.log(0.25)) / 4)
    assert inception_score(probs) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(torch.full((3, 4), 0.3))


# --------------------------------------------------------------------------- on real data

def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None])


def test_calibration_real_floor_blur_and_dropped_classes(digits):
    gen = torch.Generator().manual_seed(1)
    n = len(digits.test_x)
    held = digits.train_x[torch.randperm(len(digits.train_x), generator=gen)[:n]]
    low = digits.train_x[digits.train_y < 5]
    dropped = low[torch.randperm(len(low), generator=gen)[:n]]
    clf = fit_classifier(digits, seed=0)
    assert clf.test_accuracy > 0.9
    real = score_samples(held, digits, classifier=clf)
    blurred = score_samples(_blur(held), digits, classifier=clf)
    partial = score_samples(dropped, digits, classifier=clf)
    # Held-out real images are the floor; measured 0.46 vs 10.3 (blur) and 9.6 (5 classes).
    assert real["cfd"] < 1.0
    assert blurred["cfd"] > 8 * real["cfd"]
    assert partial["cfd"] > 8 * real["cfd"]
    assert real["precision"] > 0.9 and real["recall"] > 0.9
    assert partial["recall"] < 0.7 < real["recall"]
    assert blurred["recall"] < 0.5
    assert real["cis"] > 9.0 and partial["cis"] < 5.5  # half the classes: IS about 5


def test_score_samples_leaves_global_rng_alone_and_is_deterministic(digits):
    before = torch.get_rng_state()
    fit_classifier(digits, seed=0)
    samples = digits.train_x[: 2 * len(digits.test_x)]  # more than needed: a subset is drawn
    first = score_samples(samples, digits)
    second = score_samples(samples, digits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)
    assert first == second


def test_fit_classifier_does_not_touch_global_rng(digits):
    before = torch.get_rng_state()
    fit_classifier(digits, seed=3, epochs=1)  # not cached: really trains
    assert torch.equal(torch.get_rng_state(), before)


def test_score_samples_rejects_bad_input(digits):
    n = len(digits.test_x)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        score_samples(torch.rand(n, 1, 28, 28), digits)
    with pytest.raises(ValueError, match="at least"):
        score_samples(torch.rand(n - 1, 1, 8, 8), digits)
    with pytest.raises(ValueError, match="at least"):
        score_samples(torch.rand(0, 1, 8, 8), digits)
    with pytest.raises(ValueError, match="NaN"):
        score_samples(torch.full((n, 1, 8, 8), math.nan), digits)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_samples(torch.full((n, 1, 8, 8), 2.0), digits)
