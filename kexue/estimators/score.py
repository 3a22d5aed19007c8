"""Score-function (REINFORCE) gradients as surrogate losses, baselines, and a DiCE surrogate.

For a cost f and samples z ∼ p_θ, the log-derivative identity gives

    ∇_θ E_z[f(z)] = E_z[(f(z) − b) ∇_θ log p_θ(z)]

for any baseline b that does not depend on z. Here it is written as a surrogate loss whose
gradient is that estimate, so a user calls ``loss.backward()`` and any optimizer step
*minimises the expected cost* (pass cost = −reward to maximise a reward). Baselines reduce the
variance without bias: a moving average of past costs, the leave-one-out mean of K samples, or a
learned control variate b_φ(x). :class:`Surrogate` mixes reparameterised and score-function
nodes in one loss by DiCE's magic box □(w) = exp(w − stop_gradient(w)).

References:
    https://kexue.fm/archives/7737 (殊途同归的策略梯度与零阶优化)
    https://kexue.fm/archives/6705 (漫谈重参数:从正态分布到Gumbel Softmax)
    Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning", 1992.
    Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.
    Mao et al., "A Baseline for Any Order Gradient Estimation in Stochastic Computation
    Graphs", ICML 2019.
    Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal

from kexue._checks import check_float_tensor, check_generator, check_int, check_real, check_size
from kexue.estimators.reparam import gumbel_max

__all__ = [
    "LearnedBaseline",
    "MovingAverageBaseline",
    "Surrogate",
    "leave_one_out",
    "magic_box",
    "score_function_surrogate",
]

Reduction = Literal["mean", "sum", "none"]


def _baseline(baseline: Tensor | float | None, cost: Tensor) -> Tensor | None:
    """``baseline`` as a detached tensor that broadcasts to ``cost``'s shape without growing it."""
    if baseline is None:
        return None
    if not isinstance(baseline, Tensor):
        baseline = check_real("baseline", baseline)
    b = torch.as_tensor(baseline, dtype=cost.dtype, device=cost.device).detach()
    try:
        ok = torch.broadcast_shapes(b.shape, cost.shape) == cost.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"baseline of shape {tuple(b.shape)} must broadcast to cost's shape "
                         f"{tuple(cost.shape)} exactly")
    return b


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def score_function_surrogate(
    log_prob: Tensor, cost: Tensor, baseline: Tensor | float | None = None
) -> Tensor:
    """Element-wise REINFORCE surrogate whose gradient estimates ∇_θ E[cost].

        s = stop_gradient(f − b) · log p_θ(z),   ∇_θ s = (f − b) ∇_θ log p_θ(z)

    ``s.mean()`` over N samples has gradient (1/N) Σ_n (f_n − b_n) ∇ log p_θ(z_n), an unbiased
    estimate of ∇_θ E[f] whenever b_n does not depend on z_n. Its *value* is not E[f]. If
    ``cost`` also depends on θ along a differentiable path (a reparameterised sample), add
    ``cost`` itself: ``(cost + score_function_surrogate(log_prob, cost)).mean()``.

    Args:
        log_prob: log p_θ(z) of each sample, differentiable in θ (event dims already summed).
        cost: f(z), same shape as ``log_prob``; detached here.
        baseline: b, a tensor broadcastable to ``cost``'s shape (e.g. ``leave_one_out``) or a
            finite number; detached here. None means b = 0.

    Returns:
        s of ``cost``'s shape; reduce it (``.mean()``) and call ``backward`` to minimise E[f].

    Raises:
        ValueError: if ``log_prob`` and ``cost`` differ in shape or ``baseline`` would broadcast
            ``cost`` to a larger shape.

    References:
        https://kexue.fm/archives/7737
        Williams, 1992.
    """
    log_prob = check_float_tensor("log_prob", log_prob)
    cost = check_float_tensor("cost", cost)
    if log_prob.shape != cost.shape:
        raise ValueError(f"log_prob and cost must have the same shape, got log_prob "
                         f"{tuple(log_prob.shape)}, cost {tuple(cost.shape)}")
    b = _baseline(baseline, cost)
    advantage = cost.detach() if b is None else cost.detach() - b
    return advantage * log_prob


def leave_one_out(rewards: Tensor, dim: int = 0) -> Tensor:
    """Leave-one-out baseline of K samples: the mean of the other K − 1.

        b_k = (Σ_j r_j − r_k) / (K − 1) = r̄ + (r̄ − r_k) / (K − 1)

    b_k does not depend on sample k, so (r_k − b_k) ∇ log p(z_k) stays unbiased, and
    r_k − b_k = K/(K − 1) · (r_k − r̄) is unchanged by adding a constant to every r. The second
    form is used for accuracy when r carries a large offset. Works for rewards or costs alike.

    Args:
        rewards: r, with the K samples along ``dim``.
        dim: sample dim.

    Returns:
        b of ``rewards``' shape (not detached).

    Raises:
        ValueError: if K < 2, ``dim`` is out of range, or ``rewards`` is not floating point.

    References:
        https://kexue.fm/archives/7737
        Kool, van Hoof & Welling, 2019.
    """
    rewards = check_float_tensor("rewards", rewards)
    dim = check_int("dim", dim, low=-rewards.ndim, high=max(rewards.ndim, 1) - 1)
    k = rewards.shape[dim] if rewards.ndim else 1
    if k < 2:
        raise ValueError(f"leave_one_out needs K >= 2 samples along dim={dim}, got K={k}")
    mean = rewards.mean(dim, keepdim=True)
    return mean + (mean - rewards) / (k - 1)


class MovingAverageBaseline(nn.Module):
    """Exponential moving average of past mean costs, used as a REINFORCE baseline.

        b_t = β b_{t−1} + (1 − β) mean(f_t),   b_1 = mean(f_1)

    :meth:`update` returns the baseline *before* folding in the current costs, so it depends
    only on earlier batches and keeps the estimate unbiased (0 before the first update).

    Args:
        momentum: β in [0, 1).

    Buffers:
        value: b, a float32 scalar (``.double()`` the module for float64).
        initialized: whether an update has happened.
    """

    value: Tensor
    initialized: Tensor

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = check_real("momentum", momentum, low=0, high=1, high_open=True)
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self) -> Tensor:
        """The current baseline b (a detached copy)."""
        return self.value.detach().clone()

    @torch.no_grad()
    def update(self, cost: Tensor) -> Tensor:
        """Return b_{t−1} in ``cost``'s dtype and device, then fold mean(cost) into b.

        Checking that mean(cost) is finite synchronises with the host once per call.

        Args:
            cost: the current batch of costs, any shape, at least one element, all finite.

        Returns:
            b_{t−1}, a 0-d tensor in ``cost``'s dtype and device (0 before the first update).

        Raises:
            ValueError: for a non-floating or empty ``cost``, or one with NaN or inf entries
                (or whose mean overflows); b is left unchanged, as one such batch would
                otherwise poison it for good.
        """
        cost = check_float_tensor("cost", cost)
        if cost.numel() == 0:
            raise ValueError(f"cost must hold at least one element, got an empty tensor of "
                             f"shape {tuple(cost.shape)}")
        m = cost.detach().mean().to(self.value)
        if not bool(m.isfinite()):  # any NaN or ±inf entry makes the mean non-finite
            raise ValueError(f"cost must be finite, got NaN or inf entries (mean {m.item()})")
        before = self.value.clone()
        # torch.where instead of `if initialized`: no host synchronisation.
        self.value.copy_(torch.where(self.initialized, self.value.lerp(m, 1 - self.momentum), m))
        self.initialized.fill_(True)
        return before.to(device=cost.device, dtype=cost.dtype)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class _SqueezeLast(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.squeeze(-1)


class LearnedBaseline(nn.Module):
    """A learned control variate b_φ(x) ≈ E[f | x], fitted by regression on observed costs.

        loss(φ) = mean (b_φ(x) − stop_gradient(f))²

    Use ``baseline(x).detach()`` as b in the surrogate and add ``baseline.loss(x, cost)`` to the
    objective (or optimise it separately) to train φ. b_φ depends on the context x, not on the
    sample z, so the estimate stays unbiased whatever φ is.

    Args:
        model: any module mapping x to a tensor of the cost's shape. Give exactly one of
            ``model`` and ``in_features``.
        in_features: build an MLP (..., in_features) -> (...): Linear, Tanh, Linear to 1, squeeze.
        hidden: MLP width.

    Raises:
        ValueError: if both or neither of ``model`` and ``in_features`` are given, or for a bad
            ``in_features``/``hidden``.

    References:
        https://kexue.fm/archives/7737
        Williams, 1992; Mnih & Gregor, "Neural Variational Inference and Learning in Belief
        Networks", ICML 2014.
    """

    def __init__(
        self, model: nn.Module | None = None, *, in_features: int | None = None, hidden: int = 64
    ) -> None:
        super().__init__()
        if (model is None) == (in_features is None):
            raise ValueError("give exactly one of model and in_features, got "
                             f"model={type(model).__name__}, in_features={in_features!r}")
        hidden = check_int("hidden", hidden, low=1)
        if model is not None:
            if not isinstance(model, nn.Module):
                raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
            self.model = model
            return
        in_features = check_int("in_features", in_features, low=1)
        self.model = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(),
                                   nn.Linear(hidden, 1), _SqueezeLast())

    def forward(self, x: Tensor) -> Tensor:
        """b_φ(x), differentiable in φ; detach it before using it as a baseline."""
        return self.model(x)

    def loss(self, x: Tensor, cost: Tensor) -> Tensor:
        """Mean squared error between b_φ(x) and the detached cost.

        Raises:
            ValueError: if b_φ(x) and ``cost`` differ in shape.
        """
        b = self(x)
        if b.shape != cost.shape:
            raise ValueError(f"baseline output {tuple(b.shape)} must have cost's shape "
                             f"{tuple(cost.shape)}")
        return (b - cost.detach()).square().mean()


# -- DiCE ------------------------------------------------------------------------------------


def magic_box(log_prob: Tensor) -> Tensor:
    """DiCE's magic box □(w) = exp(w − stop_gradient(w)): value exactly 1, ∇□(w) = □(w)∇w.

    References:
        Foerster et al., ICML 2018.
    """
    log_prob = check_float_tensor("log_prob", log_prob)
    return torch.exp(log_prob - log_prob.detach())


def _draw(dist: Distribution, shape: torch.Size, generator: torch.Generator,
          rsample: bool) -> Tensor:
    """Sample with an explicit generator (torch.distributions' own samplers take none)."""
    if isinstance(dist, Independent):
        return _draw(dist.base_dist, shape, generator, rsample)
    if isinstance(dist, Normal):
        check_generator("generator", generator, dist.loc.device)
        eps = torch.randn(shape + dist.batch_shape, generator=generator, dtype=dist.loc.dtype,
                          device=dist.loc.device)
        z = dist.loc + dist.scale * eps
        return z if rsample else z.detach()
    if isinstance(dist, Bernoulli):
        probs = dist.probs.detach()
        check_generator("generator", generator, probs.device)
        u = torch.rand(shape + dist.batch_shape, generator=generator, dtype=probs.dtype,
                       device=probs.device)
        return (u < probs).to(probs.dtype)
    if isinstance(dist, Categorical):
        logits = dist.logits.detach()
        return gumbel_max(logits.expand(shape + logits.shape), generator=generator)
    raise ValueError("generator is supported for Normal, Bernoulli, Categorical and Independent "
                     f"of these, got {type(dist).__name__}; pass generator=None to use the "
                     "distribution's own sampler and torch's default generator")


def _align(log_prob: Tensor, shape: torch.Size) -> Tensor:
    """View a registered log-prob against the cost's shape, aligning dims from the left."""
    n = len(shape)
    k = min(log_prob.ndim, n)
    if log_prob.shape[:k] != shape[:k]:
        raise ValueError(f"a registered log-prob of shape {tuple(log_prob.shape)} does not align "
                         f"with cost of shape {tuple(shape)}: their first {k} dims must match")
    if log_prob.ndim > n:
        log_prob = log_prob.sum(tuple(range(n, log_prob.ndim)))
    return log_prob.reshape(log_prob.shape + (1,) * (n - log_prob.ndim))


class Surrogate:
    """Collects stochastic nodes and builds one DiCE loss for a cost that depends on them.

        L = f · □(Σ_w log p(w)) + (1 − □(Σ_w log p(w))) · b

    where w runs over the score-function nodes registered by :meth:`sample` (or
    :meth:`register`). The value of L is f exactly; its gradient is the pathwise gradient of f
    through reparameterised samples plus the score-function term (f − b) ∇ Σ_w log p(w), and
    repeated differentiation gives unbiased higher-order estimates (DiCE). Every registered node
    is assumed to influence the cost (a node that does not only adds variance, never bias).

    Shapes: log-probs are aligned with the cost from the left, sample dims first as
    ``torch.distributions`` lays them out. A log-prob with more dims than the cost is summed over
    the extra trailing dims; one with fewer is shared by the cost's trailing dims.

    Example::

        s = Surrogate()
        h = s.sample(Normal(mu, sigma), sample_shape=(n,))        # reparameterised
        k = s.sample(Categorical(logits=net(h)))                   # score-function node
        loss = s.loss(cost(h, k), baseline=leave_one_out(cost(h, k).detach()))
        loss.backward()

    Use a fresh ``Surrogate`` per loss.

    References:
        https://kexue.fm/archives/7737
        Foerster et al., ICML 2018; Mao et al., ICML 2019 (the baseline term).
    """

    def __init__(self) -> None:
        self.log_probs: list[Tensor] = []

    def sample(
        self,
        dist: Distribution,
        *,
        sample_shape: int | Sequence[int] = (),
        reparam: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw z ∼ dist, reparameterised if possible, else registered as a score node.

        Args:
            dist: a ``torch.distributions.Distribution``.
            sample_shape: leading dims of independent draws, an int or a sequence of ints.
            reparam: None uses ``rsample`` when ``dist.has_rsample``; True requires it; False
                forces a detached sample plus a score node ``dist.log_prob(z)``.
            generator: explicit noise source of the distribution's device type, supported for
                Normal, Bernoulli, Categorical and Independent of these (sampled here, as
                torch.distributions ignores generators); None uses the distribution's own
                sampler and torch's default generator.

        Returns:
            z of shape (*sample_shape, *dist.batch_shape, *dist.event_shape).

        Raises:
            ValueError: for ``reparam=True`` on a distribution without ``rsample``, a bad
                ``sample_shape``, or a generator that is not a torch.Generator, is used with an
                unsupported distribution, or has another device type than the distribution.
        """
        if not isinstance(dist, Distribution):
            raise ValueError(f"dist must be a torch.distributions.Distribution, got "
                             f"{type(dist).__name__}")
        if reparam not in (None, True, False):
            raise ValueError(f"reparam must be None, True or False, got {reparam!r}")
        if reparam and not dist.has_rsample:
            raise ValueError(f"reparam=True needs a distribution with rsample, got "
                             f"{type(dist).__name__}; use reparam=None or False")
        use_r = dist.has_rsample if reparam is None else reparam
        shape = check_size("sample_shape", sample_shape)
        check_generator("generator", generator, None)
        if generator is not None:
            z = _draw(dist, shape, generator, use_r)
        else:
            z = dist.rsample(shape) if use_r else dist.sample(shape)
        if not use_r:
            z = z.detach()
            self.log_probs.append(dist.log_prob(z))
        return z

    def register(self, log_prob: Tensor) -> None:
        """Add a score node: log p(w) of a sample drawn elsewhere (detached), event dims summed."""
        self.log_probs.append(check_float_tensor("log_prob", log_prob))

    def loss(
        self,
        cost: Tensor,
        baseline: Tensor | float | None = None,
        *,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """The DiCE surrogate of ``cost``; its value is ``cost`` reduced.

        Args:
            cost: f, possibly differentiable through reparameterised samples.
            baseline: b, a finite number or a tensor broadcastable to ``cost``'s shape and
                independent of the current samples (e.g. ``leave_one_out(cost.detach())``);
                detached here.
            reduction: "mean", "sum" or "none" over the cost's elements.

        Returns:
            L reduced as asked.

        Raises:
            ValueError: for a baseline or log-prob that does not fit ``cost``'s shape, or an
                unknown reduction.
        """
        cost = check_float_tensor("cost", cost)
        b = _baseline(baseline, cost)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not self.log_probs:
            return _reduce(cost, reduction)
        aligned = [_align(lp, cost.shape) for lp in self.log_probs]
        box = magic_box(sum(aligned[1:], aligned[0]))
        out = cost * box
        if b is not None:
            out = out + (1 - box) * b
        return _reduce(out, reduction)
