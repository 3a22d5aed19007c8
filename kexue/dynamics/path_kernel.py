"""The path kernel: a trained model as the sum of its training steps, attributed to examples.

Whatever the optimizer, the output of a model at any input x telescopes exactly over the steps
θ_{t+1} = θ_t + Δ_t it took:

    f(x; θ_T) = f(x; θ_0) + Σ_t ∫_0^1 ∇_θ f(x; θ_t + s Δ_t) · Δ_t ds.

For plain (minibatch) SGD on the loss Σ_{i∈B_t} w ℓ(f(x_i; θ), y_i), with w = 1/|B_t| for a mean
and 1 for a sum, the step is a sum over the minibatch, Δ_t = Σ_i Δ_{t,i} with

    Δ_{t,i} = −η_t w ∇_θ f(x_i; θ_t)ᵀ ℓ'_{t,i},        ℓ'_{t,i} = ∂ℓ/∂f at (f(x_i; θ_t), y_i),

(η_t a per-parameter learning rate when parameter groups differ), so each step's increment splits
into one contribution per training example,

    c_{t,i}(x) = ∫_0^1 ∇_θ f(x; θ_t + s Δ_t) ds · Δ_{t,i} = −η_t w K̄_t(x, x_i) ℓ'_{t,i},

with K̄_t(x, x_i) = ∫_0^1 ∇f(x; θ_t + sΔ_t) ds · ∇f(x_i; θ_t)ᵀ the tangent kernel averaged along
the step, and f(x; θ_T) = f(x; θ_0) + Σ_i Σ_t c_{t,i}(x): a kernel machine over the training set.

:class:`PathKernelRecorder` hooks into any ``torch.optim`` optimizer (``register_step_pre_hook``
and ``register_step_post_hook``, no subclass) and records θ_t before and after every step, the
indices of the step's examples and ℓ'_{t,i}. Increments are evaluated two ways:

- ``"tangent"``: ∇f(x; θ_t) · Δ_t, the first-order (neural tangent kernel) sum. Its error is
  O(‖Δ_t‖²) per step, so at a fixed training time η·T the total error halves when η halves.
- ``"exact"``: the line integral by ``nodes``-point Gauss–Legendre quadrature over s of
  forward-mode products (``torch.func.jvp``). The integrand is analytic in s for a smooth model,
  so a few nodes reconstruct f(x; θ_T) to rounding.

What attribution means for other optimizers. The total reconstruction holds for any optimizer
(Adam, momentum, weight decay, clipping, LR schedules, even weights edited between steps, which
are recorded as extra, external steps). Per-example contributions are defined only for steps that
*are* SGD steps on the recorded loss: after every step the recorder compares the actual Δ_t with
−η_t Σ_i w ∇ℓ_i computed from its own per-example data, and marks the step attributable when they
agree to ``rtol``. It checks the step, not the optimizer's class, so ``SGD`` without momentum or
weight decay qualifies under any LR schedule or per-group learning rates (and so does the first
step of SGD with momentum, which equals plain SGD). Adam's Δ_t depends on past gradients and is
not linear in the current ones; splitting it among examples would need an arbitrary choice, so
:meth:`PathKernelRecorder.contributions` refuses such runs instead of guessing.

Memory is O((T + 1) · P) for T steps and P parameters (one flat copy of θ per step, on the
parameters' device) plus O(T · |B| · out) for the loss derivatives: fine for the small models
this analysis is meant for.

Example::

    rec = PathKernelRecorder(model, opt, per_example_loss, x_train, y_train)
    for idx in batches:
        rec.set_batch(idx)
        per_example_loss(model(x_train[idx]), y_train[idx]).mean().backward()
        opt.step(); opt.zero_grad()
    rec.reconstruct(x_test)                # == model(x_test), to rounding
    rec.contributions(x_test)              # (N_test, N_train, out), sums to f_T − f_0
    rec.top_k(x_test, 3).indices           # the examples that explain each prediction most
    rec.remove()

References:
    https://kexue.fm/archives/8009 (从动力学角度看优化算法(七):SGD ≈ SVM?)
    Domingos, "Every Model Learned by Gradient Descent Is Approximately a Kernel Machine", 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from kexue._checks import check_int, check_real
from kexue.train._naming import unwrap_model

__all__ = ["PathKernelRecorder", "TopK"]

Method = Literal["exact", "tangent"]
LossFn = Callable[[Tensor, Tensor], Tensor]


class TopK(NamedTuple):
    """What :meth:`PathKernelRecorder.top_k` returns, for N test points and k examples.

    Attributes:
        indices: (N, k) training-example indices, largest contribution magnitude first.
        values: (N, k, *out) their contributions c_i(x).
    """

    indices: Tensor
    values: Tensor


@dataclass
class _Step:
    """One segment θ_t → θ_{t+1} of the recorded path."""

    external: bool  # a change made outside the optimizer (between steps)
    indices: Tensor | None = None  # (B,) training examples of the step
    dloss: Tensor | None = None  # (B, *out) ℓ'_{t,i}
    lrs: tuple[float, ...] | None = None  # learning rate of each tracked parameter tensor
    weight: float = 1.0  # w: 1/B for a mean, 1 for a sum
    attributable: bool = False
    deviation: float = math.nan  # ‖Δ_t − Δ_t^SGD‖ / ‖Δ_t^SGD‖


def _gauss_legendre(nodes: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the ``nodes``-point Gauss–Legendre rule on [0, 1]."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    s = torch.as_tensor((u + 1.0) / 2.0, dtype=dtype, device=device)  # (K,)
    return s, torch.as_tensor(w / 2.0, dtype=dtype, device=device)  # (K,)


class PathKernelRecorder:
    """Record the training path of ``model`` under ``optimizer`` and decompose its outputs.

    Each ``optimizer.step()`` is recorded through step hooks; nothing else in the training loop
    changes. With ``loss_fn`` and the training set, each step also records the derivatives
    ℓ'_{t,i} of its examples (one extra forward and backward pass per step, at θ_t) and whether
    the step is an SGD step on that loss, which is what :meth:`contributions` needs. Without
    them only the path θ_0, …, θ_T is kept, enough for :meth:`reconstruct` under any optimizer.

    θ_0 is the model at construction. The model must be a deterministic function of its
    parameters (no dropout or batch statistics in its current mode; buffers are read as they are
    at query time) that maps a batch (N, ...) to outputs (N, *out), and ``torch.func.vmap``
    must be able to run it one example at a time. The recorder's own forward passes run the
    model's forward hooks too.

    Args:
        model: the model being trained; its parameters with ``requires_grad`` are tracked and
            must share one dtype and device.
        optimizer: any ``torch.optim.Optimizer`` updating (some of) those parameters.
        loss_fn: ``loss_fn(outputs, targets) -> (B,)`` per-example losses ℓ_i, written with
            torch operations (``torch.func`` differentiates it). The training loss must be
            their mean (``reduction="mean"``) or sum (``"sum"``) over the step's examples.
        train_x: (N_train, ...) all training inputs; example i is ``train_x[i]``.
        train_y: (N_train, ...) the matching targets.
        reduction: how the training loss reduces the per-example losses.
        rtol: relative tolerance (a finite number >= 0) for declaring a step an SGD step;
            default √eps of the parameters' dtype (1.5e-8 in float64, 3.5e-4 in float32).

    Raises:
        ValueError: for a model without trainable parameters, parameters of mixed dtype or
            device, an optimizer that updates none of them, ``loss_fn`` without the training
            set (or the other way round), mismatched ``train_x``/``train_y`` lengths, a
            ``train_x`` or ``train_y`` on another device than the parameters, a floating
            ``train_x`` of another dtype, or an unknown ``reduction``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None = None,
        train_x: Tensor | None = None,
        train_y: Tensor | None = None,
        *,
        reduction: Literal["mean", "sum"] = "mean",
        rtol: float | None = None,
    ) -> None:
        if rtol is not None:
            rtol = check_real("rtol", rtol, low=0)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        given = [loss_fn is not None, train_x is not None, train_y is not None]
        if any(given) and not all(given):
            raise ValueError(
                "loss_fn, train_x and train_y go together (all three to attribute steps to "
                f"examples, none to reconstruct only); got loss_fn={loss_fn is not None}, "
                f"train_x={train_x is not None}, train_y={train_y is not None}"
            )
        if train_x is not None and train_y is not None:
            if not isinstance(train_x, Tensor) or train_x.ndim < 1 or len(train_x) == 0:
                raise ValueError(f"train_x must be a non-empty tensor (N_train, ...), got "
                                 f"{_describe(train_x)}")
            if not isinstance(train_y, Tensor) or train_y.ndim < 1 or len(train_y) != len(train_x):
                raise ValueError(f"train_y must be a tensor with len(train_x)={len(train_x)} rows, "
                                 f"got {_describe(train_y)}")
        self.model = unwrap_model(model)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"model {type(model).__name__} has no trainable parameters to track")
        kinds = {(p.dtype, p.device) for _, p in named}
        if len(kinds) > 1:
            raise ValueError(f"tracked parameters must share one dtype and device, got {kinds}")
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in ids for _, p in named):
            raise ValueError("optimizer updates none of the model's trainable parameters")
        dtype, device = next(iter(kinds))
        if train_x is not None and train_y is not None:
            _check_input("train_x", train_x, dtype, device)
            if train_y.device != device:
                raise ValueError(f"train_y must be on the model's device {device}, got "
                                 f"{train_y.device}")
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.train_x = train_x
        self.train_y = train_y
        self.reduction = reduction
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self.dtype, self.device = dtype, device
        eps = torch.finfo(self.dtype).eps
        self.rtol = math.sqrt(eps) if rtol is None else rtol
        self._eps = eps

        self._thetas: list[Tensor] = [self._flat()]  # θ_0, θ_1, ... each (P,)
        self._steps: list[_Step] = []
        self._batch: Tensor | None = None
        self._pending: tuple[Tensor, _Step, Tensor | None] | None = None
        self._hooks = [optimizer.register_step_pre_hook(self._pre_step),
                       optimizer.register_step_post_hook(self._post_step)]

    # -- recording ----------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """Recorded segments of the path: optimizer steps plus external changes between them."""
        return len(self._steps)

    @property
    def attributable(self) -> tuple[bool, ...]:
        """For each recorded segment, whether it is an SGD step that splits over examples."""
        return tuple(s.attributable for s in self._steps)

    def set_batch(self, indices: Tensor | Sequence[int]) -> None:
        """Declare the training examples (indices into ``train_x``) of the next ``step()``.

        Without a call, a step is taken to use the whole training set.

        Raises:
            ValueError: without a training set, or for empty, non-1-D or out-of-range indices.
        """
        if self.train_x is None:
            raise ValueError("set_batch needs the training set: pass loss_fn, train_x, train_y")
        idx = torch.as_tensor(indices, device=self.train_x.device)
        n = len(self.train_x)
        integer = not (idx.dtype.is_floating_point or idx.dtype.is_complex
                       or idx.dtype == torch.bool)
        if idx.ndim != 1 or idx.numel() == 0 or not integer:
            raise ValueError(f"indices must be a non-empty 1-D integer sequence, got "
                             f"{_describe(idx)}")
        if bool((idx < 0).any()) or bool((idx >= n).any()):
            raise ValueError(f"indices must lie in [0, {n}), got min {int(idx.min())}, "
                             f"max {int(idx.max())}")
        self._batch = idx.long()

    def remove(self) -> None:
        """Detach the recorder from the optimizer; what was recorded stays queryable."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _flat(self) -> Tensor:
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self._names]).clone()  # (P,)

    def _unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        parts = theta.split(self._numels)
        return {n: t.view(s) for n, t, s in zip(self._names, parts, self._shapes, strict=True)}

    def _f(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.model, self._unflatten(theta), (x,))  # (N, *out)

    def _lrs(self) -> tuple[float, ...]:
        by_id: dict[int, float] = {}
        for g in self.optimizer.param_groups:
            lr = g.get("lr", math.nan)
            for p in g["params"]:
                by_id[id(p)] = float(lr)
        params = dict(self.model.named_parameters())
        # Parameters outside the optimizer do not move: learning rate 0.
        return tuple(by_id.get(id(params[n]), 0.0) for n in self._names)

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        theta = self._flat()
        if not torch.equal(theta, self._thetas[-1]):
            self._thetas.append(theta)
            self._steps.append(_Step(external=True))
        step = _Step(external=False)
        grad = None
        if self.loss_fn is not None and self.train_x is not None and self.train_y is not None:
            idx = self._batch
            if idx is None:
                idx = torch.arange(len(self.train_x), device=self.train_x.device)
            xb, yb = self.train_x[idx], self.train_y[idx]
            out, pullback = vjp(lambda th: self._f(th, xb), theta)  # (B, *out)
            losses, loss_pullback = vjp(lambda o: self.loss_fn(o, yb), out)
            if losses.shape != (len(idx),):
                raise ValueError(f"loss_fn must return per-example losses of shape ({len(idx)},), "
                                 f"got {tuple(losses.shape)}")
            (dloss,) = loss_pullback(torch.ones_like(losses))  # (B, *out)
            weight = 1.0 / len(idx) if self.reduction == "mean" else 1.0
            (grad,) = pullback(dloss * weight)  # (P,) Σ_i w ∇ℓ_i
            step.indices, step.dloss, step.weight = idx, dloss.detach(), weight
            step.lrs = self._lrs()
        self._pending = (theta, step, grad)

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._pending is None:
            return
        theta, step, grad = self._pending
        self._pending = None
        self._batch = None
        new = self._flat()
        if grad is not None and step.lrs is not None:
            predicted = -self._lr_vector(step.lrs) * grad  # (P,) the SGD step
            gap = torch.linalg.vector_norm(new - theta - predicted)
            scale = torch.linalg.vector_norm(predicted)
            step.deviation = float(gap / scale) if scale > 0 else float(gap > 0) * math.inf
            # Forming θ_{t+1} rounds each coordinate once: allow a few eps of ‖θ_{t+1}‖.
            slack = 8 * self._eps * torch.linalg.vector_norm(new)
            step.attributable = bool(gap <= self.rtol * scale + slack)
        self._thetas.append(new)
        self._steps.append(step)

    def _lr_vector(self, lrs: tuple[float, ...]) -> Tensor:
        eta = torch.tensor(lrs, dtype=self.dtype, device=self.device)
        numels = torch.tensor(self._numels, device=self.device)
        return eta.repeat_interleave(numels)  # (P,)

    # -- queries ------------------------------------------------------------------------------

    def _check_query(self, x: Tensor, method: str, nodes: int) -> None:
        if not self._steps:
            raise ValueError("no optimizer step has been recorded yet; call optimizer.step() first")
        if method not in ("exact", "tangent"):
            raise ValueError(f"method must be 'exact' or 'tangent', got {method!r}")
        check_int("nodes", nodes, low=1)
        if not isinstance(x, Tensor) or x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x must be a non-empty tensor (N, ...), got {_describe(x)}")
        _check_input("x", x, self.dtype, self.device)
        if self.train_x is not None and x.shape[1:] != self.train_x.shape[1:]:
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.train_x.shape[1:]))})"
                             f" like train_x, got {tuple(x.shape)}")

    def _rule(self, method: str, nodes: int) -> tuple[Tensor, Tensor]:
        if method == "tangent":
            one = torch.ones(1, dtype=self.dtype, device=self.device)
            return one - 1, one  # s = 0, weight 1
        return _gauss_legendre(nodes, self.dtype, self.device)

    def initial(self, x: Tensor) -> Tensor:
        """f(x; θ_0): the model's outputs at construction, (N, *out).

        Raises:
            ValueError: for an empty x, or a model whose outputs do not start with N.
        """
        if not isinstance(x, Tensor) or x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x must be a non-empty tensor (N, ...), got {_describe(x)}")
        with torch.no_grad():
            out = self._f(self._thetas[0], x)
        if out.ndim < 1 or len(out) != len(x):
            raise ValueError(f"model must map x (N, ...) to outputs (N, *out); got "
                             f"{tuple(out.shape)} for N={len(x)}")
        return out

    def increments(self, x: Tensor, method: Method = "exact", nodes: int = 8) -> Tensor:
        """Per-segment increments Σ_k w_k ∇f(x; θ_t + s_k Δ_t) · Δ_t, shape (T, N, *out).

        ``"exact"`` uses the ``nodes``-point Gauss–Legendre rule on s ∈ [0, 1]; ``"tangent"``
        the single node s = 0 (``nodes`` is ignored). T counts external changes too.

        Raises:
            ValueError: before any step, for an unknown method, nodes < 1 or x of the wrong
                shape, device or (floating) dtype.
        """
        self._check_query(x, method, nodes)
        s, w = self._rule(method, nodes)

        def directional(point: Tensor, tangent: Tensor) -> Tensor:
            return jvp(lambda th: self._f(th, x), (point,), (tangent,))[1]  # (N, *out)

        out = []
        with torch.no_grad():
            for theta, new in zip(self._thetas[:-1], self._thetas[1:], strict=True):
                delta = new - theta  # (P,)
                points = theta + s[:, None] * delta  # (K, P)
                vals = vmap(directional, in_dims=(0, None))(points, delta)  # (K, N, *out)
                out.append(torch.tensordot(w, vals, dims=1))  # (N, *out)
        return torch.stack(out)  # (T, N, *out)

    def reconstruct(self, x: Tensor, method: Method = "exact", nodes: int = 8) -> Tensor:
        """f(x; θ_0) + Σ_t increment_t, the outputs at the last recorded θ_T, (N, *out).

        With ``"exact"`` this equals f(x; θ_T) up to quadrature error (rounding for a smooth
        model and a handful of nodes); with ``"tangent"`` it is the first-order tangent-kernel
        sum, off by O(Σ_t ‖Δ_t‖²).

        Raises:
            ValueError: before any step, for an unknown method, nodes < 1 or x of the wrong
                shape, device or (floating) dtype.
        """
        inc = self.increments(x, method, nodes)
        return self.initial(x) + inc.sum(0)

    def contributions(
        self, x: Tensor, method: Method = "exact", nodes: int = 8, chunk_size: int | None = None
    ) -> Tensor:
        """Contribution of every training example to the outputs at x, (N, N_train, *out).

        c_i(x) = Σ_t c_{t,i}(x), c_{t,i}(x) = Σ_k w_k ∇f(x; θ_t + s_k Δ_t) · Δ_{t,i}, with
        Δ_{t,i} = −η_t w ∇_θ f(x_i; θ_t)ᵀ ℓ'_{t,i} (zero for examples not in step t's batch).
        Since Σ_i Δ_{t,i} = Δ_t for an SGD step, Σ_i c_i(x) = f(x; θ_T) − f(x; θ_0) with
        ``"exact"``, and equals the tangent-kernel sum with ``"tangent"``.

        Args:
            x: (N, ...) query inputs.
            method: ``"exact"`` (path-averaged kernel) or ``"tangent"`` (kernel at θ_t).
            nodes: Gauss–Legendre nodes for ``"exact"``.
            chunk_size: examples per vectorised batch (``torch.func.vmap``'s ``chunk_size``),
                to bound memory; None does a whole minibatch at once.

        Raises:
            ValueError: without a training set, if a recorded segment is not an SGD step on
                the recorded loss (another optimizer, momentum, weight decay, a changed loss
                or batch, weights edited between steps), or for bad arguments.
        """
        if self.train_x is None:
            raise ValueError("contributions need the training set: pass loss_fn, train_x, "
                             "train_y to PathKernelRecorder")
        self._check_query(x, method, nodes)
        bad = [t for t, st in enumerate(self._steps) if not st.attributable]
        if bad:
            st = self._steps[bad[0]]
            why = ("the weights changed between optimizer steps" if st.external else
                   f"Δ_t differs from −η·Σ_i w∇ℓ_i by {st.deviation:.3g} relative "
                   f"(rtol {self.rtol:.3g})")
            raise ValueError(
                f"{len(bad)} of {len(self._steps)} recorded steps are not SGD steps on the "
                f"recorded loss, first step {bad[0]}: {why}. Per-example attribution is defined "
                "only for plain SGD (no momentum, weight decay or adaptive scaling, with the "
                "batch declared by set_batch); use reconstruct() for other optimizers"
            )
        s, w = self._rule(method, nodes)

        def directional(point: Tensor, tangent: Tensor) -> Tensor:
            return jvp(lambda th: self._f(th, x), (point,), (tangent,))[1]  # (N, *out)

        def example_grad(theta: Tensor, xi: Tensor, li: Tensor) -> Tensor:
            # ∇_θ ⟨f(x_i; θ), ℓ'_i⟩ = ∇_θ f(x_i; θ)ᵀ ℓ'_i
            _, pullback = vjp(lambda th: self._f(th, xi[None])[0], theta)
            return pullback(li)[0]  # (P,)

        total = None
        with torch.no_grad():
            for t, st in enumerate(self._steps):
                assert st.indices is not None and st.dloss is not None and st.lrs is not None
                theta, new = self._thetas[t], self._thetas[t + 1]
                delta = new - theta  # (P,)
                xb = self.train_x[st.indices]
                grads = vmap(example_grad, in_dims=(None, 0, 0), chunk_size=chunk_size)(
                    theta, xb, st.dloss)  # (B, P)
                per_example = -st.weight * self._lr_vector(st.lrs) * grads  # (B, P) Δ_{t,i}
                step_c = None
                for sk, wk in zip(s, w, strict=True):
                    vals = vmap(directional, in_dims=(None, 0), chunk_size=chunk_size)(
                        theta + sk * delta, per_example)  # (B, N, *out)
                    step_c = wk * vals if step_c is None else step_c + wk * vals
                assert step_c is not None
                if total is None:
                    total = step_c.new_zeros((len(self.train_x),) + step_c.shape[1:])
                total.index_add_(0, st.indices.to(step_c.device), step_c)  # (N_train, N, *out)
        assert total is not None
        return total.movedim(0, 1)  # (N, N_train, *out)

    def top_k(self, x: Tensor, k: int, method: Method = "exact", nodes: int = 8) -> TopK:
        """The k training examples with the largest contributions to each output at x.

        Examples are ranked by |c_i(x)| (the L2 norm over output dimensions for vector
        outputs): those that moved the prediction most, in either direction.

        Raises:
            ValueError: if k is not in [1, N_train], and as :meth:`contributions`.
        """
        if self.train_x is None:
            raise ValueError("top_k needs the training set: pass loss_fn, train_x, train_y to "
                             "PathKernelRecorder")
        n_train = len(self.train_x)
        k = check_int("k", k, low=1, high=n_train)
        c = self.contributions(x, method, nodes)  # (N, N_train, *out)
        size = c.reshape(c.shape[0], c.shape[1], -1).norm(dim=-1)  # (N, N_train)
        indices = size.topk(k, dim=1).indices  # (N, k)
        gather = indices.reshape(indices.shape + (1,) * (c.ndim - 2)).expand(
            indices.shape + c.shape[2:])  # (N, k, *out)
        return TopK(indices, c.gather(1, gather))


def _check_input(name: str, x: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """A model input must be on the parameters' device and, if floating, of their dtype.

    Integer inputs (token indices for an embedding) are left to the model.
    """
    if x.device != device:
        raise ValueError(f"{name} must be on the model's device {device}, got {x.device}")
    if x.is_floating_point() and x.dtype != dtype:
        raise ValueError(f"{name} must have the model's parameter dtype {dtype}, got {x.dtype}; "
                         f"convert it with {name}.to({dtype})")


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
