"""kexue's weight EMA and gradient transforms as ``lightning.Trainer`` callbacks.

:class:`EMACallback` keeps a :class:`kexue.train.EMA` of the LightningModule,

    ema_t = d_t · ema_{t-1} + (1 − d_t) · θ_t,        ema_0 = θ at the start of training,

with one update after each training batch in which an optimizer really stepped: a batch that
only accumulates gradients (``accumulate_grad_batches``), a step that a kexue transform
skipped (:func:`~kexue.train.skip_nonfinite`, :func:`~kexue.train.accumulate`) and a step that
``GradScaler`` skipped leave the average alone. The averaged weights are swapped into the
model for validation, test and predict, and the training weights come back bit for bit; the
average rides in the checkpoint, so a resumed run equals an uninterrupted one.

:class:`GradientTransformCallback` plugs a :class:`~kexue.train.GradientTransform` into the
LightningModule's optimizers with :func:`kexue.train.with_transforms`, with its state in the
checkpoint; it works with automatic optimisation (Lightning calls ``optimizer.step(closure)``)
and manual optimisation alike.

Example::

    from kexue.integrations.lightning import EMACallback, GradientTransformCallback
    from kexue.train import chain, clip_by_global_norm, ema_warmup, skip_nonfinite

    trainer = lightning.Trainer(callbacks=[
        EMACallback(decay=ema_warmup(0.999)),
        GradientTransformCallback(chain(skip_nonfinite(), clip_by_global_norm(1.0))),
    ])

References:
    https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as e:  # pragma: no cover - exercised by a test that hides lightning
    raise ImportError(
        "kexue.integrations.lightning needs Lightning (`import lightning.pytorch`), which is "
        f"not installed ({e}); install it with: pip install 'kexue[integrations]'"
    ) from e

from kexue._checks import check_int, check_real
from kexue.train.ema import EMA, Decay
from kexue.train.transforms import (
    GradientTransform,
    TransformHandle,
    transform_handles,
    with_transforms,
)

__all__ = ["EMACallback", "GradientTransformCallback", "transform_handles"]

_STAGES = ("validate", "test", "predict")


class EMACallback(Callback):
    """Weight EMA of the LightningModule, updated after every optimizer step that stepped.

    The average follows ``ema_t = d_t · ema_{t-1} + (1 − d_t) · θ_t`` with ``ema_0`` the
    weights when training starts (after any checkpoint is restored), one update at the end of
    each training batch in which at least one optimizer stepped and no kexue transform on it
    skipped the step (several optimizers stepping in one batch give one update). With
    ``update_every = k`` only every k-th such step is averaged. A decay schedule
    ``d(n)`` is called with the update index n = 1, 2, ...; ``d(n) = 0`` for n ≤ s starts the
    average at step s (the average is then the weights themselves).

    For the stages in ``swap_during`` the averaged weights replace the training weights by
    exchanging tensor storages (:meth:`kexue.train.EMA.swapped`: no copies where dtypes
    match) and the training weights return bit for bit afterwards, also when the stage
    raises. A checkpoint saved while the average is swapped in still holds the training
    weights under ``state_dict``; the average is in the callback's state. Under DDP every rank
    holds the same weights after each step, so every rank's average is the same.

    Args:
        decay: d in (0, 1), or a function update index -> decay such as
            :func:`kexue.train.ema_warmup`.
        update_every: average only every ``update_every``-th step that stepped.
        buffers: ``"average"`` floating buffers (BatchNorm statistics) like parameters,
            ``"copy"`` them, or ``"ignore"`` them.
        dtype: dtype of the average; ``None`` keeps each tensor's, promoted to at least
            float32 (a bf16 model is averaged in float32).
        device: where the average lives; ``None`` beside each tensor, ``"cpu"`` offloads it.
        swap_during: the stages that see the averaged weights, a subset of
            ``("validate", "test", "predict")``; ``()`` never swaps.
        ema_weights_at_end: copy the average into the model when training ends, so that the
            module (and a checkpoint saved afterwards) holds the averaged weights.

    Raises:
        ValueError: for a decay outside (0, 1), ``update_every`` < 1, an unknown ``buffers``
            mode or stage, or a non-floating ``dtype``.

    References:
        https://kexue.fm/archives/6575
    """

    def __init__(
        self,
        decay: Decay = 0.999,
        *,
        update_every: int = 1,
        buffers: Literal["average", "copy", "ignore"] = "average",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        swap_during: Iterable[str] = _STAGES,
        ema_weights_at_end: bool = False,
    ) -> None:
        if not callable(decay):
            decay = check_real("decay", decay, low=0, high=1, low_open=True, high_open=True)
        if isinstance(swap_during, str):
            raise ValueError(f"swap_during must be a collection of stage names from {_STAGES}, "
                             f"got the string {swap_during!r} (write ({swap_during!r},))")
        swap_during = tuple(swap_during)
        unknown = [s for s in swap_during if s not in _STAGES]
        if unknown:
            raise ValueError(f"swap_during must name stages from {_STAGES}, got {unknown}")
        if not isinstance(ema_weights_at_end, bool):
            raise ValueError(f"ema_weights_at_end must be a bool, got {ema_weights_at_end!r}")
        update_every = check_int("update_every", update_every, low=1)
        if buffers not in ("average", "copy", "ignore"):
            raise ValueError(f"buffers must be 'average', 'copy' or 'ignore', got {buffers!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device must be a torch.device, a device string or None, "
                                 f"got {device!r}") from e
        self.decay = decay
        self.update_every = update_every
        self.buffers = buffers
        self.dtype = dtype
        self.device = device
        self.swap_during = frozenset(swap_during)
        self.ema_weights_at_end = ema_weights_at_end
        # Built when a stage starts, when the weights are final (a checkpoint restored).
        self._ema: EMA | None = None
        self._pending: Mapping[str, Any] | None = None  # loaded, applied at the next _ensure
        self._stepped = False  # an optimizer stepped since the last update
        self._hooks: list[Any] = []
        self._swap: contextlib.AbstractContextManager | None = None
        self._swap_stage = ""

    @property
    def state_key(self) -> str:
        decay = self.decay if isinstance(self.decay, float) else getattr(
            self.decay, "__qualname__", type(self.decay).__name__)
        return self._generate_state_key(decay=decay, update_every=self.update_every)

    @property
    def ema(self) -> EMA | None:
        """The :class:`kexue.train.EMA` (None until a stage starts)."""
        return self._ema

    # -- the average --------------------------------------------------------------------------

    def _ensure(self, pl_module: pl.LightningModule) -> EMA:
        # A hook may run under inference_mode (Lightning 2.6 calls them outside it, but a
        # loop or a user may not): tensors made there could not be updated in place later.
        with torch.inference_mode(False):
            if self._ema is None or self._ema.model is not pl_module:
                self._ema = EMA(pl_module, self.decay, update_every=self.update_every,
                                buffers=self.buffers, dtype=self.dtype, device=self.device)
            if self._pending is not None:
                self._ema.load_state_dict(self._pending["ema"])
                self._pending = None
        return self._ema

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if all(h.last_stepped for h in transform_handles(optimizer)):
            self._stepped = True

    def _unhook(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure(pl_module)
        self._unhook()
        self._hooks = [opt.register_step_post_hook(self._after_step)
                       for opt in trainer.optimizers]
        self._stepped = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._stepped:
            self._stepped = False
            self._ensure(pl_module).update()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unhook()
        if self.ema_weights_at_end:
            self._ensure(pl_module).copy_to(pl_module)

    # -- evaluation with the average ----------------------------------------------------------

    def _swap_in(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage not in self.swap_during or self._swap is not None:
            return
        ema = self._ensure(pl_module)
        with torch.inference_mode(False):
            swap = ema.swapped()
            swap.__enter__()
        self._swap, self._swap_stage = swap, stage

    def _swap_out(self) -> None:
        if self._swap is None:
            return
        swap, self._swap = self._swap, None
        with torch.inference_mode(False):
            swap.__exit__(None, None, None)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in("validate", pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in("test", pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in("predict", pl_module)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._swap_out()
        self._unhook()

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"ema": EMA.state_dict()}`` (empty before the EMA exists, unless loaded)."""
        if self._pending is not None:
            return dict(self._pending)
        return {"ema": self._ema.state_dict()} if self._ema is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the average from a checkpoint; it is applied when the next stage starts.

        Raises:
            ValueError: if the state has no ``"ema"`` entry. A state that does not match the
                model raises when applied (see :meth:`kexue.train.EMA.load_state_dict`).
        """
        if not isinstance(state_dict, Mapping) or "ema" not in state_dict:
            got = sorted(map(str, state_dict)) if isinstance(state_dict, Mapping) else \
                type(state_dict).__name__
            raise ValueError(f"EMACallback state must hold 'ema' (EMA.state_dict()), got {got}")
        self._pending = state_dict

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Saved while the average is swapped in (trainer.save_checkpoint during validation):
        # the model's entries must be the training weights. Swapping out and in again leaves
        # the training tensors untouched, so the entries taken in between stay valid.
        if self._swap is None or "state_dict" not in checkpoint:
            return
        stage = self._swap_stage
        self._swap_out()
        training = pl_module.state_dict()
        saved = checkpoint["state_dict"]
        for key in saved:
            if key in training:
                saved[key] = training[key]
        self._swap_in(stage, pl_module)


class GradientTransformCallback(Callback):
    """Apply a :class:`~kexue.train.GradientTransform` in every optimizer step of the fit.

    At ``on_fit_start`` (the optimizers exist then) each optimizer of the LightningModule gets
    :func:`kexue.train.with_transforms`: the gradients that reach ``optimizer.step`` are
    transformed first, each optimizer with its own transform state. Lightning's automatic
    optimisation calls ``optimizer.step(closure)``; every evaluation of the closure (LBFGS
    evaluates it several times) passes the transform, after Lightning's own gradient
    clipping (``gradient_clip_val``) and after ``on_before_optimizer_step``, which therefore
    sees the untransformed gradients. In manual optimisation ``opt.step()`` is transformed
    the same way. A skip (:func:`~kexue.train.skip_nonfinite`, :func:`~kexue.train.accumulate`)
    leaves the weights and the optimizer state alone, and :class:`EMACallback` does not
    average that step. The transform state (accumulated gradients, counters) is in the
    checkpoint; the hooks come off when the fit ends, the state stays readable.

    Args:
        transform: one transform for every optimizer, or one per optimizer, in the order of
            ``trainer.optimizers`` (None leaves that optimizer alone).

    Raises:
        ValueError: if ``transform`` is neither; at fit start, if the number of transforms
            is not the number of optimizers.
    """

    def __init__(
        self, transform: GradientTransform | Sequence[GradientTransform | None]
    ) -> None:
        # A GradientTransform is a NamedTuple, hence itself a Sequence: test it first.
        if isinstance(transform, GradientTransform):
            transforms: GradientTransform | list[GradientTransform | None] = transform
        elif isinstance(transform, Sequence) and not isinstance(transform, str) and any(
                t is not None for t in transform) and all(
                t is None or isinstance(t, GradientTransform) for t in transform):
            transforms = list(transform)
        else:
            raise ValueError(
                "transform must be a GradientTransform or a sequence of GradientTransform or "
                f"None (one per optimizer, at least one transform), got {transform!r}")
        self.transform = transforms
        self.handles: list[TransformHandle | None] = []
        self._attached = False
        self._pending: list[Mapping[str, Any] | None] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach()
        optimizers = trainer.optimizers
        if isinstance(self.transform, GradientTransform):
            transforms = [self.transform] * len(optimizers)
        else:
            transforms = self.transform
        if len(transforms) != len(optimizers) or not optimizers:
            raise ValueError(
                f"GradientTransformCallback got {len(transforms)} transforms for "
                f"{len(optimizers)} optimizers: transform must be one GradientTransform or one "
                "per optimizer returned by configure_optimizers")
        self.handles = [None if t is None else with_transforms(opt, t)
                        for opt, t in zip(optimizers, transforms, strict=True)]
        self._attached = True
        if self._pending is not None:
            self._apply(self._pending)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._detach()

    def _detach(self) -> None:
        for h in self.handles:
            if h is not None:
                h.remove()
        self._attached = False

    def state_dict(self) -> dict[str, Any]:
        """``{"handles": [TransformHandle.state_dict() or None, ...]}``, one per optimizer."""
        if self._pending is not None:
            return {"handles": list(self._pending)}
        if self.handles:
            return {"handles": [None if h is None else h.state_dict() for h in self.handles]}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the transform states from a checkpoint (applied at fit start if not yet).

        Raises:
            ValueError: if the state has no ``"handles"`` list, or its length is not the
                number of optimizers.
        """
        handles = state_dict.get("handles") if isinstance(state_dict, Mapping) else None
        if not isinstance(handles, list):
            raise ValueError("GradientTransformCallback state must hold 'handles', a list of "
                             f"TransformHandle.state_dict() or None, got {state_dict!r}")
        self._pending = handles
        if self._attached:  # restored after on_fit_start (restore_checkpoint_after_setup)
            self._apply(handles)

    def _apply(self, states: list[Mapping[str, Any] | None]) -> None:
        if len(states) != len(self.handles) or any(
                (s is None) != (h is None) for s, h in zip(states, self.handles, strict=True)):
            raise ValueError(
                f"the checkpoint holds transform states for {len(states)} optimizers "
                f"({sum(s is not None for s in states)} transformed), but this fit has "
                f"{len(self.handles)} ({sum(h is not None for h in self.handles)} transformed)")
        for h, s in zip(self.handles, states, strict=True):
            if h is not None:
                h.load_state_dict(s)
        self._pending = None
