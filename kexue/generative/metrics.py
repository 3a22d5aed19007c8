"""Offline sample-quality metrics: a small classifier's features stand in for Inception's.

FID's Inception weights cannot be downloaded, so a small CNN is trained (a few seconds, one
thread) on the REAL TRAIN split of the dataset, and its penultimate-layer features φ(x) ∈ R^64
give three scores of a set of samples against the real TEST split:

* **cFD**, the Fréchet distance between Gaussians fitted to the two feature sets,

      cFD = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2}),

  (lower is better; the held-out-real vs test value is the floor set by finite samples);
* **precision / recall**, the k-NN manifold estimate of Kynkäänniemi et al.: each point owns
  the ball reaching its k-th nearest neighbour in its own set; precision is the fraction of
  samples inside some real ball, recall the fraction of real points inside some sample ball;
* **cIS**, the classifier Inception score exp(E_x KL(p(y|x) ‖ p(y))), between 1 and the number
  of classes (confident and balanced predictions score high).

Features are divided by one scalar (the root mean per-dimension variance of the real training
features) so cFD is in units of "typical real feature variance" and comparable across datasets.
The classifier is built on the meta device and initialised from its own ``torch.Generator``;
no function here reads or reseeds the global RNG.

References:
    https://kexue.fm/archives/6394 (非对抗式生成模型GLANN的简单介绍)
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", 2017 (FID).
    Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
    2019.
    Salimans et al., "Improved Techniques for Training GANs", 2016 (Inception score).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from kexue._checks import check_generator, check_int
from kexue.generative.common import init_module
from kexue.generative.data import ImageData

__all__ = [
    "FeatureClassifier",
    "fit_classifier",
    "frechet_distance",
    "frechet_distance_gaussian",
    "inception_score",
    "init_parameters_",
    "precision_recall",
    "score_samples",
]

FEATURE_DIM = 64
_CACHE: dict[tuple[str, int, str], FeatureClassifier] = {}


def init_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise ``module`` in place from ``generator`` with torch's default distributions:
    :func:`kexue.generative.common.init_module` with the ``"torch"`` scheme (kept as a name)."""
    return init_module(module, generator, "torch")


class FeatureClassifier(nn.Module):
    """Small CNN classifier whose penultimate layer is the feature map φ of the metrics.

    conv3×3(32, stride s) → ReLU → conv3×3(64, stride 2) → ReLU → flatten → linear(64) → ReLU
    [= φ] → linear(classes); s = 1 for images up to 16 pixels, 2 above (8×8: 1024 inputs to the
    first linear layer, 28×28: 3136).

    Attributes:
        image_shape: (C, H, W) the classifier accepts.
        feature_scale: Scalar buffer; φ is divided by it (set by :func:`fit_classifier`).
        test_accuracy: Accuracy on the test split after training (NaN before).

    Args:
        image_shape: (C, H, W) of the images.
        num_classes: Classes of the head, ≥ 1.

    Raises:
        ValueError: If ``num_classes`` is not an int ≥ 1.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        check_int("num_classes", num_classes, low=1)
        c, h, w = image_shape
        s = 1 if max(h, w) <= 16 else 2
        h1, w1 = (h - 1) // s + 1, (w - 1) // s + 1
        h2, w2 = (h1 - 1) // 2 + 1, (w1 - 1) // 2 + 1
        self.image_shape = (c, h, w)
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=s, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),  # (B, 64·h2·w2)
            nn.Linear(64 * h2 * w2, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))
        self.test_accuracy = float("nan")

    def forward(self, x: Tensor) -> Tensor:
        """Logits, (B, classes), of images (B, C, H, W) in [0, 1]."""
        return self.head(self.body(x - 0.5))

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """Scaled features φ(x)/scale (B, 64) and class probabilities (B, classes), no grad."""
        feats, probs = [], []
        for chunk in x.split(batch_size):
            f = self.body(chunk - 0.5)
            feats.append(f / self.feature_scale)
            probs.append(self.head(f).softmax(-1))
        return torch.cat(feats), torch.cat(probs)


def _fingerprint(x: Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()


def fit_classifier(data: ImageData, *, seed: int = 0, epochs: int | None = None
                   ) -> FeatureClassifier:
    """Train the metric's feature classifier on ``data.train_x`` (never on the test split).

    Adam (lr 2·10⁻³, batch 64) on cross-entropy, 12 epochs for images up to 16 pixels (digits)
    and 4 above (mnist5k); about 1–5 s on one thread. Results are cached in-process per
    (dataset name, seed, fingerprint of the training images), so every caller scoring samples
    of the same split uses the same feature map.

    Args:
        data: The real split; the classifier sees only its training half.
        seed: Seed of the private generator (initialisation and batch order), an int ≥ 0.
        epochs: Override of the epoch count, ≥ 1 (not cached when given).

    Returns:
        The trained classifier in eval mode, with ``feature_scale`` set so the real training
        features have mean per-dimension variance 1, and ``test_accuracy`` filled in.

    Raises:
        ValueError: If the training split is empty, ``seed`` is not an int ≥ 0 or ``epochs``
            not an int ≥ 1.
    """
    seed = check_int("seed", seed, low=0, high=2**64 - 1)
    if epochs is not None:
        epochs = check_int("epochs", epochs, low=1)
    if len(data.train_x) == 0:
        raise ValueError(f"data.train_x must be non-empty, got shape {tuple(data.train_x.shape)}")
    key = (data.name, seed, _fingerprint(data.train_x))
    if epochs is None and key in _CACHE:
        return _CACHE[key]
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = FeatureClassifier(data.shape, data.num_classes)
    model.to_empty(device="cpu")
    init_parameters_(model, gen)
    model.feature_scale.fill_(1.0)
    n_epochs = epochs if epochs is not None else (12 if max(data.shape[1:]) <= 16 else 4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data.train_x, data.train_y
    model.train()
    for _ in range(n_epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    train_feats, _ = model.embed(x)
    model.feature_scale.fill_(train_feats.double().var(0).mean().sqrt().clamp_min(1e-12).item())
    if len(data.test_x):
        _, probs = model.embed(data.test_x)
        model.test_accuracy = (probs.argmax(-1) == data.test_y).float().mean().item()
    if epochs is None:
        _CACHE[key] = model
    return model


def _check_features(name: str, x: Tensor, min_rows: int = 2) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")


def _sqrt_psd(m: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues → 0)."""
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance_gaussian(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂).

        d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}

    computed in float64 with eigendecompositions only (the inner matrix is symmetric PSD, so
    its trace square root is Σ √λ_i): no complex round-off as with a general ``sqrtm``.

    Args:
        mu1, mu2: Means, (D,).
        cov1, cov2: Covariances, (D, D), symmetric positive semi-definite.

    Returns:
        The squared distance, ≥ 0.

    Raises:
        ValueError: If the shapes disagree.
    """
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"expected mu (D,) and cov (D, D) for both, got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    s1 = _sqrt_psd(cov1)
    inner = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula).

    μ and Σ are the sample mean and the unbiased (N − 1) sample covariance of each set; see
    :func:`frechet_distance_gaussian` for the formula.

    Args:
        a: (N_a, D) features.
        b: (N_b, D) features.

    Returns:
        The squared Fréchet distance, ≥ 0.

    Raises:
        ValueError: For a non-2-D input, fewer than 2 rows, NaN/inf, or different D.
    """
    _check_features("a", a)
    _check_features("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension, got {a.shape[1]} "
                         f"and {b.shape[1]}")
    a, b = a.double(), b.double()
    return frechet_distance_gaussian(a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1),
                                     b.mean(0), torch.cov(b.T).reshape(b.shape[1], -1))


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row, (N,)."""
    d = torch.cdist(x, x)  # (N, N)
    d.fill_diagonal_(float("inf"))
    return d.kthvalue(k, dim=1).values


def precision_recall(real: Tensor, fake: Tensor, k: int = 5) -> tuple[float, float]:
    """k-NN precision and recall of ``fake`` against ``real`` (Kynkäänniemi et al. 2019).

    With r_k(x; S) the distance from x to its k-th nearest neighbour in S \\ {x},

        precision = (1/|G|) Σ_{g∈G} 1[∃ r∈R: ‖g − r‖ ≤ r_k(r; R)],
        recall    = (1/|R|) Σ_{r∈R} 1[∃ g∈G: ‖r − g‖ ≤ r_k(g; G)].

    Args:
        real: (N_r, D) real features.
        fake: (N_g, D) sample features.
        k: Neighbourhood size; each set needs more than k points.

    Returns:
        ``(precision, recall)``, each in [0, 1].

    Raises:
        ValueError: For bad shapes, NaN/inf, or k out of range.
    """
    k = check_int("k", k, low=1)
    _check_features("real", real, k + 1)
    _check_features("fake", fake, k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same feature dimension, got "
                         f"{real.shape[1]} and {fake.shape[1]}")
    real, fake = real.double(), fake.double()
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)  # (N_r,), (N_g,)
    cross = torch.cdist(fake, real)  # (N_g, N_r)
    precision = (cross <= r_real[None, :]).any(1).double().mean()
    recall = (cross <= r_fake[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def inception_score(probs: Tensor) -> float:
    """Inception score of class probabilities: exp(E_x KL(p(y|x) ‖ p(y))), p(y) = E_x p(y|x).

    Equals the number of classes when every prediction is one-hot and the classes are
    balanced, and 1 when all predictions are the same distribution.

    Args:
        probs: (N, classes), non-negative rows summing to 1.

    Returns:
        The score, in [1, classes].

    Raises:
        ValueError: If ``probs`` is not (N, classes) with N ≥ 1, or not a probability table.
    """
    _check_features("probs", probs, 1)
    p = probs.double()
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError("probs rows must be non-negative and sum to 1")
    marginal = p.mean(0, keepdim=True)  # (1, classes)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log()),
                     torch.zeros_like(p)).sum(1)  # (N,)
    return float(kl.mean().exp())


def score_samples(samples: Tensor, data: ImageData, *, classifier: FeatureClassifier | None = None,
                  k: int = 5, generator: torch.Generator | None = None) -> dict[str, float]:
    """cFD, precision, recall and cIS of generated images against the real TEST split.

    The reference set is ``data.test_x`` in full (digits: 359 images, mnist5k: 1,000). The
    sample set has the same size, so numbers are comparable between models and with the
    real floor: if more samples are given, a subset of ``len(data.test_x)`` is drawn without
    replacement with ``generator`` (a fresh ``torch.Generator().manual_seed(0)`` when None).
    Features come from ``classifier`` (default ``fit_classifier(data, seed=0)``, trained on
    ``data.train_x``).

    Args:
        samples: (N, C, H, W) images in [0, 1] with (C, H, W) = ``data.shape`` and
            N ≥ ``len(data.test_x)``.
        data: The real split.
        classifier: A trained :class:`FeatureClassifier` for this dataset.
        k: Neighbourhood size of precision/recall, ≥ 1.
        generator: Source of randomness for the subset (a CPU generator).

    Returns:
        ``{"cfd", "precision", "recall", "cis"}``.

    Raises:
        ValueError: For wrong shape, too few samples, NaN/inf or values outside [0, 1].
    """
    k = check_int("k", k, low=1)
    generator = check_generator("generator", generator, "cpu")
    n_ref = len(data.test_x)
    if n_ref <= k:
        raise ValueError(f"data.test_x must have more than k={k} images, got {n_ref}")
    if not isinstance(samples, Tensor) or samples.ndim != 4 \
            or tuple(samples.shape[1:]) != data.shape:
        got = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"samples must be (N, {', '.join(map(str, data.shape))}) for "
                         f"{data.name!r}, got {got}")
    if len(samples) < n_ref:
        raise ValueError(f"samples must number at least len(data.test_x) = {n_ref} (the "
                         f"metrics compare equal-sized sets), got {len(samples)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples has NaN or infinite values")
    lo, hi = float(samples.min()), float(samples.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"samples must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    if classifier is None:
        classifier = fit_classifier(data, seed=0)
    if tuple(classifier.image_shape) != data.shape:
        raise ValueError(f"classifier expects images {classifier.image_shape}, data has "
                         f"{data.shape}")
    if len(samples) > n_ref:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        samples = samples[torch.randperm(len(samples), generator=gen)[:n_ref]]
    real_feats, _ = classifier.embed(data.test_x)
    fake_feats, fake_probs = classifier.embed(samples.float())
    precision, recall = precision_recall(real_feats, fake_feats, k)
    return {
        "cfd": frechet_distance(real_feats, fake_feats),
        "precision": precision,
        "recall": recall,
        "cis": inception_score(fake_probs),
    }
