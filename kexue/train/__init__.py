"""Training controls for any ``nn.Module`` and any ``torch.optim`` optimizer.

After the kexue.fm notes https://kexue.fm/archives/6418 and https://kexue.fm/archives/6575:
learning rates per layer or name pattern, free gradient transforms, weight EMA, capture of
intermediate tensors (attention maps included) and process-safe data loading; explicit
gradient regularisation (https://kexue.fm/archives/7787) in :mod:`kexue.train.regularizers`;
one optimizer object routing parameters to several optimizers (Muon for matrices, AdamW for
the rest) in :mod:`kexue.train.route`; and the GAN penalties R1, R2, WGAN-GP and consensus
(https://kexue.fm/archives/6583), terms you add to a loss, in :mod:`kexue.train.penalties`.
"""

from kexue._deprecation import old_names
from kexue.train._naming import unwrap_model
from kexue.train.capture import Captured, attention_entropy, attention_top_k, capture
from kexue.train.data import ShardedIterable
from kexue.train.ema import EMA, ema_warmup
from kexue.train.param_groups import block_of, is_bias_or_norm, param_groups, scale_parametrize
from kexue.train.penalties import consensus_penalty, gradient_penalty, r1_penalty, r2_penalty
from kexue.train.regularizers import (
    RegularizedStep,
    gradient_penalty_loss,
    implicit_lambda,
    midpoint_backward,
    minibatch_regularized_backward,
    regularized_backward,
)
from kexue.train.route import RoutedOptimizer, route
from kexue.train.transforms import (
    GradientTransform,
    TransformHandle,
    accumulate,
    adaptive_clip,
    add_noise,
    apply_transform,
    centralize,
    chain,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    map_grads,
    scale,
    select,
    skip_nonfinite,
    transform_handles,
    with_transforms,
)

__all__ = [
    "EMA",
    "Captured",
    "GradientPenalty",  # deprecated alias of RegularizedStep, kept for ``import *`` (0.1 name)
    "GradientTransform",
    "RegularizedStep",
    "RoutedOptimizer",
    "ShardedIterable",
    "TransformHandle",
    "accumulate",
    "adaptive_clip",
    "add_noise",
    "apply_transform",
    "attention_entropy",
    "attention_top_k",
    "block_of",
    "capture",
    "centralize",
    "chain",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "consensus_penalty",
    "ema_warmup",
    "gradient_penalty",
    "gradient_penalty_loss",
    "implicit_lambda",
    "is_bias_or_norm",
    "map_grads",
    "midpoint_backward",
    "minibatch_regularized_backward",
    "param_groups",
    "r1_penalty",
    "r2_penalty",
    "regularized_backward",
    "route",
    "scale",
    "scale_parametrize",
    "select",
    "skip_nonfinite",
    "transform_handles",
    "unwrap_model",
    "with_transforms",
]


__getattr__ = old_names(__name__, {"GradientPenalty": "kexue.train.RegularizedStep"})
