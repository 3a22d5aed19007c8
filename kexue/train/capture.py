"""Record intermediate outputs and attention maps of any ``nn.Module``, without editing it.

Keras lets one build a second model whose outputs are intermediate layers; in PyTorch the same
thing is a set of forward hooks on the modules picked by name. :func:`capture` attaches them for
the duration of a ``with`` block and returns what they saw:

    Captured.outputs[name]    = [output of module ``name`` at its 1st call, 2nd call, ...]
    Captured.attention[name]  = [P of the 1st SDPA call made inside ``name``, 2nd call, ...]

    P = softmax(Q Kᵀ · scale + M),    scale = 1/√E by default,

where Q (..., Tq, E) and K (..., Tk, E) are the query and key handed to
``torch.nn.functional.scaled_dot_product_attention`` and M is its mask (0 where a key takes
part, −inf where it does not, or the float mask itself), so every P has shape (..., Tq, Tk),
the shape of that SDPA call with the query's heads.

Example::

    with capture(model, ["blocks.*.attn", "head"], attention=True) as cap:
        logits = model(tokens)
    cap["head"]                          # the last output of model.head
    cap.outputs["blocks.0.attn"]         # one entry per call of model.blocks[0].attn
    cap.attention["blocks.0.attn"][0]    # (B, H, T, T) attention probabilities

References:
    https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    Vaswani et al., "Attention Is All You Need", 2017 (scaled dot-product attention).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from kexue.train._naming import unwrap_model

__all__ = ["Captured", "capture"]


@dataclass
class Captured:
    """What :func:`capture` recorded, keyed by module name (as in ``model.named_modules()``).

    Attributes:
        outputs: one list per matched module, with one entry per call of that module, in call
            order; each entry has the structure of the module's output (tensor, tuple, dict,
            ...). Modules that matched but never ran have an empty list.
        attention: for ``attention=True``, one list per module that made scaled-dot-product
            attention calls, one (..., Tq, Tk) probability tensor per call.
    """

    outputs: dict[str, list[Any]] = field(default_factory=dict)
    attention: dict[str, list[Tensor]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """The output of module ``name`` at its last (usually only) call."""
        records = self.outputs.get(name)
        if not records:
            ran = [n for n, r in self.outputs.items() if r]
            why = "matched but never ran" if records is not None else "was not captured"
            raise KeyError(f"module {name!r} {why}; modules with outputs: {ran}")
        return records[-1]


def capture(
    model: nn.Module,
    patterns: str | Sequence[str],
    *,
    attention: bool = False,
    detach: bool = True,
) -> contextlib.AbstractContextManager[Captured]:
    """Record the outputs (and optionally attention maps) of the modules matching ``patterns``.

    Inside the ``with`` block a forward hook on every matched module appends a copy of its output
    to ``Captured.outputs[name]``. Copies (``clone``) are taken so that later in-place operations
    such as ``ReLU(inplace=True)`` do not rewrite the record. With ``detach=False`` the copies stay
    in the autograd graph, so a loss on an intermediate backpropagates into the model.

    With ``attention=True`` every call of ``F.scaled_dot_product_attention`` made while a matched
    module runs is seen by a :class:`torch.overrides.TorchFunctionMode` active only inside the
    block, and the probabilities

        P = softmax(Q Kᵀ · scale + M)  (computed in float32 or wider, shape (..., Tq, Tk))

    are appended to ``Captured.attention[name]`` of the innermost matched module on the call
    stack. ``M`` follows SDPA exactly: a bool ``attn_mask`` keeps the True entries, a float one
    is added, ``is_causal`` keeps the lower triangle aligned to the top-left corner
    (query i sees keys 0..i, also when Tq != Tk), ``scale`` defaults to 1/√E, ``enable_gqa``
    repeats each key head for its group of query heads. Then the real SDPA runs unchanged on
    the same arguments, so the outputs of a model that calls SDPA are bit-identical with and
    without capture. (One exception: ``nn.TransformerEncoder``'s fused inference fast path is
    not taken while a torch-function mode is active, so in eval mode its outputs then come from
    the regular path: equal up to float rounding, and no longer zeroed at padded positions.)
    Caveats:

    * P is taken before dropout: with ``dropout_p > 0`` the SDPA output is a dropped-out P times
      V, while the recorded P is not dropped out.
    * Rows in which every key is masked are recorded as zeros (SDPA returns zeros or NaN there,
      depending on the version and backend).
    * ``nn.MultiheadAttention`` (and so ``nn.Transformer*``) calls SDPA from inside
      ``F.multi_head_attention_forward``, itself a torch function, where no mode can see it;
      for that function the probabilities are taken from a second, dropout-free call with
      ``need_weights=True, average_attn_weights=False``: (B, H, Tq, Tk), or (H, Tq, Tk) for
      unbatched input.
    * The mode is thread-local: SDPA calls made on other threads are not recorded. While it is
      active every torch call pays a small Python overhead; without ``attention`` there is none.

    DistributedDataParallel / DataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers are unwrapped, so names never carry a ``module.`` or
    ``_orig_mod.`` prefix. A module reachable under several names records under the first
    matching one. Contexts can be nested or used on several models; each has its own hooks and
    mode, and all of them are removed on exit, also when the block raises.

    Args:
        model: any module, possibly wrapped as above.
        patterns: one or more module-name globs (``fnmatch.fnmatchcase``), e.g.
            ``"blocks.*.attn"``; ``""`` is the root module itself. As in fnmatch, ``*`` also
            matches dots: ``"blocks.*"`` matches ``"blocks.0"`` and ``"blocks.0.attn"``.
        attention: also record scaled-dot-product attention probabilities.
        detach: record tensors detached from the autograd graph (default); ``False`` keeps the
            graph, for losses on intermediates.

    Returns:
        A context manager whose ``__enter__`` returns the (initially empty) :class:`Captured`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a pattern is not a string.
        ValueError: if ``patterns`` is empty or a pattern matches no module name.

    References:
        https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise ValueError("patterns must name at least one module glob, got an empty sequence")
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"patterns must be strings, got {p!r} of type {type(p).__name__}")
    model = unwrap_model(model)

    named = list(model.named_modules(remove_duplicate=False))
    names = [n for n, _ in named]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            close = difflib.get_close_matches(p, names, n=5, cutoff=0.4) or names[:5]
            raise ValueError(
                f"pattern {p!r} matches no module of {type(model).__name__}; "
                f"module names look like {close}"
            )
    targets: dict[int, tuple[str, nn.Module]] = {}
    for n, m in named:
        if any(fnmatch.fnmatchcase(n, p) for p in patterns):
            targets.setdefault(id(m), (n, m))
    return _capture(list(targets.values()), attention=attention, detach=detach)


@contextlib.contextmanager
def _capture(
    targets: list[tuple[str, nn.Module]], *, attention: bool, detach: bool
) -> Iterator[Captured]:
    recorder = _Recorder(Captured(outputs={n: [] for n, _ in targets}), detach)
    handles = []
    try:
        for name, module in targets:
            handles.append(module.register_forward_hook(recorder.output_hook(name)))
            if attention:
                handles.append(module.register_forward_pre_hook(recorder.enter_hook(name)))
                # always_call: a forward that raises must still leave the stack.
                handles.append(
                    module.register_forward_hook(recorder.exit_hook(name), always_call=True)
                )
        with _AttentionMode(recorder) if attention else contextlib.nullcontext():
            yield recorder.captured
    finally:
        for h in handles:
            h.remove()
        recorder.stack.clear()


class _Recorder:
    """The hooks of one :func:`capture` context and the stack of matched modules running."""

    def __init__(self, captured: Captured, detach: bool) -> None:
        self.captured = captured
        self.detach = detach
        self.stack: list[str] = []

    def keep(self, x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        return x.detach().clone() if self.detach else x.clone()

    def output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self.captured.outputs[name].append(tree_map(self.keep, output))

        return hook

    def enter_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.stack.append(name)

        return hook

    def exit_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # The last occurrence: a module may (indirectly) call itself.
            for i in range(len(self.stack) - 1, -1, -1):
                if self.stack[i] == name:
                    del self.stack[i]
                    break

        return hook


class _AttentionMode(TorchFunctionMode):
    """Sees every torch call inside the block; records SDPA probabilities, changes nothing."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # first, so that invalid calls fail as they would anyway
        if not self.recorder.stack:
            return out
        if func is F.scaled_dot_product_attention:
            recompute = _sdpa_probs
        elif func is F.multi_head_attention_forward:
            recompute = _mha_probs
        else:
            return out
        # Invisible to other torch-function modes (e.g. an outer capture), and no graph if detached.
        grad = contextlib.nullcontext() if not self.recorder.detach else torch.no_grad()
        with torch._C.DisableTorchFunction(), grad:
            probs = recompute(*args, **kwargs)
        self.recorder.captured.attention.setdefault(self.recorder.stack[-1], []).append(probs)
        return out


def _sdpa_probs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """softmax(Q Kᵀ · scale + M) for one SDPA call (its exact signature), before dropout."""
    if query.is_nested or key.is_nested:
        raise NotImplementedError("capture(attention=True) does not support nested tensors")
    dtype = torch.promote_types(query.dtype, torch.float32)
    q, k = query.to(dtype), key.to(dtype)  # (..., Tq, E), (..., Tk, E)
    if enable_gqa and q.dim() >= 3 and k.size(-3) != q.size(-3):
        # Query heads h·g .. h·g + g − 1 share key head h.
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)  # (..., Hq, Tk, E)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    logits = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    tq, tk = logits.shape[-2:]
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=logits.device)
    if is_causal:
        keep = torch.ones(tq, tk, dtype=torch.bool, device=logits.device).tril()  # (Tq, Tk)
        logits = torch.where(keep, logits, neg_inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = torch.where(attn_mask, logits, neg_inf)
        else:
            logits = logits + attn_mask.to(dtype)
    return _softmax_rows(logits)


def _softmax_rows(logits: Tensor) -> Tensor:
    """Softmax over the last dim, with zeros in rows whose logits are all −inf."""
    dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (..., Tq, 1)
    return torch.softmax(logits, dim=-1).masked_fill(dead, 0.0)


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha_probs(*args: Any, **kwargs: Any) -> Tensor:
    """The per-head attention probabilities of one ``F.multi_head_attention_forward`` call."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.arguments.update(
        need_weights=True, average_attn_weights=False, training=False, dropout_p=0.0
    )
    _, weights = F.multi_head_attention_forward(*bound.args, **bound.kwargs)  # (B, H, Tq, Tk)
    weights = weights.to(torch.promote_types(weights.dtype, torch.float32))
    # MHA's own softmax leaves NaN in fully masked rows; SDPA-style zeros instead.
    return weights.masked_fill(weights.isnan().all(dim=-1, keepdim=True), 0.0)
