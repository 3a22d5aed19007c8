"""Record intermediate outputs and attention maps of any ``nn.Module``, without editing it.

Keras lets one build a second model whose outputs are intermediate layers; in PyTorch the same
thing is a set of forward hooks on the modules picked by name. :func:`capture` attaches them for
the duration of a ``with`` block and returns what they saw:

    Captured.outputs[name]          = [output of module ``name`` at its 1st call, 2nd call, ...]
    Captured.attention[name]        = [A of the 1st attention call made inside ``name``, ...]
    Captured.attention_stats[name]  = [{stat: stat(A) per query row} of the 1st call, ...]

where A (..., Tq, Tk) is the matrix the call applies to the values, out = A V. For
``F.scaled_dot_product_attention`` (and ``nn.MultiheadAttention``)

    A = softmax(Q Kᵀ · scale + M),    scale = 1/√E by default,

with Q (..., Tq, E), K (..., Tk, E) and M its mask (0 where a key takes part, −inf where it
does not, or the float mask itself), so every A has the shape of that call with the query's
heads. kexue's own attention reports its matrix too (:mod:`kexue.attention.base`): local,
atrous and local+strided attention the T × T softmax their pattern implies (zeros outside it),
Nyström attention the matrix softmax(QK̃ᵀ) · pinv(softmax(Q̃K̃ᵀ)) · softmax(Q̃Kᵀ) it applies
(not a softmax: entries can be negative).

Dense maps are kept up to ``max_map_elements`` entries per call; beyond that, or for any size,
per-query statistics such as :func:`attention_entropy` and :func:`attention_top_k` are computed
a block of query rows at a time, never holding the T × T map.

Example::

    with capture(model, ["blocks.*.attn", "head"], attention=True) as cap:
        logits = model(tokens)
    cap["head"]                          # the last output of model.head
    cap.outputs["blocks.0.attn"]         # one entry per call of model.blocks[0].attn
    cap.attention["blocks.0.attn"][0]    # (B, H, T, T) attention probabilities

    stats = {"entropy": attention_entropy, "top": attention_top_k(8)}
    with capture(model, "blocks.*.attn", attention_stats=stats) as cap:
        model(long_tokens)
    cap.attention_stats["blocks.0.attn"][0]["entropy"]   # (B, H, T)
    values, keys = cap.attention_stats["blocks.0.attn"][0]["top"]   # (B, H, T, 8) each

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
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from kexue._checks import check_int
from kexue.attention.base import AttentionRows, inside_reported_attention, observe_attention
from kexue.train._naming import unwrap_model

__all__ = [
    "MAX_MAP_ELEMENTS",
    "STREAM_BLOCK_ELEMENTS",
    "Captured",
    "RowStat",
    "attention_entropy",
    "attention_top_k",
    "capture",
]

# Default bound on one dense attention map: 2**27 entries (512 MiB in float32), e.g. 8 heads of
# T = 4096, or a batch of 8 × 12 heads of T = 1182.
MAX_MAP_ELEMENTS = 1 << 27
# Streamed statistics take query rows in blocks of about this many map entries (16 MiB float32).
STREAM_BLOCK_ELEMENTS = 1 << 22

RowStat = Callable[[Tensor], Any]
"""A per-query statistic of attention rows: (..., L, Tk) -> a tensor (or a tuple/dict of
tensors) whose leading dims are (..., L), so that blocks of rows can be concatenated."""


@dataclass
class Captured:
    """What :func:`capture` recorded, keyed by module name (as in ``model.named_modules()``).

    Attributes:
        outputs: one list per matched module, with one entry per call of that module, in call
            order; each entry has the structure of the module's output (tensor, tuple, dict,
            ...). Modules that matched but never ran have an empty list.
        attention: for ``attention=True``, one list per module that made attention calls, one
            (..., Tq, Tk) matrix per call (probabilities, or Nyström's implied rows).
        attention_stats: for ``attention_stats``, one list per module that made attention
            calls, one ``{name: statistic}`` dict per call, each statistic (..., Tq, ...).
    """

    outputs: dict[str, list[Any]] = field(default_factory=dict)
    attention: dict[str, list[Tensor]] = field(default_factory=dict)
    attention_stats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """The output of module ``name`` at its last (usually only) call."""
        records = self.outputs.get(name)
        if not records:
            ran = [n for n, r in self.outputs.items() if r]
            why = "matched but never ran" if records is not None else "was not captured"
            raise KeyError(f"module {name!r} {why}; modules with outputs: {ran}")
        return records[-1]


def attention_entropy(rows: Tensor) -> Tensor:
    """Shannon entropy of each attention row, in nats.

        H_i = −Σ_j A_ij log A_ij,   0 · log 0 = 0

    0 for a row on one key, log n for a row spread evenly over n keys, 0 for a row of zeros
    (a query that sees no key). NaN for a row with a negative entry, as Nyström's implied rows
    may have: they are not distributions.

    Args:
        rows: (..., L, Tk) attention rows.

    Returns:
        (..., L) entropies.
    """
    return -torch.special.xlogy(rows, rows).sum(-1)


def attention_top_k(k: int) -> RowStat:
    """The statistic "the k heaviest keys of each query": (values, indices), each (..., L, k).

    Values in descending order; ``min(k, Tk)`` of them when a call has fewer than k keys. Keys
    of equal weight (e.g. the zeros outside a sparse pattern) come in an unspecified order.

    Args:
        k: how many keys per query, an int >= 1.

    Raises:
        ValueError: unless ``k`` is an int >= 1.
    """
    k = check_int("k", k, low=1)

    def top_k(rows: Tensor) -> tuple[Tensor, Tensor]:
        values, indices = torch.topk(rows, min(k, rows.shape[-1]), dim=-1)  # (..., L, k) x 2
        return values, indices

    top_k.__name__ = f"attention_top_k({k})"
    return top_k


def capture(
    model: nn.Module,
    patterns: str | Sequence[str],
    *,
    attention: bool = False,
    attention_stats: Mapping[str, RowStat] | None = None,
    max_map_elements: int = MAX_MAP_ELEMENTS,
    detach: bool = True,
) -> contextlib.AbstractContextManager[Captured]:
    """Record the outputs (and optionally attention maps) of the modules matching ``patterns``.

    Inside the ``with`` block a forward hook on every matched module appends a copy of its output
    to ``Captured.outputs[name]``. Copies (``clone``) are taken so that later in-place operations
    such as ``ReLU(inplace=True)`` do not rewrite the record. With ``detach=False`` the copies stay
    in the autograd graph, so a loss on an intermediate backpropagates into the model.

    With ``attention=True`` every attention call made while a matched module runs is recorded
    in ``Captured.attention[name]`` of the innermost matched module on the call stack, as the
    matrix A (..., Tq, Tk) with out = A V, in float32 or wider:

    * ``F.scaled_dot_product_attention``, seen by a :class:`torch.overrides.TorchFunctionMode`
      active only inside the block: A = softmax(Q Kᵀ · scale + M). ``M`` follows SDPA exactly:
      a bool ``attn_mask`` keeps the True entries, a float one is added, ``is_causal`` keeps
      the lower triangle aligned to the top-left corner (query i sees keys 0..i, also when
      Tq != Tk), ``scale`` defaults to 1/√E, ``enable_gqa`` repeats each key head for its
      group of query heads. Then the real SDPA runs unchanged on the same arguments, so the
      outputs of a model that calls SDPA are bit-identical with and without capture. (One
      exception: ``nn.TransformerEncoder``'s fused inference fast path is not taken while a
      torch-function mode is active, so in eval mode its outputs then come from the regular
      path: equal up to float rounding, and no longer zeroed at padded positions.)
    * kexue's :func:`~kexue.attention.local_attention`, :func:`~kexue.attention.atrous_attention`
      and :func:`~kexue.attention.sparse_attention` (and their modules), whose kernels never
      form the map: A = the (B, H, T, T) softmax of the pattern's mask function (zeros outside
      the pattern and at padded keys), recomputed from q and k.
    * kexue's :func:`~kexue.attention.nystrom_attention`: the (B, H, T, T) matrix it applies,
      softmax(s·QK̃ᵀ) · pinv(softmax(s·Q̃K̃ᵀ)) · softmax(s·Q̃Kᵀ) with the pinv it used, not the
      landmark kernels it computes. Not a softmax: rows sum to about 1, entries can be
      negative.

    A dense map of more than ``max_map_elements`` entries is a ValueError raised in the forward
    pass, before it is formed. ``attention_stats`` records per-query statistics of the same
    matrices at any size: the rows are formed a block of queries at a time (about
    ``STREAM_BLOCK_ELEMENTS`` entries) and each statistic is applied to each block, e.g.
    ``{"entropy": attention_entropy, "top8": attention_top_k(8)}`` gives
    ``Captured.attention_stats[name][call]["entropy"]`` (..., Tq) and ``["top8"]`` a pair
    (..., Tq, 8). Both options can be combined.

    When the block ends normally, a matched module that ran but made no attention call (nor
    did anything inside it) is named in one warning: with ``attention`` or ``attention_stats``
    it has nothing recorded.

    Caveats:

    * A is taken before dropout: with ``dropout_p > 0`` the SDPA output is a dropped-out A
      times V, while the recorded A is not dropped out.
    * Rows in which every key is masked are recorded as zeros (SDPA returns zeros or NaN there,
      depending on the version and backend).
    * ``nn.MultiheadAttention`` (and so ``nn.Transformer*``) calls SDPA from inside
      ``F.multi_head_attention_forward``, itself a torch function, where no mode can see it;
      for that function the probabilities are taken from a second, dropout-free call with
      ``need_weights=True, average_attn_weights=False``: (B, H, Tq, Tk), or (H, Tq, Tk) for
      unbatched input (streamed: one such call per block of queries).
    * The SDPA calls inside kexue's attention functions (windows, landmarks) are pieces of one
      reported call and are not recorded on their own.
    * Recording is thread-local: attention calls made on other threads are not recorded.
      While it is active every torch call pays a small Python overhead; without ``attention``
      and ``attention_stats`` there is none, and kexue's attention functions pay one check.

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
        attention: also record the attention matrices, dense.
        attention_stats: per-query statistics of the attention matrices, ``{name: stat}``
            with ``stat(rows (..., L, Tk))`` -> tensors (or a tuple/dict of them) with leading
            dims (..., L); see :data:`RowStat`, :func:`attention_entropy`,
            :func:`attention_top_k`.
        max_map_elements: the largest dense map (entries of one call's A) that
            ``attention=True`` records, an int >= 1; default :data:`MAX_MAP_ELEMENTS` = 2²⁷
            (512 MiB in float32, e.g. B·H = 8 at T = 4096).
        detach: record tensors detached from the autograd graph (default); ``False`` keeps the
            graph, for losses on intermediates (and on attention maps or statistics).

    Returns:
        A context manager whose ``__enter__`` returns the (initially empty) :class:`Captured`.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or a pattern is not a string.
        ValueError: if ``patterns`` is empty or a pattern matches no module name, for a
            non-bool ``attention``, ``attention_stats`` that is not a nonempty mapping of
            names to callables, or ``max_map_elements`` < 1; in the forward pass, for a dense
            map over ``max_map_elements`` or a statistic whose result does not keep the
            leading (..., L) dims.

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
    if not isinstance(attention, bool):
        raise ValueError(f"attention must be a bool, got {attention!r}")
    stats = _check_stats(attention_stats)
    max_map_elements = check_int("max_map_elements", max_map_elements, low=1)
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
    recorder = _Recorder(
        Captured(outputs={n: [] for n, _ in targets.values()}),
        detach=detach,
        maps=attention,
        stats=stats,
        max_map_elements=max_map_elements,
    )
    return _capture(list(targets.values()), recorder)


def _check_stats(stats: Mapping[str, RowStat] | None) -> dict[str, RowStat]:
    if stats is None:
        return {}
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError(
            "attention_stats must be a nonempty mapping {name: stat}, e.g. "
            f"{{'entropy': attention_entropy}}, or None; got {stats!r}"
        )
    for name, stat in stats.items():
        if not isinstance(name, str) or not callable(stat):
            raise ValueError(
                "attention_stats must map names (str) to callables rows -> tensor, got "
                f"{name!r}: {stat!r}"
            )
    return dict(stats)


@contextlib.contextmanager
def _capture(targets: list[tuple[str, nn.Module]], recorder: _Recorder) -> Iterator[Captured]:
    watching = recorder.maps or bool(recorder.stats)
    handles = []
    try:
        for name, module in targets:
            handles.append(module.register_forward_hook(recorder.output_hook(name)))
            if watching:
                handles.append(module.register_forward_pre_hook(recorder.enter_hook(name)))
                # always_call: a forward that raises must still leave the stack.
                handles.append(
                    module.register_forward_hook(recorder.exit_hook(name), always_call=True)
                )
        with contextlib.ExitStack() as watch:
            if watching:
                watch.enter_context(_AttentionMode(recorder))
                watch.enter_context(observe_attention(recorder.record))
            yield recorder.captured
        if watching:
            recorder.warn_silent_modules()
    finally:
        for h in handles:
            h.remove()
        recorder.stack.clear()


class _Recorder:
    """The hooks of one :func:`capture` context and the stack of matched modules running."""

    def __init__(
        self,
        captured: Captured,
        *,
        detach: bool,
        maps: bool,
        stats: dict[str, RowStat],
        max_map_elements: int,
    ) -> None:
        self.captured = captured
        self.detach = detach
        self.maps, self.stats, self.max_map_elements = maps, stats, max_map_elements
        self.stack: list[str] = []
        self.attending: set[str] = set()  # matched modules that made an attention call
        self.warned_not_distribution: set[str] = set()

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

    def record(self, rows: AttentionRows) -> None:
        """Record one attention call's matrix for the innermost matched module running."""
        if not self.stack:
            return
        name = self.stack[-1]
        self.attending.update(self.stack)
        # Invisible to torch-function modes (e.g. an outer capture), and no graph if detached.
        grad = torch.no_grad() if self.detach else contextlib.nullcontext()
        with torch._C.DisableTorchFunction(), grad:
            if self.maps:
                size = math.prod(rows.shape)
                if size > self.max_map_elements:
                    raise ValueError(
                        f"capture(attention=True): the {rows.kind} attention map of module "
                        f"{name!r} has shape {tuple(rows.shape)} = {size} entries, over "
                        f"max_map_elements={self.max_map_elements}; record per-query "
                        "statistics instead with attention_stats={'entropy': "
                        "attention_entropy, 'top': attention_top_k(k)}, streamed a block of "
                        "queries at a time without the T x T map, or raise max_map_elements"
                    )
                self.captured.attention.setdefault(name, []).append(
                    rows.rows(0, rows.shape[-2])
                )
            if self.stats:
                if not rows.distribution and name not in self.warned_not_distribution:
                    self.warned_not_distribution.add(name)
                    warnings.warn(
                        f"capture: module {name!r} made a {rows.kind} attention call, whose "
                        "rows are not probability distributions (entries can be negative); "
                        "statistics that assume distributions, such as attention_entropy "
                        "(NaN on rows with a negative entry), do not apply",
                        stacklevel=2,
                    )
                self.captured.attention_stats.setdefault(name, []).append(
                    _streamed_stats(rows, self.stats)
                )

    def warn_silent_modules(self) -> None:
        silent = [
            n for n, calls in self.captured.outputs.items() if calls and n not in self.attending
        ]
        if silent:
            warnings.warn(
                f"capture: matched modules {silent} ran but made no attention call (nor did "
                "any module inside them), so no attention is recorded for them; kexue records "
                "F.scaled_dot_product_attention, nn.MultiheadAttention and kexue.attention's "
                "functions. Narrow the patterns (e.g. 'blocks.*.attn', not 'blocks.*') to the "
                "attention modules",
                stacklevel=4,  # the line of the user's ``with``
            )


def _streamed_stats(rows: AttentionRows, stats: dict[str, RowStat]) -> dict[str, Any]:
    """Every statistic of every query row, from blocks of about STREAM_BLOCK_ELEMENTS entries."""
    *lead, tq, tk = rows.shape
    step = max(1, STREAM_BLOCK_ELEMENTS // max(1, math.prod(lead) * tk))
    parts: dict[str, list[Any]] = {name: [] for name in stats}
    for start in range(0, max(tq, 1), step):
        block = rows.rows(start, min(start + step, tq))  # (..., L, Tk)
        for name, stat in stats.items():
            parts[name].append(_check_stat(name, stat(block), block))
    return {name: _concat(results, axis=len(lead)) for name, results in parts.items()}


def _check_stat(name: str, result: Any, block: Tensor) -> Any:
    leaves, _ = tree_flatten(result)
    for leaf in leaves:
        if not isinstance(leaf, Tensor) or leaf.shape[: block.ndim - 1] != block.shape[:-1]:
            got = tuple(leaf.shape) if isinstance(leaf, Tensor) else type(leaf).__name__
            raise ValueError(
                f"attention_stats[{name!r}] must return tensors (or a tuple/dict of tensors) "
                f"whose leading dims are the rows' (..., L) = {tuple(block.shape[:-1])}, got "
                f"{got}"
            )
    return result


def _concat(results: list[Any], axis: int) -> Any:
    """Concatenate the per-block results of one statistic along the query axis."""
    flat = [tree_flatten(r) for r in results]
    spec = flat[0][1]
    leaves = [torch.cat(parts, dim=axis) for parts in zip(*(f[0] for f in flat), strict=True)]
    return tree_unflatten(leaves, spec)


class _AttentionMode(TorchFunctionMode):
    """Sees every torch call inside the block; records SDPA and MHA matrices, changes nothing."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # first, so that invalid calls fail as they would anyway
        if not self.recorder.stack or inside_reported_attention():
            return out
        if func is F.scaled_dot_product_attention:
            self.recorder.record(_sdpa_rows(*args, **kwargs))
        elif func is F.multi_head_attention_forward:
            self.recorder.record(_mha_rows(*args, **kwargs))
        return out


def _sdpa_rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> AttentionRows:
    """softmax(Q Kᵀ · scale + M) of one SDPA call (its exact signature), before dropout."""
    if query.is_nested or key.is_nested:
        raise NotImplementedError("capture(attention=True) does not support nested tensors")
    dtype = torch.promote_types(query.dtype, torch.float32)
    tq, tk = query.size(-2), key.size(-2)
    key_lead = list(key.shape[:-2])
    gqa = enable_gqa and query.dim() >= 3 and key.size(-3) != query.size(-3)
    if gqa:
        key_lead[-1] = query.size(-3)
    shapes = [query.shape[:-2], torch.Size(key_lead)]
    if attn_mask is not None and attn_mask.dim() > 2:
        shapes.append(attn_mask.shape[:-2])
    lead = torch.broadcast_shapes(*shapes)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=query.device)

    def rows(start: int, stop: int) -> Tensor:
        q, k = query[..., start:stop, :].to(dtype), key.to(dtype)  # (..., L, E), (..., Tk, E)
        if gqa:
            # Query heads h·g .. h·g + g − 1 share key head h.
            k = k.repeat_interleave(query.size(-3) // key.size(-3), dim=-3)  # (..., Hq, Tk, E)
        logits = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., L, Tk)
        if is_causal:
            i = torch.arange(start, stop, device=logits.device).view(-1, 1)  # (L, 1)
            j = torch.arange(tk, device=logits.device)  # (Tk,)
            logits = torch.where(j <= i, logits, neg_inf)  # query i sees keys 0..i
        if attn_mask is not None:
            mask = attn_mask
            if mask.dim() >= 2 and mask.size(-2) == tq:
                mask = mask[..., start:stop, :]  # (..., L, Tk)
            if mask.dtype == torch.bool:
                logits = torch.where(mask, logits, neg_inf)
            else:
                logits = logits + mask.to(dtype)
        return _softmax_rows(logits)

    return AttentionRows((*lead, tq, tk), rows, "sdpa")


def _softmax_rows(logits: Tensor) -> Tensor:
    """Softmax over the last dim, with zeros in rows whose logits are all −inf."""
    dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (..., Tq, 1)
    return torch.softmax(logits, dim=-1).masked_fill(dead, 0.0)


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha_rows(*args: Any, **kwargs: Any) -> AttentionRows:
    """The per-head attention probabilities of one ``F.multi_head_attention_forward`` call,
    from dropout-free ``need_weights=True`` calls on blocks of the queries."""
    bound = _MHA_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(
        bound.arguments, need_weights=True, average_attn_weights=False, training=False,
        dropout_p=0.0,
    )
    query, key = arguments["query"], arguments["key"]
    static_k = arguments["static_k"]
    tq = query.shape[0]  # query (Tq, N, E) or (Tq, E)
    tk = key.shape[0] if static_k is None else static_k.shape[1]
    tk += (arguments["bias_k"] is not None) + bool(arguments["add_zero_attn"])
    heads = arguments["num_heads"]
    shape = (query.shape[1], heads, tq, tk) if query.dim() == 3 else (heads, tq, tk)

    def rows(start: int, stop: int) -> Tensor:
        call = arguments
        if (start, stop) != (0, tq):
            call = dict(arguments, query=query[start:stop])
            mask = arguments["attn_mask"]  # (Tq, Tk) or (N·H, Tq, Tk)
            if mask is not None:
                call["attn_mask"] = mask[start:stop] if mask.dim() == 2 else mask[:, start:stop]
        _, weights = F.multi_head_attention_forward(**call)  # (N, H, L, Tk)
        weights = weights.to(torch.promote_types(weights.dtype, torch.float32))
        # MHA's own softmax leaves NaN in fully masked rows; SDPA-style zeros instead.
        return weights.masked_fill(weights.isnan().all(dim=-1, keepdim=True), 0.0)

    return AttentionRows(shape, rows, "multi_head_attention")
