"""Train a classifier directly on a non-differentiable, batch-level metric (accuracy, F1, ...).

A metric of label tensors, M(y, ŷ), is piecewise constant in the weights. Two ways around it,
one contract: an *estimator* object with

    estimator.backward(model, x, y, metric_fn) -> mean reward (0-d float64 CPU tensor)

which adds −∇(smoothed metric) into the parameters' ``.grad`` (a descent direction, so any
``torch.optim`` optimizer maximises the metric), and :func:`maximize`, the loop around it.

* :class:`PolicyGradient`: the model's logits define a categorical policy per example; the
  expected metric E_{ŷ∼π_θ}[M(y, ŷ)] is differentiable in θ (REINFORCE).
* :class:`ZerothOrder`: predictions are the argmax; the metric is smoothed over Gaussian
  perturbations of the weights, E_u[M(y, argmax f_{θ+σu}(x))] (see
  :mod:`kexue.estimators.zeroth`).

Both are the same estimator (kexue.fm/archives/7737): a search distribution, in the output
space or in the weight space, and the score-function gradient of its expected reward.

Metric helpers take integer labels ``y_true`` of any shape S and predictions of shape
(*B, *S) and reduce over S, so K sampled prediction vectors are scored in one call. An empty
batch B (e.g. zero prediction vectors) gives an empty result of shape B; an empty S (no labels)
raises ``ValueError``, as sklearn does for empty inputs.

References:
    https://kexue.fm/archives/7737 (殊途同归的策略梯度与零阶优化)
    https://kexue.fm/archives/6705 (漫谈重参数:从正态分布到Gumbel Softmax)
    Williams, "Simple Statistical Gradient-Following Algorithms", 1992.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kexue._checks import check_generator, check_int, check_real
from kexue.estimators.score import leave_one_out
from kexue.estimators.zeroth import zo_gradient

__all__ = [
    "MetricEstimator",
    "PolicyGradient",
    "ZerothOrder",
    "accuracy",
    "binary_f1",
    "macro_f1",
    "maximize",
]

MetricFn = Callable[[Tensor, Tensor], Tensor]


# -- metrics -----------------------------------------------------------------------------------


def _labels(y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) true and (*B, N) predicted labels, S flattened to N ≥ 1; B may be empty."""
    for name, t in (("y_true", y_true), ("y_pred", y_pred)):
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an integer or bool label tensor, got {got}")
    s = y_true.shape
    if y_pred.ndim < y_true.ndim or y_pred.shape[y_pred.ndim - y_true.ndim:] != s:
        raise ValueError(f"y_pred must have shape (*B, *{tuple(s)}) for y_true of shape "
                         f"{tuple(s)}, got {tuple(y_pred.shape)}")
    if y_true.numel() == 0:
        raise ValueError("y_true must hold at least one label, got an empty tensor")
    batch = y_pred.shape[:y_pred.ndim - y_true.ndim]
    n = y_true.numel()  # not -1: reshape cannot infer N when B holds no element
    return y_true.reshape(n).long(), y_pred.reshape(*batch, n).long()  # (N,), (*B, N)


def accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Fraction of correct labels: mean(ŷ = y) over the shape of ``y_true``.

    Args:
        y_true: integer labels, shape S.
        y_pred: integer predictions, shape (*B, *S).

    Returns:
        Float tensor of shape B (empty when B holds no element).

    Raises:
        ValueError: for non-integer labels, empty ``y_true`` or mismatched shapes.
    """
    y, p = _labels(y_true, y_pred)
    return (p == y).to(torch.get_default_dtype()).mean(-1)


def macro_f1(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """Unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    Not a mean over examples: it is defined on the whole batch. A class with no true and no
    predicted example (0/0) scores 0, and every class in range(num_classes) counts, i.e.
    ``sklearn.metrics.f1_score(y, ŷ, labels=range(C), average="macro", zero_division=0)``.

    Args:
        y_true: integer labels in [0, C), shape S.
        y_pred: integer predictions in [0, C), shape (*B, *S).
        num_classes: C ≥ 1.

    Returns:
        Float tensor of shape B (empty when B holds no element).

    Raises:
        ValueError: for C < 1, labels outside [0, C), non-integer labels, empty ``y_true`` or
            mismatched shapes.
    """
    num_classes = check_int("num_classes", num_classes, low=1)
    y, p = _labels(y_true, y_pred)
    for name, t in (("y_true", y), ("y_pred", p)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got range "
                             f"[{int(t.min())}, {int(t.max())}]")
    dtype = torch.get_default_dtype()
    true_hot = nn.functional.one_hot(y, num_classes).to(dtype)  # (N, C)
    pred_hot = nn.functional.one_hot(p, num_classes).to(dtype)  # (*B, N, C)
    tp = (pred_hot * true_hot).sum(-2)  # (*B, C)
    denom = pred_hot.sum(-2) + true_hot.sum(-2)  # 2TP + FP + FN, (*B, C)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return f1.mean(-1)


def binary_f1(y_true: Tensor, y_pred: Tensor, positive: int = 1) -> Tensor:
    """F1 of the ``positive`` label: 2 TP / (2 TP + FP + FN), 0 when there is no true and no
    predicted positive (sklearn's ``f1_score(average="binary", zero_division=0)``).

    Args:
        y_true: integer labels, shape S.
        y_pred: integer predictions, shape (*B, *S).
        positive: the label counted as positive.

    Returns:
        Float tensor of shape B (empty when B holds no element).

    Raises:
        ValueError: for non-integer labels, empty ``y_true``, mismatched shapes or a
            ``positive`` that is not an int.
    """
    positive = check_int("positive", positive)
    y, p = _labels(y_true, y_pred)
    dtype = torch.get_default_dtype()
    t_pos, p_pos = (y == positive).to(dtype), (p == positive).to(dtype)  # (N,), (*B, N)
    tp = (t_pos * p_pos).sum(-1)
    denom = t_pos.sum(-1) + p_pos.sum(-1)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


def _reward(metric_fn: MetricFn, y: Tensor, y_hat: Tensor) -> float:
    with torch.no_grad():
        r = metric_fn(y, y_hat)
    if isinstance(r, Tensor):
        if r.numel() != 1:
            raise ValueError(f"metric_fn must return a scalar, got shape {tuple(r.shape)}")
        r = r.item()
    try:
        return check_real("metric_fn", r)
    except ValueError:
        raise ValueError(f"metric_fn must return a finite scalar, got {r!r}") from None


# -- estimators --------------------------------------------------------------------------------


class MetricEstimator(Protocol):
    """``backward(model, x, y, metric_fn)`` adds −∇(smoothed metric) into ``.grad`` and
    returns the mean reward it observed as a 0-d float64 tensor on the CPU (whatever the
    model's dtype and device; ``float(...)`` of it is exact)."""

    def backward(self, model: nn.Module, x: Any, y: Tensor, metric_fn: MetricFn) -> Tensor: ...


class PolicyGradient:
    """REINFORCE on the expected batch metric under the model's categorical policy.

    With π_θ(ŷ | x) = Π_n softmax(model(x)_n)[ŷ_n] and K joint samples ŷ_1..ŷ_K of the whole
    batch, r_k = M(y, ŷ_k), and the leave-one-out baseline b_k = (Σ_j r_j − r_k)/(K − 1):

        ∇_θ E_π[M] ≈ (1/K) Σ_k (r_k − b_k) ∇_θ log π_θ(ŷ_k | x)

    computed as the gradient of the surrogate −(1/K) Σ_k (r_k − b_k) log π_θ(ŷ_k | x), which
    is what ``.grad`` receives. The reward is batch-level, so one sample is one prediction
    vector for the whole batch; the noise grows with the batch size.

    Precision: logits are promoted to at least float32 (``promote_types(dtype, float32)``)
    before the softmax, so sampling, log π, the rewards and the advantages r_k − b_k never
    round to a half-precision grid (rewards 0.9512 and 0.9531 are one bf16 value apart); the
    gradient reaches a bf16/fp16 model in its own dtype.

    Args:
        samples: K ≥ 2 (leave-one-out) or ≥ 1 with ``baseline="none"``.
        baseline: ``"loo"`` (leave-one-out, unbiased) or ``"none"``.
        generator: for the samples; must have the logits' device type. None uses torch's
            global generator.

    Raises:
        ValueError: for K too small, an unknown baseline or a generator that is not a
            torch.Generator; in :meth:`backward`, for logits whose leading shape is not y's, a
            generator of another device type than the logits, or a non-finite metric.

    References:
        https://kexue.fm/archives/7737
        Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019.
    """

    def __init__(self, samples: int = 8, *, baseline: str = "loo",
                 generator: torch.Generator | None = None) -> None:
        if baseline not in ("loo", "none"):
            raise ValueError(f"baseline must be 'loo' or 'none', got {baseline!r}")
        low = 2 if baseline == "loo" else 1
        if check_int("samples", samples) < low:
            raise ValueError(f"samples must be an int >= {low} for baseline={baseline!r}, "
                             f"got {samples!r}")
        check_generator("generator", generator, None)
        self.samples, self.baseline, self.generator = samples, baseline, generator

    def backward(self, model: nn.Module, x: Any, y: Tensor, metric_fn: MetricFn) -> Tensor:
        """Add −∇E_π[M(y, ŷ)] into ``.grad``.

        Returns:
            The mean of the K sampled rewards, a 0-d float64 CPU tensor.
        """
        logits = model(x)  # (*S, C)
        if not isinstance(logits, Tensor) or logits.shape[:-1] != y.shape:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"model(x) must return logits of shape (*{tuple(y.shape)}, C) "
                             f"for y of shape {tuple(y.shape)}, got {got}")
        check_generator("generator", self.generator, logits.device)
        k, c = self.samples, logits.shape[-1]
        work = torch.promote_types(logits.dtype, torch.float32)  # never a half type
        log_probs = logits.reshape(-1, c).to(work).log_softmax(-1)  # (N, C)
        draws = torch.multinomial(log_probs.detach().exp(), k, replacement=True,
                                  generator=self.generator)  # (N, K)
        log_pi = log_probs.gather(1, draws).sum(0)  # log π(ŷ_k), (K,), dtype work
        y_hat = draws.T.reshape(k, *y.shape)  # (K, *S)
        values = [_reward(metric_fn, y, y_hat[i]) for i in range(k)]
        rewards = torch.tensor(values, dtype=log_pi.dtype, device=log_pi.device)  # (K,)
        if self.baseline == "loo":
            advantage = rewards - leave_one_out(rewards)
        else:
            advantage = rewards
        surrogate = -(advantage * log_pi).mean()
        surrogate.backward()
        return torch.tensor(math.fsum(values) / k, dtype=torch.float64)


class ZerothOrder:
    """Zeroth-order estimate of the gradient of the weight-smoothed metric of argmax labels.

        M_σ(θ) = E_{u∼N(0, I)}[M(y, argmax model_{θ+σu}(x))],
        ∇M_σ ≈ (1/N) Σ_k (M(θ + σu_k) − M(θ − σu_k)) u_k / (2σ)

    via :func:`~kexue.estimators.zeroth.zo_gradient` over the parameters that require grad;
    ``.grad`` receives −∇M_σ. M is piecewise constant in θ; M_σ is smooth.

    Args:
        sigma: σ > 0, in weight units. Argmax predictions of a linear model are invariant to
            scaling its weights, so the effective smoothing shrinks as the weights grow.
        directions: N ≥ 1 directions (2N forward passes when antithetic).
        method: ``"gaussian"`` or ``"spsa"``.
        antithetic: pairs θ ± σu (else one-sided with b = M(θ), evaluated here and passed to
            ``zo_gradient`` as a fixed baseline: the same estimate).
        generator: draws the direction seeds (any device); None uses torch's global
            generator.

    Raises:
        ValueError: for σ ≤ 0, N < 1 or an unknown method.

    References:
        https://kexue.fm/archives/7737
        Nesterov & Spokoiny, 2017; Salimans et al., 2017.
    """

    def __init__(self, sigma: float = 0.1, directions: int = 8, *, method: str = "gaussian",
                 antithetic: bool = True, generator: torch.Generator | None = None) -> None:
        sigma = check_real("sigma", sigma, low=0, low_open=True)
        directions = check_int("directions", directions, low=1)
        check_generator("generator", generator)
        if method not in ("gaussian", "spsa"):
            raise ValueError(f"method must be 'gaussian' or 'spsa', got {method!r}")
        self.sigma, self.directions, self.method = float(sigma), directions, method
        self.antithetic, self.generator = antithetic, generator

    def backward(self, model: nn.Module, x: Any, y: Tensor, metric_fn: MetricFn) -> Tensor:
        """Add −∇M_σ(θ) into ``.grad``.

        Returns:
            The mean reward over the perturbed models only (θ ± σu_k, or θ + σu_k one-sided;
            the unperturbed M(θ) used as the one-sided baseline is not included), a 0-d
            float64 CPU tensor.
        """
        params = [p for p in model.parameters() if p.requires_grad]

        def evaluate() -> float:
            with torch.no_grad():
                return _reward(metric_fn, y, model(x).argmax(-1))

        # b = −M(θ) as a number: zo_gradient's "value" baseline, evaluated here so that only
        # perturbed evaluations reach cost() below.
        baseline = None if self.antithetic else -evaluate()
        rewards: list[float] = []

        def cost() -> float:
            r = evaluate()
            rewards.append(r)
            return -r

        zo_gradient(cost, params, sigma=self.sigma, num_samples=self.directions,
                    method=self.method, antithetic=self.antithetic, baseline=baseline,
                    generator=self.generator, accumulate_into_grad=True)
        return torch.tensor(math.fsum(rewards) / len(rewards), dtype=torch.float64)


# -- the loop ----------------------------------------------------------------------------------


def maximize(
    metric_fn: MetricFn,
    model: nn.Module,
    data: Iterable[tuple[Any, Tensor]],
    *,
    estimator: MetricEstimator,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
    steps: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Maximise a batch-level metric by stepping ``optimizer`` on ``estimator``'s gradient.

    Each step: ``optimizer.zero_grad()``; ``estimator.backward(model, x, y, metric_fn)`` (adds
    −∇ of the smoothed metric into ``.grad``); ``optimizer.step()``.

    Example::

        metric = functools.partial(macro_f1, num_classes=2)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        history = maximize(metric, model, loader, estimator=PolicyGradient(samples=8),
                           optimizer=opt, epochs=20)

    Args:
        metric_fn: ``metric_fn(y, ŷ) -> scalar`` on label tensors, higher is better.
        model: maps x to logits of shape (*y.shape, C).
        data: re-iterable (x, y) batches, e.g. a ``DataLoader``.
        estimator: a :class:`MetricEstimator` (:class:`PolicyGradient`, :class:`ZerothOrder`).
        optimizer: any gradient-based ``torch.optim`` optimizer over the model's parameters.
        epochs: passes over ``data`` (ignored when ``steps`` is given).
        steps: exact number of steps, cycling through ``data`` as needed.
        callback: called with each history record after its step.

    Returns:
        History: one dict per step, ``{"step", "epoch", "reward"}`` (the estimator's mean
        reward, a float).

    Raises:
        ValueError: for a bad argument, a batch that is not an (x, y) pair, or empty ``data``.

    References:
        https://kexue.fm/archives/7737
    """
    if not callable(metric_fn):
        raise ValueError(f"metric_fn must be callable (y, y_hat) -> scalar, got {metric_fn!r}")
    if not callable(getattr(estimator, "backward", None)):
        raise ValueError(f"estimator must have backward(model, x, y, metric_fn), got "
                         f"{estimator!r}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)!r}")
    epochs = check_int("epochs", epochs, low=1)
    if steps is not None:
        steps = check_int("steps", steps, low=1)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {callback!r}")

    history: list[dict[str, Any]] = []
    epoch = 0
    while (steps is None and epoch < epochs) or (steps is not None and len(history) < steps):
        seen = 0
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(f"data must yield (x, y) pairs, got {type(batch).__name__}")
            x, y = batch
            optimizer.zero_grad(set_to_none=True)
            reward = estimator.backward(model, x, y, metric_fn)
            optimizer.step()
            record = {"step": len(history), "epoch": epoch, "reward": float(reward)}
            history.append(record)
            if callback is not None:
                callback(record)
            seen += 1
            if steps is not None and len(history) >= steps:
                break
        if seen == 0:
            raise ValueError("data yielded no batches (a one-shot iterator is exhausted after "
                             "its first pass; pass a list or a DataLoader)")
        epoch += 1
    return history
