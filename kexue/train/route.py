"""One optimizer object for several optimizers, each taking the parameters a rule routes to it.

``torch.optim.Muon`` takes only 2-D weights, so a model trained with Muon needs a second
optimizer (AdamW) for its biases, norms and embeddings. :func:`route` builds both from rules and
returns one :class:`RoutedOptimizer`, a ``torch.optim.Optimizer`` whose ``param_groups`` are the
children's own group dicts, so one LR scheduler, one ``state_dict``, one ``zero_grad`` and one
:func:`~kexue.train.with_transforms` serve them all::

    opt = route(model, [
        (2, lambda groups: torch.optim.Muon(groups, lr=0.02)),          # every 2-D weight
        ("*", lambda groups: torch.optim.AdamW(groups, lr=3e-4)),       # the rest
    ])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)

Per-layer learning rates (https://kexue.fm/archives/6418) compose with it: pass
``groups=param_groups(model, lr, layer_decay=0.8)`` and each group is split by the rules, so
every child keeps the group's ``lr``, ``weight_decay`` and ``lr_scale``; a factory may rescale
them, e.g. ``[{**g, "lr": 0.02 * g["lr_scale"]} for g in groups]`` for Muon's own base rate.

References:
    https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
    Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kexue._checks import check_int
from kexue.train._naming import matches, show, unwrap_model

__all__ = ["RoutedOptimizer", "route"]

Rule = str | re.Pattern[str] | int | Callable[[str, Tensor], bool]
Factory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def _label(rule: Rule) -> str:
    """How a rule reads in messages, ``repr`` and the state dict."""
    if isinstance(rule, (str, re.Pattern)):
        return show(rule)
    if isinstance(rule, int):
        return f"ndim == {rule}"
    return getattr(rule, "__qualname__", repr(rule))


def _check_rule(index: int, rule: Any) -> Rule:
    if isinstance(rule, (str, re.Pattern)):
        return rule
    if isinstance(rule, int) and not isinstance(rule, bool):
        return check_int(f"routes[{index}] rule (an ndim)", rule, low=0)
    if callable(rule):
        return rule
    raise ValueError(
        f"routes[{index}] rule must be a name glob (str), an re.Pattern, an ndim (int >= 0) or "
        f"a function (name, param) -> bool, got {rule!r}"
    )


def _hits(rule: Rule, name: str, param: Tensor) -> bool:
    if isinstance(rule, (str, re.Pattern)):
        return matches(rule, name)
    if isinstance(rule, int):
        return param.ndim == rule
    return bool(rule(name, param))


class _StateView(MutableMapping):
    """``optimizer.state`` of a routed optimizer: each parameter's entry lives in its child's
    ``state``, so reads and writes (Lightning moves state to a device this way) reach it."""

    def __init__(self, routed: RoutedOptimizer) -> None:
        self._routed = routed

    def _child(self, param: Any) -> torch.optim.Optimizer:
        index = self._routed._owner.get(id(param)) if isinstance(param, Tensor) else None
        if index is None:
            raise KeyError(param)
        return self._routed.optimizers[index]

    def __getitem__(self, param: Any) -> Any:
        return self._child(param).state[param]

    def __setitem__(self, param: Any, value: Any) -> None:
        self._child(param).state[param] = value

    def __delitem__(self, param: Any) -> None:
        del self._child(param).state[param]

    def __iter__(self) -> Iterator[Any]:
        for opt in self._routed.optimizers:
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._routed.optimizers)

    def __repr__(self) -> str:
        return f"<state of {len(self)} tensors in {len(self._routed.optimizers)} optimizers>"


class RoutedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one; what :func:`route` returns.

    ``param_groups`` lists the children's group dicts themselves (children in route order,
    then groups added later in the order they were added), so a scheduler that sets
    ``group["lr"]`` sets it in the child. ``step(closure)`` evaluates the closure once, under
    ``torch.enable_grad()``, then steps every child without it; the routed object's own step
    pre/post hooks (those of :func:`~kexue.train.with_transforms`) fire once per step, the
    children's hooks once per child step (and torch's global optimizer hooks for both). ``state``
    is a view of the children's per-parameter state. Build it with :func:`route`.

    Attributes:
        optimizers: the child optimizers, in route order.
        rules: the rule of each child.
        labels: how each rule reads (``"'*.weight'"``, ``"ndim == 2"``, a function's name).
    """

    def __init__(
        self,
        model: nn.Module,
        rules: Sequence[Rule],
        optimizers: Sequence[torch.optim.Optimizer],
        names: dict[int, str],
    ) -> None:
        # torch's own way to set up an optimizer without building param_groups (it is what
        # unpickling runs): hook dicts, the patched step that calls them, defaults.
        torch.optim.Optimizer.__setstate__(self, {"defaults": {}})
        self._warned_capturable_if_run_uncaptured = True
        self._model = model
        self.rules = list(rules)
        self.labels = [_label(r) for r in rules]
        self.optimizers = list(optimizers)
        self._names = dict(names)  # id(param) -> name
        self._owner = {id(p): i for i, opt in enumerate(self.optimizers)
                       for g in opt.param_groups for p in g["params"]}
        # Where each outer group lives: (child index, group index in the child).
        self._layout = [(i, j) for i, opt in enumerate(self.optimizers)
                        for j in range(len(opt.param_groups))]

    # -- torch.optim.Optimizer ------------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The children's group dicts (the same objects), in the routed order."""
        return [self.optimizers[i].param_groups[j] for i, j in self._layout]

    @property
    def state(self) -> _StateView:  # type: ignore[override]
        """Per-parameter optimizer state, read from and written to the child holding it."""
        return _StateView(self)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if given) once, then step every child optimizer.

        Returns:
            The closure's loss, or None without a closure.

        Raises:
            ValueError: if a parameter group was added to a child directly, not through
                :meth:`add_param_group`.
        """
        self._check_layout()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``zero_grad`` of every child."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Split ``param_group`` by the rules and add each part to the child its rule names.

        The parts keep the group's other keys (``lr``...); each child fills in its defaults.
        The new groups are appended to :attr:`param_groups` in route order, so a
        :func:`~kexue.train.with_transforms` handle takes them in. Parameters are named by
        the model's ``named_parameters()`` at the time of the call.

        Raises:
            ValueError: if the group is not a dict with ``params``, a parameter is not in the
                model, is already optimized, or matches no rule. Nothing is added then.
        """
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise ValueError(
                f"param_group must be a dict with 'params', got {type(param_group).__name__}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        names = {id(p): n for n, p in unwrap_model(self._model).named_parameters()}
        for p in params:
            if not isinstance(p, Tensor) or id(p) not in names:
                raise ValueError(
                    "add_param_group: every parameter must be a tensor of the routed model "
                    f"(its name decides the route), got {_describe(p)}"
                )
            if id(p) in self._owner:
                raise ValueError(
                    f"add_param_group: parameter {names[id(p)]!r} is already optimized by "
                    f"route {self._owner[id(p)]} ({self.labels[self._owner[id(p)]]})"
                )
        parts = _split([{**param_group, "params": params}], self.rules, self.labels, names,
                       require_every_rule=False)
        self._check_layout()
        for i, groups in enumerate(parts):
            for group in groups:
                self.optimizers[i].add_param_group(group)
                self._layout.append((i, len(self.optimizers[i].param_groups) - 1))
                self._owner.update({id(p): i for p in group["params"]})
                self._names.update({id(p): names[id(p)] for p in group["params"]})

    def state_dict(self) -> dict[str, Any]:
        """Every child's ``state_dict``, with the rule, class and parameter names of each."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state: dict[str, Any] = {
            "routes": [
                {"rule": label, "optimizer": type(opt).__name__, "names": self._child_names(i)}
                for i, (label, opt) in enumerate(zip(self.labels, self.optimizers, strict=True))
            ],
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, state)
            if out is not None:
                state = out
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into every child.

        The whole state is checked first (number of routes, each child's class, parameter
        names and group sizes), so a state that does not fit leaves every child as it was.

        Raises:
            ValueError: if the state is not a routed state dict or does not fit this
                optimizer; the message names the first route that differs.
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        self._check_layout()
        if not isinstance(state_dict, Mapping) or not {"routes", "optimizers"} <= set(state_dict):
            got = (sorted(map(str, state_dict)) if isinstance(state_dict, Mapping)
                   else type(state_dict).__name__)
            raise ValueError(
                "state_dict must be RoutedOptimizer.state_dict() output, a mapping with "
                f"'routes' and 'optimizers' (one state dict per route); got {got}"
                + (" (one optimizer's state dict)" if got == ["param_groups", "state"] else "")
            )
        routes, states = list(state_dict["routes"]), list(state_dict["optimizers"])
        if len(routes) != len(self.optimizers) or len(states) != len(self.optimizers):
            raise ValueError(
                f"state_dict holds {len(states)} routes ({[r.get('rule') for r in routes]}), "
                f"this optimizer has {len(self.optimizers)} ({self.labels})"
            )
        for i, (saved, state, opt) in enumerate(zip(routes, states, self.optimizers, strict=True)):
            where = f"route {i} ({self.labels[i]})"
            if saved.get("optimizer") != type(opt).__name__:
                raise ValueError(
                    f"{where} was saved from a {saved.get('optimizer')} optimizer, this one is "
                    f"{type(opt).__name__}"
                )
            mine = self._child_names(i)
            if list(saved.get("names", [])) != mine:
                diff = next((k for k, (a, b) in enumerate(zip(saved["names"], mine,
                                                                strict=False)) if a != b),
                            min(len(saved["names"]), len(mine)))
                raise ValueError(
                    f"{where} was saved for other parameters: {len(saved['names'])} saved, "
                    f"{len(mine)} here; the first difference is at position {diff} "
                    f"(saved {saved['names'][diff:diff + 1]}, here {mine[diff:diff + 1]})"
                )
            sizes = [len(g["params"]) for g in state.get("param_groups", [])]
            if sizes != [len(g["params"]) for g in opt.param_groups]:
                raise ValueError(
                    f"{where}: the saved parameter groups hold {sizes} tensors, this "
                    f"optimizer's hold {[len(g['params']) for g in opt.param_groups]}"
                )
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)  # gives each child new group dicts; param_groups follows
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        # Hooks and with_transforms handles stay with the original (as for torch optimizers);
        # the id()-keyed maps become positions, rebuilt on the copied parameters.
        state = {k: v for k, v in self.__dict__.items()
                 if not k.startswith(("_optimizer_", "_kexue_")) and k not in ("_names", "_owner")}
        state["_child_names"] = [self._child_names(i) for i in range(len(self.optimizers))]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        names = state.pop("_child_names")
        torch.optim.Optimizer.__setstate__(self, state)
        self._names, self._owner = {}, {}
        for i, (opt, child) in enumerate(zip(self.optimizers, names, strict=True)):
            params = [p for g in opt.param_groups for p in g["params"]]
            self._names.update({id(p): n for p, n in zip(params, child, strict=True)})
            self._owner.update({id(p): i for p in params})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, (label, opt) in enumerate(zip(self.labels, self.optimizers, strict=True)):
            n = sum(len(g["params"]) for g in opt.param_groups)
            lines.append(f"  route {i}: {label} -> {type(opt).__name__} ({n} tensors)")
            lines += ["    " + line for line in repr(opt).splitlines()]
        return "\n".join([*lines, ")"])

    # -- helpers --------------------------------------------------------------------------------

    def _child_names(self, index: int) -> list[str]:
        return [self._names[id(p)] for g in self.optimizers[index].param_groups
                for p in g["params"]]

    def _check_layout(self) -> None:
        if len(self._layout) != sum(len(opt.param_groups) for opt in self.optimizers):
            counts = [sum(1 for i, _ in self._layout if i == k)
                      for k in range(len(self.optimizers))]
            grown = next(k for k, opt in enumerate(self.optimizers)
                         if len(opt.param_groups) != counts[k])
            raise ValueError(
                f"route {grown} ({self.labels[grown]})'s optimizer gained a parameter group "
                "that the routed optimizer did not add; add groups with "
                "RoutedOptimizer.add_param_group"
            )


def _describe(p: Any) -> str:
    if isinstance(p, Tensor):
        return f"a tensor of shape {tuple(p.shape)} that is not among its parameters"
    return type(p).__name__


def _split(
    groups: list[dict[str, Any]],
    rules: Sequence[Rule],
    labels: Sequence[str],
    names: Mapping[int, str],
    *,
    require_every_rule: bool,
) -> list[list[dict[str, Any]]]:
    """Split each group by the rules: for every rule, the non-empty parts of every group."""
    parts: list[list[dict[str, Any]]] = [[] for _ in rules]
    unmatched: list[str] = []
    for group in groups:
        rest = {k: v for k, v in group.items() if k not in ("params", "names")}
        buckets: list[list[Tensor]] = [[] for _ in rules]
        for p in group["params"]:
            name = names[id(p)]
            hit = next((i for i, rule in enumerate(rules) if _hits(rule, name, p)), None)
            if hit is None:
                unmatched.append(f"{name} {tuple(p.shape)}")
            else:
                buckets[hit].append(p)
        for i, bucket in enumerate(buckets):
            if bucket:
                parts[i].append({**rest, "params": bucket,
                                 "names": [names[id(p)] for p in bucket]})
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} parameter(s) match no rule: {unmatched[:5]}; add a catch-all "
            "route ('*', factory) last"
        )
    if require_every_rule:
        empty = [i for i, part in enumerate(parts) if not part]
        if empty:
            i = empty[0]
            raise ValueError(
                f"routes[{i}] rule {labels[i]} gets no parameter: it matches none, or only "
                "ones an earlier rule took (the first matching rule wins)"
            )
    return parts


def route(
    model: nn.Module,
    routes: Sequence[tuple[Rule, Factory]],
    *,
    groups: Iterable[Mapping[str, Any]] | None = None,
) -> RoutedOptimizer:
    """Route each parameter to the optimizer of the first rule it matches; one optimizer object.

    For every trainable parameter θ_i with name n_i, route(i) = min{r : rule_r(n_i, θ_i)},
    and optimizer r steps exactly {θ_i : route(i) = r}. A rule is

    * a ``str`` glob on the full parameter name (``"*.bias"``; ``"*"`` catches the rest) or an
      ``re.Pattern`` searched in it,
    * an ``int``: the parameter's ``ndim`` (``2`` for Muon's matrices),
    * a function ``(name, param) -> bool``, e.g. ``lambda n, p: p.ndim >= 2``.

    Each factory is called once with its parameters as a list of param-group dicts, each with
    ``params`` and ``names`` and the keys of the group it came from (none without ``groups``),
    and must return a ``torch.optim.Optimizer`` over exactly those parameters. Names come from
    ``model`` with DDP / ``torch.compile`` wrappers stripped; a tied parameter (GPT-2's
    ``lm_head.weight`` is ``transformer.wte.weight``) is routed once, by its first name.

    Args:
        model: the model; its names decide the routes.
        routes: ``(rule, factory)`` pairs, tried in order; the first match wins.
        groups: parameter groups to split instead of all trainable parameters, e.g.
            :func:`~kexue.train.param_groups` output; every parameter must belong to ``model``.

    Returns:
        A :class:`RoutedOptimizer`.

    Raises:
        ValueError: for no routes, a malformed route or rule, a parameter that matches no rule,
            a rule that gets no parameter, groups holding a tensor that is not a parameter of
            ``model`` (or one twice), a factory that does not return an optimizer over exactly
            its parameters, or ``torch.optim.LBFGS`` (it re-evaluates the closure, which the
            other optimizers cannot share).

    References:
        https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(routes, Mapping) or not isinstance(routes, Sequence) or not routes:
        raise ValueError(
            f"routes must be a non-empty list of (rule, optimizer_factory) pairs, got {routes!r}"
        )
    rules, factories = [], []
    for i, entry in enumerate(routes):
        if not (isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2):
            raise ValueError(f"routes[{i}] must be a (rule, optimizer_factory) pair, got {entry!r}")
        rule, factory = entry
        rules.append(_check_rule(i, rule))
        if not callable(factory):
            raise ValueError(
                f"routes[{i}] optimizer_factory must be a function groups -> torch.optim."
                f"Optimizer, got {factory!r}"
            )
        factories.append(factory)
    labels = [_label(r) for r in rules]

    named = list(unwrap_model(model).named_parameters())
    names = {id(p): n for n, p in named}
    if groups is None:
        trainable = [p for _, p in named if p.requires_grad]
        if not trainable:
            raise ValueError(f"model {type(model).__name__} has no trainable parameters")
        given = [{"params": trainable}]
    else:
        given = []
        seen: set[int] = set()
        for k, group in enumerate(groups):
            if not isinstance(group, Mapping) or "params" not in group:
                raise ValueError(
                    f"groups[{k}] must be a dict with 'params' (as param_groups returns), "
                    f"got {type(group).__name__}"
                )
            params = group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            for p in params:
                if not isinstance(p, Tensor) or id(p) not in names:
                    raise ValueError(
                        f"groups[{k}] holds {_describe(p)}; every tensor must be a parameter "
                        f"of the model (its name decides the route)"
                    )
                if id(p) in seen:
                    raise ValueError(f"groups[{k}] repeats parameter {names[id(p)]!r}")
                seen.add(id(p))
            given.append({**group, "params": params})
        if not seen:
            raise ValueError("groups holds no parameter")
    parts = _split(given, rules, labels, names, require_every_rule=True)

    optimizers = []
    for i, (factory, part) in enumerate(zip(factories, parts, strict=True)):
        opt = factory(part)
        where = f"routes[{i}] ({labels[i]}) optimizer_factory"
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"{where} must return a torch.optim.Optimizer, got {opt!r}")
        if isinstance(opt, torch.optim.LBFGS):
            raise ValueError(
                f"{where} returned LBFGS, which re-evaluates the closure within its step; a "
                "routed step evaluates it once for all optimizers. Use LBFGS on its own"
            )
        held = [id(p) for g in opt.param_groups for p in g["params"]]
        wanted = [id(p) for g in part for p in g["params"]]
        if sorted(held) != sorted(wanted):
            raise ValueError(
                f"{where} returned an optimizer over {len(held)} tensors, not over the "
                f"{len(wanted)} it was given ({[names[w] for w in wanted][:3]}...); build it "
                "from the groups passed to the factory"
            )
        optimizers.append(opt)
    return RoutedOptimizer(model, rules, optimizers, names)
