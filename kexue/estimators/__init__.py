"""Gradients of what has none: reparameterisation, Gumbel, REINFORCE, zeroth-order.

- :mod:`~kexue.estimators.reparam`: reparameterised samplers (Gaussian, Gumbel-max,
  Gumbel-softmax) and straight-through estimators.
- :mod:`~kexue.estimators.score`: the score-function (REINFORCE) surrogate, its baselines
  (moving average, leave-one-out, learned) and a DiCE-style :class:`Surrogate` that mixes
  reparameterised and score-function nodes in one loss.
- :mod:`~kexue.estimators.zeroth`: zeroth-order gradients (Gaussian smoothing, SPSA,
  antithetic pairs, baselines) and the seed-replay (MeZO) optimizer :class:`SeedZO`, or
  :func:`zo_backward` to feed any torch optimizer.
- :mod:`~kexue.estimators.metric`: :func:`maximize` trains directly on a non-differentiable,
  batch-level metric (accuracy, macro-F1, ...) with :class:`PolicyGradient` or
  :class:`ZerothOrder`.

Randomness is explicit: every stochastic function, :meth:`Surrogate.sample` and the
:class:`PolicyGradient` and :class:`ZerothOrder` estimators take
``generator: torch.Generator | None`` (torch's default generator when None). The exception is
:class:`SeedZO`, which takes ``seed: int`` and owns its generator; that generator's state is
part of its ``state_dict``.

References:
    https://kexue.fm/archives/6705 (漫谈重参数:从正态分布到Gumbel Softmax)
    https://kexue.fm/archives/7737 (殊途同归的策略梯度与零阶优化)
"""

from kexue.estimators.metric import (
    MetricEstimator,
    PolicyGradient,
    ZerothOrder,
    accuracy,
    binary_f1,
    macro_f1,
    maximize,
)
from kexue.estimators.reparam import (
    gaussian_rsample,
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    straight_through,
    straight_through_round,
    straight_through_sign,
)
from kexue.estimators.score import (
    LearnedBaseline,
    MovingAverageBaseline,
    Surrogate,
    leave_one_out,
    magic_box,
    score_function_surrogate,
)
from kexue.estimators.zeroth import SeedZO, zo_backward, zo_gradient

__all__ = [
    "LearnedBaseline",
    "MetricEstimator",
    "MovingAverageBaseline",
    "PolicyGradient",
    "SeedZO",
    "Surrogate",
    "ZerothOrder",
    "accuracy",
    "binary_f1",
    "gaussian_rsample",
    "gumbel_max",
    "gumbel_noise",
    "gumbel_softmax",
    "leave_one_out",
    "macro_f1",
    "magic_box",
    "maximize",
    "score_function_surrogate",
    "straight_through",
    "straight_through_round",
    "straight_through_sign",
    "zo_backward",
    "zo_gradient",
]
