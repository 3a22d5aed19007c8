"""kexue's training controls inside the HuggingFace ``transformers.Trainer``.

Two pieces, each usable without the other:

* :func:`trainer_optimizers` builds what ``Trainer(optimizers=...)`` takes:
  :func:`kexue.train.param_groups` → optimizer (AdamW with the ``TrainingArguments``' betas
  and eps by default) → :func:`kexue.train.with_transforms` → scheduler. The Trainer clips the
  gradients (``max_grad_norm``, 1.0 by default) before ``optimizer.step()``, that is before the
  transform chain; when the chain clips too that is clip after clip, so the builder sets
  ``max_grad_norm = 0`` (or warns, without ``args``). The Trainer logs ``learning_rate`` from
  the first parameter group (``lr_scheduler.get_last_lr()[0]``, or ``param_groups[0]["lr"]``
  for ReduceLROnPlateau); the builder puts a group of multiplier 1 first (an empty one when no
  parameter has multiplier 1), so the logged rate is the base rate under any scheduler, not a
  layer-decayed or multiplied one.
* :class:`EMACallback` keeps a :class:`kexue.train.EMA` of the model, updated after every
  optimizer step that moved the weights, swapped in for evaluation and checkpoints, restored
  exactly by ``trainer.train(resume_from_checkpoint=...)``.

Example::

    args = TrainingArguments("out", learning_rate=3e-4, max_steps=1000)
    opts = trainer_optimizers(model, args, layer_decay=0.8,
                              transform=chain(skip_nonfinite(), clip_by_global_norm(1.0)))
    trainer = Trainer(model, args, train_dataset=data, optimizers=opts,
                      callbacks=[EMACallback(0.999)])
    trainer.train()            # afterwards the model holds the EMA weights
    trainer.save_model()       # ... so this saves them

References:
    https://kexue.fm/archives/6418 (让Keras更酷一些!: 分层的学习率和自由的梯度)
    https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

try:
    import transformers
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - exercised with transformers hidden
    raise ImportError(
        "kexue.integrations.hf needs the transformers package: pip install 'kexue[hf]'"
    ) from error

from kexue._checks import check_int, check_real
from kexue._io import atomic_save
from kexue.train._naming import Pattern, unwrap_model
from kexue.train.ema import EMA, Decay
from kexue.train.param_groups import Tied, is_bias_or_norm, param_groups
from kexue.train.transforms import (
    GradientTransform,
    TransformHandle,
    transform_handles,
    with_transforms,
)

__all__ = ["EMACallback", "TrainerOptimizers", "trainer_optimizers", "transform_clips"]

# The file beside each checkpoint's model that makes an EMA run resumable.
EMA_FILE = "kexue_ema.pt"
# The key under which a transform's state rides in the optimizer's state_dict.
_TRANSFORM_KEY = "kexue_transform"


def transform_clips(transform: GradientTransform) -> bool:
    """Whether ``transform`` clips: :attr:`kexue.train.GradientTransform.clips`, set by
    :func:`kexue.train.clip_by_norm`, :func:`~kexue.train.clip_by_global_norm`,
    :func:`~kexue.train.clip_by_value` and :func:`~kexue.train.adaptive_clip` and carried
    through :func:`~kexue.train.chain` and :func:`~kexue.train.select`. A clipping written by
    hand (``map_grads``) does not say so: tell :func:`trainer_optimizers` with ``clips=True``.
    """
    if not isinstance(transform, GradientTransform):
        raise ValueError(f"transform must be a GradientTransform, got {transform!r}")
    return transform.clips


# -- the optimizer builder -------------------------------------------------------------------


class TrainerOptimizers(tuple):
    """``(optimizer, scheduler)``, what ``Trainer(optimizers=...)`` takes, with ``handle``.

    ``handle`` is the :class:`kexue.train.TransformHandle` of the transform (None without
    one): ``handle.steps_skipped``, ``handle.last_stepped``, ``handle.state``.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    handle: TransformHandle | None

    def __new__(
        cls,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        handle: TransformHandle | None,
    ) -> TrainerOptimizers:
        self = super().__new__(cls, (optimizer, scheduler))
        self.optimizer, self.scheduler, self.handle = optimizer, scheduler, handle
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self.optimizer, self.scheduler, self.handle)


def _base_group_first(groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """The groups with one of multiplier 1 first: the Trainer logs group 0's rate."""
    ones = [g for g in groups if g["lr_scale"] == 1.0]
    if ones:
        return [ones[0]] + [g for g in groups if g is not ones[0]]
    # No parameter trains at the base rate: an empty group carries it, scheduled like the rest.
    empty = {"params": [], "names": [], "lr": lr, "lr_scale": 1.0, "weight_decay": 0.0}
    return [empty, *groups]


def _carry_transform_state(optimizer: torch.optim.Optimizer, handle: TransformHandle) -> None:
    """Let the transform's state ride in ``optimizer.state_dict()`` (the Trainer's
    ``optimizer.pt``), so that ``resume_from_checkpoint`` restores it with the optimizer."""
    pending: list[Any] = []

    def save(opt: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state[_TRANSFORM_KEY] = handle.state_dict()
        return state

    def before_load(opt: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        if _TRANSFORM_KEY in state:
            pending.append(state.pop(_TRANSFORM_KEY))
        return state

    def after_load(opt: torch.optim.Optimizer) -> None:
        if not pending:
            return
        saved = pending.pop()
        # The Trainer may load onto another device than the one the state was saved from.
        devices = [p.device for g in opt.param_groups for p in g["params"]]
        if devices:
            saved = _to_device(saved, devices[0])
        handle.load_state_dict(saved)

    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_pre_hook(before_load)
    optimizer.register_load_state_dict_post_hook(after_load)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def trainer_optimizers(
    model: nn.Module,
    args: transformers.TrainingArguments | None = None,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    multipliers: Mapping[Pattern, float] | None = None,
    layer_decay: float | None = None,
    depth: Callable[[str], int | None] | None = None,
    no_decay: Callable[[str, Tensor], bool] | Iterable[Pattern] | None = is_bias_or_norm,
    tied: Tied | None = None,
    transform: GradientTransform | None = None,
    clips: bool | None = None,
    optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> TrainerOptimizers:
    """Parameter groups → optimizer → gradient transforms → scheduler, for the HF Trainer.

        lr_i = lr · Π multipliers · layer_decay^(L − depth_i)     (see kexue.train.param_groups)
        g ← transform(g) before every optimizer step             (see kexue.train.with_transforms)

    The Trainer clips ``g`` to ``args.max_grad_norm`` (1.0 by default) before
    ``optimizer.step()``, so before the transform; when the transform clips as well (kexue's
    clipping transforms are recognised by :func:`transform_clips`, or say ``clips=True``), the
    builder sets ``args.max_grad_norm = 0`` so that the transform sees the raw gradient and
    clips once.
    Without ``args`` it cannot, and warns. The first optimizer group has multiplier 1 (an
    empty group when no parameter has it), so the Trainer's logged ``learning_rate`` is the
    scheduled base rate. The transform's state (accumulated gradients, counters) rides in
    ``optimizer.state_dict()``, hence in the Trainer's checkpoints. A step the transform skips
    (:func:`kexue.train.skip_nonfinite`) leaves the weights and the optimizer state alone, but
    the Trainer still counts it in ``global_step`` and advances its scheduler (it only knows
    of ``GradScaler``'s skips); :class:`EMACallback` does not fold it in.

    Args:
        model: the model the Trainer trains.
        args: the Trainer's ``TrainingArguments``: the defaults of ``lr``
            (``learning_rate``), ``weight_decay``, the AdamW betas and eps come from it, and
            its ``max_grad_norm`` is set to 0 when the transform clips.
        lr: base learning rate; default ``args.learning_rate``.
        weight_decay: default ``args.weight_decay`` (0 without ``args``).
        multipliers, layer_decay, depth, no_decay, tied: as in
            :func:`kexue.train.param_groups`.
        transform: a :class:`kexue.train.GradientTransform` run before every step, or None.
        clips: whether ``transform`` clips; None detects kexue's own clipping transforms.
        optimizer: groups -> optimizer; default ``torch.optim.AdamW`` with ``args``' betas
            and eps.
        scheduler: optimizer -> scheduler; None lets the Trainer build its own from ``args``
            (``lr_scheduler_type``, warmup) when training starts.

    Returns:
        :class:`TrainerOptimizers`: ``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``,
        with the transform's ``handle``.

    Raises:
        ValueError: for ``args`` that are not ``TrainingArguments``, no ``lr`` and no
            ``args``, a ``transform`` that is not a GradientTransform, a ``clips`` that is not
            a bool, or an ``optimizer``/``scheduler`` that is not callable or returns the
            wrong type; and what :func:`kexue.train.param_groups` raises.

    Warns:
        UserWarning: when the transform clips and no ``args`` were given.
    """
    if args is not None and not isinstance(args, transformers.TrainingArguments):
        raise ValueError(f"args must be transformers.TrainingArguments, got {type(args).__name__}")
    if lr is None:
        if args is None:
            raise ValueError("lr is None and no args were given: pass lr= or args=")
        lr = args.learning_rate
    if weight_decay is None:
        weight_decay = args.weight_decay if args is not None else 0.0
    if transform is not None and not isinstance(transform, GradientTransform):
        raise ValueError(f"transform must be a GradientTransform or None, got {transform!r}")
    if clips is not None and not isinstance(clips, bool):
        raise ValueError(f"clips must be True, False or None, got {clips!r}")
    for name, fn in (("optimizer", optimizer), ("scheduler", scheduler)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable or None, got {fn!r}")

    groups = param_groups(model, lr, weight_decay=weight_decay, multipliers=multipliers,
                          layer_decay=layer_decay, depth=depth, no_decay=no_decay, tied=tied)
    groups = _base_group_first(groups, float(lr))
    if optimizer is None:
        betas = (args.adam_beta1, args.adam_beta2) if args is not None else (0.9, 0.999)
        eps = args.adam_epsilon if args is not None else 1e-8
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    else:
        opt = optimizer(groups)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ValueError(f"optimizer(groups) must return a torch.optim.Optimizer, got {opt!r}")

    handle = None
    if transform is not None:
        handle = with_transforms(opt, transform)
        _carry_transform_state(opt, handle)
        clipping = transform_clips(transform) if clips is None else clips
        if clipping and args is None:
            warnings.warn(
                "the transform clips gradients and the Trainer clips them first "
                "(TrainingArguments.max_grad_norm, 1.0 by default): clip after clip. Pass "
                "args= here, or TrainingArguments(max_grad_norm=0)",
                UserWarning,
                stacklevel=2,
            )
        elif clipping and args.max_grad_norm > 0:
            args.max_grad_norm = 0.0

    sched = None
    if scheduler is not None:
        sched = scheduler(opt)
        if not hasattr(sched, "step") or not hasattr(sched, "state_dict"):
            raise ValueError(f"scheduler(optimizer) must return an LR scheduler, got {sched!r}")
    return TrainerOptimizers(opt, sched, handle)


# -- EMA -------------------------------------------------------------------------------------


def _torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (and similar)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class EMACallback(TrainerCallback):
    """Weight EMA for ``transformers.Trainer``: ema_t = d_t·ema_{t−1} + (1 − d_t)·θ_t.

    * **Update**: after every optimizer step (``on_optimizer_step``, once per real step, so
      once per ``gradient_accumulation_steps`` micro-batches), except a step that a
      gradient transform skipped (the handle of :func:`trainer_optimizers`, or ``handle=``).
    * **Evaluation**: on a step where the Trainer evaluates or saves, the EMA weights are
      swapped into the model (:meth:`kexue.train.EMA.swapped`, no copies) and the training
      weights put back bit for bit afterwards.
    * **Checkpoints**: the checkpoint's model is the EMA model, the one that was evaluated:
      what ``from_pretrained(checkpoint)``, ``load_best_model_at_end`` and a Hub push get.
      Beside it, ``kexue_ema.pt`` holds the training weights and the EMA state (shadow in its
      own dtype, counters); on ``trainer.train(resume_from_checkpoint=...)`` the callback puts
      the training weights back and restores the EMA exactly. Resuming such a checkpoint
      without this callback would train from the EMA weights.
    * **After training** the model holds the EMA weights (unless ``load_best_model_at_end``
      already loaded the best checkpoint's), so ``trainer.evaluate()`` and
      ``trainer.save_model()`` use them; :meth:`restore` brings back the training weights.

    Args:
        decay: d, a float in (0, 1) or a function update index -> decay
            (:func:`kexue.train.ema_warmup`).
        update_every, buffers, dtype, device: as in :class:`kexue.train.EMA`.
        handle: the :class:`kexue.train.TransformHandle` whose skipped steps the EMA skips;
            by default every :func:`kexue.train.with_transforms` handle on the Trainer's
            optimizer (:func:`kexue.train.transform_handles`).
        resume_from: the checkpoint directory a resumed run starts from, when it is not
            ``<output_dir>/checkpoint-<step>`` (where ``resume_from_checkpoint=True`` looks).

    Raises:
        ValueError: for a bad decay, update_every or buffers mode; at the start of a resumed
            run, when the checkpoint has no ``kexue_ema.pt`` or one from another step.
    """

    def __init__(
        self,
        decay: Decay = 0.999,
        *,
        update_every: int = 1,
        buffers: Literal["average", "copy", "ignore"] = "average",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        handle: TransformHandle | None = None,
        resume_from: str | os.PathLike[str] | None = None,
    ) -> None:
        if not callable(decay):
            check_real("decay", decay, low=0, high=1, low_open=True, high_open=True)
        check_int("update_every", update_every, low=1)
        if buffers not in ("average", "copy", "ignore"):
            raise ValueError(f"buffers must be 'average', 'copy' or 'ignore', got {buffers!r}")
        if handle is not None and not isinstance(handle, TransformHandle):
            raise ValueError(f"handle must be a TransformHandle or None, got {handle!r}")
        self._options = {"decay": decay, "update_every": update_every, "buffers": buffers,
                         "dtype": dtype, "device": device}
        self._given_handle = handle
        self.handles: list[TransformHandle] = [] if handle is None else [handle]
        self.resume_from = None if resume_from is None else os.fspath(resume_from)
        self.ema: EMA | None = None
        self._swap: weakref.finalize | None = None  # closes the held EMA.swapped()
        self._training: dict[str, Tensor] = {}  # the training tensors while swapped
        self._hold = "none"  # while swapped: until "evaluate", "save" or "restore"

    # -- swapping --------------------------------------------------------------------------

    def _tensors(self) -> dict[str, Tensor]:
        """The model's tensors the EMA follows, by name."""
        assert self.ema is not None
        model = self.ema.model
        return {**dict(model.named_buffers()), **dict(model.named_parameters())}

    def _swap_in(self, hold: str) -> None:
        self.restore()
        assert self.ema is not None
        tensors = self._tensors()
        # Detached now, these keep pointing at the training storage after the swap.
        self._training = {n: tensors[n].detach() for n in self._ema_names()}
        swap = contextlib.ExitStack()
        swap.enter_context(self.ema.swapped())
        # The swap may be held past training (the model keeps the EMA weights): close it at
        # exit while torch is still there, not from a generator collected during shutdown.
        self._swap = weakref.finalize(self, swap.close)
        self._hold = hold

    def restore(self) -> None:
        """Put the training weights back into the model (a no-op when they are there)."""
        if self._swap is not None:
            self._swap()  # runs the close once
        self._swap, self._training, self._hold = None, {}, "none"

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """The EMA weights in the model for the block (``trainer.evaluate()`` before the
        end of training, say); what was in the model before comes back after it."""
        if self.ema is None:
            raise ValueError("the EMA exists once training has started (on_train_begin)")
        with self.ema.swapped() as model:
            yield model

    # -- Trainer events --------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()
        model = unwrap_model(kwargs["model"])
        self.ema = EMA(model, **self._options)
        if self.ema._sharded:
            raise ValueError(
                "kexue.integrations.hf.EMACallback does not support FSDP2 (fully_shard) models: "
                "its checkpoint file holds one process's tensors; use kexue.train.EMA with "
                "state_dict() and torch.distributed.checkpoint in your own loop"
            )
        optimizer = _torch_optimizer(kwargs.get("optimizer"))
        if self._given_handle is not None:
            self.handles = [self._given_handle]
        elif isinstance(optimizer, torch.optim.Optimizer):
            self.handles = transform_handles(optimizer)
        else:
            self.handles = []
        if state.global_step > 0:
            self._resume(args, state)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer calls this after every optimizer.step(), also one that GradScaler
        # skipped (fp16 overflow: accelerate's wrapper says so, and no kexue hook ran).
        skipped = bool(getattr(kwargs.get("optimizer"), "step_was_skipped", False))
        if self.ema is not None and not skipped and all(h.last_stepped for h in self.handles):
            self.ema.update()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._before_evaluate_or_save(args, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._before_evaluate_or_save(args, control)

    def _before_evaluate_or_save(self, args: Any, control: Any) -> None:
        # The Trainer's DefaultFlowCallback, which runs before user callbacks, has just
        # decided whether this step evaluates and saves.
        self.restore()
        if self.ema is None or not (control.should_evaluate or control.should_save):
            return
        # With save_strategy="best" the save is decided after the evaluation.
        best = str(getattr(args.save_strategy, "value", args.save_strategy)) == "best"
        self._swap_in("save" if control.should_save or best else "evaluate")

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hold == "evaluate":
            self.restore()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.ema is None:
            return
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if not os.path.isdir(folder):
                raise ValueError(
                    f"EMACallback: the checkpoint {folder!r} the Trainer just saved is not "
                    "there (a hyperparameter search writes elsewhere); the EMA cannot be saved"
                )
            tensors = self._tensors()
            training = self._training or {n: tensors[n].detach() for n in self._ema_names()}
            payload = {"global_step": state.global_step, "ema": self.ema.state_dict(),
                       "training": training}
            # temp file, fsync, os.replace: a reader sees the old file or the new one
            atomic_save(os.path.join(folder, EMA_FILE), lambda f: torch.save(payload, f))
        if self._hold == "save":
            self.restore()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()
        if self.ema is None:
            return
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            return  # the model holds the best checkpoint's EMA weights already
        self._swap_in("restore")

    # -- resuming --------------------------------------------------------------------------

    def _ema_names(self) -> list[str]:
        assert self.ema is not None
        return [*self.ema._names, *self.ema._copy_names]

    def _resume(self, args: Any, state: Any) -> None:
        folder = self.resume_from or os.path.join(args.output_dir,
                                                  f"checkpoint-{state.global_step}")
        path = os.path.join(folder, EMA_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"EMACallback: training resumes at step {state.global_step} but {path!r} does "
                "not exist; the checkpoint's model holds EMA weights, so the training weights "
                "must come from there. Pass EMACallback(resume_from=<the checkpoint directory>) "
                "when resuming from elsewhere than <output_dir>/checkpoint-<step>"
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("global_step") != state.global_step:
            raise ValueError(
                f"EMACallback: {path!r} was saved at step {saved.get('global_step')}, but "
                f"training resumes at step {state.global_step}"
            )
        assert self.ema is not None
        tensors = self._tensors()
        missing = [n for n in saved["training"] if n not in tensors]
        if missing:
            raise ValueError(f"EMACallback: {path!r} holds tensors {missing[:5]} the model lacks")
        with torch.no_grad():
            for name, value in saved["training"].items():
                tensors[name].copy_(value)
        self.ema.load_state_dict(saved["ema"])
