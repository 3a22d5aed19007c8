"""Learning rates per layer or per name pattern, for any ``nn.Module`` and any optimizer.

:func:`param_groups` turns a model into optimizer parameter groups. Each parameter's learning
rate is ``lr`` times the product of

* every ``multipliers`` pattern its name matches (glob, or ``re.compile(...)`` for a regex), and
* ``layer_decay ** (L − depth)`` for layer-wise decay, where the b-th block (found by
  ``layers.N`` / ``blocks.N`` / ``stages.N`` names, or a user ``depth`` function) has depth b+1,
  parameters before the first block (embeddings) depth 0, and those after the last block
  (norm, head) depth L = number of blocks + 1.

Every group carries its own absolute ``lr`` (and its ``lr_scale``), so any ``torch.optim``
scheduler, which rescales each group's ``lr`` by the same factor, keeps the ratios. Parameters
with the same (lr, weight decay) share a group, so there are as few groups as possible.

A tensor may have several names: GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``, and
``named_parameters()`` yields it once, under its first name. :func:`param_groups` reads every
name (``named_parameters(remove_duplicate=False)``, grouped by tensor identity), works out each
name's factor, and settles disagreements as ``tied=`` says.

:func:`scale_parametrize` is the note's other route: write θ = λ·φ and train φ. With plain SGD
the step on θ is then λ²·α·∇θ (effective learning rate λ²α); with Adam, which is invariant to the
gradient's scale, it is λ·α (exactly, when ε is also divided by λ).

References:
    https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
    Clark et al., "ELECTRA", 2020 and Bao et al., "BEiT", 2021 (layer-wise learning-rate decay).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kexue._checks import check_int, check_real
from kexue.train._naming import Pattern, matches, show, unwrap_model

__all__ = ["block_of", "is_bias_or_norm", "param_groups", "scale_parametrize"]


_BLOCK = re.compile(r"(?:^|\.)(layers|blocks|block|layer|h|stages)\.(\d+)(?=\.)")


def is_bias_or_norm(name: str, param: Tensor) -> bool:
    """The usual no-weight-decay rule: biases, norm gains and other tensors with ndim ≤ 1."""
    return param.ndim <= 1


def block_of(name: str) -> str | None:
    """The stacked block a parameter lives in, from HF/timm-style names, or None.

    The block is the name up to its first ``layers.N`` / ``blocks.N`` / ``block.N`` /
    ``layer.N`` / ``h.N`` part, or up to ``stages.N`` for a stage with no blocks in it: a stage
    holds blocks, while a block may hold sub-layers (T5's ``block.N.layer.M``)::

        encoder.layer.3.attn.q.weight           -> encoder.layer.3
        stages.1.blocks.0.mlp.fc1.bias          -> stages.1.blocks.0
        stages.2.downsample.weight              -> stages.2
        encoder.block.0.layer.1.wo.weight       -> encoder.block.0
        head.weight                             -> None
    """
    found = list(_BLOCK.finditer(name))
    if not found:
        return None
    block = next((m for m in found if m.group(1) != "stages"), found[-1])
    return name[: block.end(2)]


# Keys every group gets from param_groups itself; ``extra`` may not replace them.
_RESERVED = {
    "params": "the parameters are chosen by the model and multipliers",
    "names": "the names are those of the parameters",
    "lr": "pass the base rate as lr= and per-parameter factors as multipliers=",
    "lr_scale": "it is computed from multipliers= and layer_decay=",
    "weight_decay": "pass weight_decay= (and no_decay=) instead",
}


def _depths(names: list[str], depth: Callable[[str], int | None] | None) -> tuple[list[int], int]:
    """Depth of every parameter and the top depth L.

    Block b (0-based; by default the order in which blocks first appear among the parameters,
    which is the order of registration) has depth b + 1. A parameter in no block takes the
    depth of the block listed before it (0 before the first block: embeddings, and root-level
    tensors such as ``cls_token``), and L = number of blocks + 1 after the last block (final
    norm, head).
    """
    if depth is None:
        blocks = [block_of(n) for n in names]
        order = {b: i for i, b in enumerate(dict.fromkeys(b for b in blocks if b is not None))}
        index = [order[b] if b is not None else None for b in blocks]
    else:
        index = [depth(n) for n in names]
        index = [None if i is None else check_int(f"depth({n!r})", i, low=0)
                 for n, i in zip(names, index, strict=True)]
    found = [i for i, b in enumerate(index) if b is not None]
    if not found:
        raise ValueError(
            "layer_decay is set but no parameter name contains a block index "
            "(layers.N / blocks.N / layer.N / h.N / stages.N); pass depth=fn(name) -> int | None"
        )
    top = max(index[i] for i in found) + 2
    out, current = [], 0
    for i, b in enumerate(index):
        if b is not None:
            current = b + 1
        out.append(current if b is not None or i < found[-1] else top)
    return out, top


Tied = Literal["error", "first", "max"]


def _resolve_tied(
    names: list[str], aliases: list[list[int]], scale: list[float], decays: list[float],
    tied: Tied | None,
) -> list[int]:
    """For each tensor, the index (into ``names``) of the name whose factors it takes."""
    chosen = []
    for idx in aliases:
        first = idx[0]
        if all(scale[i] == scale[first] and decays[i] == decays[first] for i in idx):
            chosen.append(first)
            continue
        listed = ", ".join(
            f"{names[i]!r} (multiplier {scale[i]!r}, weight_decay {decays[i]!r})" for i in idx
        )
        if tied == "error":
            raise ValueError(
                f"tied parameters get different factors: {listed} are one tensor; pass "
                "tied='first' (the first name's factors) or tied='max' (the largest multiplier)"
            )
        if tied == "max":
            chosen.append(max(idx, key=lambda i: (scale[i], -i)))
            continue
        if tied is None:
            warnings.warn(
                f"tied parameters get different factors: {listed} are one tensor, which trains "
                f"with the factors of its first name {names[first]!r}; pass tied='first' to "
                "keep this without a warning, tied='max' for the largest multiplier, or "
                "tied='error'",
                UserWarning,
                stacklevel=3,
            )
        chosen.append(first)
    return chosen


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    multipliers: Mapping[Pattern, float] | None = None,
    layer_decay: float | None = None,
    depth: Callable[[str], int | None] | None = None,
    no_decay: Callable[[str, Tensor], bool] | Iterable[Pattern] | None = is_bias_or_norm,
    extra: Mapping[str, Any] | None = None,
    tied: Tied | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with per-pattern and layer-wise learning rates.

    lr_i = lr · Π_{patterns p matching name_i} multipliers[p] · layer_decay^(L − depth_i)

    A parameter with an explicit multiplier of 0 is left out of every group, so the optimizer
    never touches it; parameters with ``requires_grad=False`` are skipped too. No other
    parameter is ever dropped: a learning rate that underflows to 0.0 (or overflows to inf)
    from nonzero factors is an error.

    Tied parameters (one tensor under several names, such as GPT-2's ``lm_head.weight`` and
    ``transformer.wte.weight``) are found with ``named_parameters(remove_duplicate=False)``,
    grouped by tensor identity. Every name is matched against ``multipliers`` and
    ``no_decay`` and gets its own depth, in the order the module registers it. When the names
    give the tensor different factors (multiplier or weight decay), ``tied`` decides:

    * ``"error"``: a ValueError naming every name with its multiplier and weight decay;
    * ``"first"``: the factors of the first name (the one ``named_parameters()`` yields, which
      is what any grouping built on it, timm's included, has always used);
    * ``"max"``: the factors of the name with the largest multiplier (the first such name on
      a tie; a name matched by an explicit multiplier 0 loses to any other);
    * ``None`` (the default): as ``"first"``, with a warning naming the names.

    The default keeps every existing result as it was, because the first name is what the
    tensor has always trained as, and the warning says that the other names' factors were
    not used; a model without disagreeing tied names sees no change at all. The group's
    ``names`` lists each tensor once, under its first name.

    Args:
        model: any module (DDP / torch.compile wrappers are unwrapped for naming).
        lr: base learning rate, > 0.
        weight_decay: decay for parameters not selected by ``no_decay``.
        multipliers: name pattern -> multiplier. A ``str`` is a glob matched against the full
            parameter name (``"head.*"``, ``"*.bias"``); an ``re.Pattern`` is searched in it.
            Several matching patterns multiply. Every pattern must match some parameter
            (under any of its names).
        layer_decay: ratio between consecutive depths, in (0, 1]; None disables it.
        depth: name -> block index (0, 1, ...) or None, used with ``layer_decay``; by default
            blocks are found by :func:`block_of` and numbered in order of appearance.
        no_decay: which parameters get weight decay 0: a predicate ``(name, param) -> bool``
            or patterns; None gives every parameter ``weight_decay``.
        extra: further keys copied into every group (``betas``, ``momentum``...); it may not
            hold the keys this function sets (``params``, ``names``, ``lr``, ``lr_scale``,
            ``weight_decay``).
        tied: ``"error"``, ``"first"``, ``"max"`` or None, for a tensor whose names disagree
            (see above).

    Returns:
        A list of dicts with ``params``, ``names``, ``lr``, ``lr_scale`` and ``weight_decay``,
        ready for any ``torch.optim`` optimizer.

    Raises:
        ValueError: for a model without trainable parameters, a pattern that matches nothing,
            a multiplier or ``weight_decay`` that is negative, NaN or infinite, ``lr`` that is
            not a finite number > 0, ``layer_decay`` outside (0, 1], an ``extra`` key that
            this function sets itself, an unknown ``tied``, tied names that disagree under
            ``tied="error"``, or a learning rate that underflows to 0.0 or overflows to inf
            although none of its factors is 0.

    Warns:
        UserWarning: when tied names disagree and ``tied`` is left at None.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    lr = check_real("lr", lr, low=0, low_open=True)
    weight_decay = check_real("weight_decay", weight_decay, low=0)
    if tied not in (None, "error", "first", "max"):
        raise ValueError(f"tied must be 'error', 'first', 'max' or None, got {tied!r}")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise ValueError(f"extra must be a mapping of group keys, got {type(extra).__name__}")
        clash = [k for k in extra if k in _RESERVED]
        if clash:
            raise ValueError(
                f"extra may not set {clash[0]!r}, which param_groups sets in every group: "
                f"{_RESERVED[clash[0]]}"
            )
    if layer_decay is not None:
        layer_decay = check_real("layer_decay", layer_decay, low=0, high=1, low_open=True)
    # Every name of every trainable tensor, tied names included, in registration order.
    named = [(n, p) for n, p in unwrap_model(model).named_parameters(remove_duplicate=False)
             if p.requires_grad]
    if not named:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    names = [n for n, _ in named]
    slot: dict[int, int] = {}  # id(tensor) -> index into aliases
    aliases: list[list[int]] = []  # per tensor, the indices of its names in ``names``
    for i, (_, p) in enumerate(named):
        if id(p) not in slot:
            slot[id(p)] = len(aliases)
            aliases.append([])
        aliases[slot[id(p)]].append(i)

    scale = [1.0] * len(named)
    frozen = [False] * len(named)  # an explicit multiplier 0 matched it
    for pattern, mult in (multipliers or {}).items():
        if not isinstance(pattern, (str, re.Pattern)):
            raise ValueError(f"multipliers keys must be str or re.Pattern, got {pattern!r}")
        mult = check_real(f"multipliers[{pattern!r}]", mult, low=0)
        hits = [i for i, n in enumerate(names) if matches(pattern, n)]
        if not hits:
            raise ValueError(
                f"multipliers pattern {show(pattern)} matches no trainable parameter; "
                f"names look like {names[:3]}"
            )
        for i in hits:
            scale[i] *= mult
            frozen[i] = frozen[i] or mult == 0.0
    if layer_decay is not None:
        depths, top = _depths(names, depth)
        scale = [s * layer_decay ** (top - d) for s, d in zip(scale, depths, strict=True)]

    if no_decay is None:
        decays = [weight_decay] * len(named)
    elif callable(no_decay):
        decays = [0.0 if no_decay(n, p) else weight_decay for n, p in named]
    else:
        patterns = [no_decay] if isinstance(no_decay, (str, re.Pattern)) else list(no_decay)
        for pattern in patterns:
            if not any(matches(pattern, n) for n in names):
                raise ValueError(f"no_decay pattern {show(pattern)} matches no parameter")
        decays = [
            0.0 if any(matches(q, n) for q in patterns) else weight_decay for n in names
        ]

    # Frozen names count as multiplier 0 when tied names are compared.
    effective = [0.0 if f else s for s, f in zip(scale, frozen, strict=True)]
    chosen = _resolve_tied(names, aliases, effective, decays, tied)
    for i in chosen:
        s = scale[i]
        if frozen[i]:
            continue
        if not (s > 0 and math.isfinite(s) and lr * s > 0 and math.isfinite(lr * s)):
            why = "underflows to 0.0" if s == 0 or lr * s == 0 else "overflows to inf"
            raise ValueError(
                f"the learning rate of {names[i]!r} (lr={lr!r} times a product of multipliers "
                f"and layer_decay powers) {why} in float arithmetic, although no factor is 0; "
                "use an explicit multiplier 0 to leave a parameter out"
            )

    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for idx, i in zip(aliases, chosen, strict=True):
        if frozen[i]:
            continue
        s, wd = scale[i], decays[i]
        group = groups.setdefault(
            (s, wd),
            {"params": [], "names": [], "lr": lr * s, "lr_scale": s, "weight_decay": wd,
             **(extra or {})},
        )
        group["params"].append(named[idx[0]][1])
        group["names"].append(names[idx[0]])
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], g["weight_decay"]))


class _Scale(nn.Module):
    """θ = λ·φ as a parametrization; ``right_inverse`` stores φ = θ/λ so θ is unchanged."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, phi: Tensor) -> Tensor:
        return phi * self.scale

    def right_inverse(self, theta: Tensor) -> Tensor:
        return theta / self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def scale_parametrize(model: nn.Module, scales: Mapping[Pattern, float]) -> nn.Module:
    """Reparameterise matched parameters as θ = λ·φ (the note's layer-wise LR trick).

    The optimizer then sees φ (``module.parametrizations.<name>.original``); the model computes
    with θ = λ·φ, unchanged at the start. One optimizer step with gradient g = ∂L/∂θ gives

        SGD (lr α):            Δθ = λ·Δφ = −λ²·α·g          (effective lr λ²α)
        Adam (lr α, eps ε):    Δθ = −λ·α·m̂/(√v̂ + ε/λ)      (effective lr λα, eps ε/λ)

    since ∂L/∂φ = λ·g and Adam's update does not depend on the gradient's scale. Useful when
    an optimizer or framework gives no per-parameter learning rate.

    Args:
        model: the model, edited in place (``torch.nn.utils.parametrize``).
        scales: name pattern (glob or ``re.Pattern``) -> λ > 0; the first matching pattern wins.

    Returns:
        The same model.

    Raises:
        ValueError: for a pattern matching no parameter, λ that is not a finite number > 0,
            or a λ so small that φ = θ/λ overflows the parameter's dtype.
    """
    target = unwrap_model(model)
    named = list(target.named_parameters(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}
    for n, p in named:
        aliases.setdefault(id(p), []).append(n)
    todo: dict[str, float] = {}
    for pattern, lam in scales.items():
        lam = check_real(f"scales[{show(pattern)}]", lam, low=0, low_open=True)
        hits = {n for n, _ in named if matches(pattern, n)}
        if not hits:
            raise ValueError(f"scales pattern {show(pattern)} matches no parameter")
        for n, p in named:
            if n not in hits:
                continue
            if len(aliases[id(p)]) > 1:
                raise ValueError(
                    f"scales pattern {show(pattern)} matches {n!r}, which is shared with "
                    f"{[a for a in aliases[id(p)] if a != n]}; a parametrization on one alias "
                    "would leave the others computing with φ instead of θ"
                )
            todo.setdefault(n, lam)
    params = dict(named)
    for name, lam in todo.items():
        with torch.no_grad():
            theta = params[name].detach()
            if not bool(torch.isfinite(theta / lam).all()) and bool(torch.isfinite(theta).all()):
                raise ValueError(
                    f"scales: λ = {lam!r} for {name!r} is too small for {theta.dtype}: "
                    "φ = θ/λ overflows to inf"
                )
    for name, lam in todo.items():
        module_name, _, attr = name.rpartition(".")
        module = target.get_submodule(module_name)
        with torch.no_grad():
            parametrize.register_parametrization(module, attr, _Scale(lam))
    return model
