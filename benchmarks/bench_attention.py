"""kexue.attention beside dense SDPA and its PyPI peers: time, peak memory, FLOP rate vs T.

    python benchmarks/bench_attention.py [--quick] [--threads N]   # T = 1k, 4k, 16k; quick: 1k, 4k
    python benchmarks/bench_attention.py --case local:16384:forward+backward   # one memory case
    python benchmarks/bench_attention.py --group flex   # one group -> results/attention_flex.*

Writes results/attention.json, results/attention.md and results/attention_scaling.png.
CPU, float32, B = 1, H = 8, Dh = 64 (D = H·Dh = 512), window 256, 64 landmarks, 1 thread.

What is compared, at T = 1024, 4096, 16384, forward (under ``torch.no_grad``) and
forward+backward (backward of a fixed random output gradient into the inputs and parameters):

a. Attention functions on q, k, v of shape (B, H, T, Dh), against dense
   ``F.scaled_dot_product_attention`` (non-causal): kexue ``local_attention(window=256)``,
   ``atrous_attention(rate=64)``, ``sparse_attention(window=256, stride=64)`` (local + strided)
   and ``nystrom_attention(landmarks=64, pinv_iters=6)``. Rate and stride are 64 = 16k / 256, so
   that at T = 16k an atrous query sees 256 keys, as many as a local one, and a local+strided
   query 257 local + 256 strided ones. The patterns stay fixed as T grows, so atrous and
   local+strided cost O(T²/64) (time exponent → 2 by design); local and Nyström cost O(T).
b. Nyström core against core, (B, T, 3D) -> (B, T, D): the peer ``nystrom_attention.
   NystromAttention(dim=512, dim_head=64, heads=8, num_landmarks=64, pinv_iterations=6,
   residual=False)`` with its two projections replaced by ``nn.Identity`` (its attention is
   inline in ``forward``, so this is the only way to run it alone: split heads, landmarks,
   three softmax kernels, pseudo-inverse, products, merge heads) against kexue's split heads ->
   ``nystrom_attention`` -> merge heads.
c. Nyström module against module, (B, T, D): the same peer, projections kept, against kexue
   ``NystromAttention(512, 8, landmarks=64, pinv_iters=6)`` (the peer's q/k/v projection has no
   bias, kexue's has one). The two 512 -> 1536 and 512 -> 512 projections (8·T·D² FLOPs) are
   shared work that dominates at these sizes, so module ratios are diluted core ratios.
d. MLP-Mixer token mixing, (B, T, D): kexue ``MLPMixerToken(512, T)`` (hidden D_S = D / 2 = 256,
   the paper's width) against the token-mixing layer the peer's ``MLPMixer`` builds,
   ``mlp_mixer_pytorch.mlp_mixer_pytorch.FeedForward(T, 256, 0.0, Conv1d(kernel_size=1))`` (its
   default width would be 4·D; set to 256 to match). The same map, a two-layer MLP across the
   fixed T tokens shared by all channels, so compared with each other; it is not attention, so
   not with SDPA.
e. FlexAttention, forward only (no CPU backward in torch 2.13): kexue ``flex_sparse_attention``
   (the compiled kernel; the compilation is the warm-up call) on the three patterns of (a) as
   mask functions, beside the hand-written paths of (a) and dense SDPA, all against dense SDPA.

Time: ``_timing.measure_interleaved`` over every candidate of a group at every T together
(plus a matmul, the FLOP-rate reference), so all of a group's figures come from the same
rounds: speedups, exponents and FLOP fractions are medians over rounds of per-round ratios, and
load from other processes falls on all of them alike. Dense SDPA at 16k takes ~10 s (forward)
and ~35-50 s (training) per call, so the attention group runs few rounds.

Memory: every case runs in a fresh ``python bench_attention.py --case KEY:T:MODE`` process:
one call at T = 1024 first (it loads code pages and lazy state that would otherwise count),
then the inputs (and module) at T; glibc's free pages are returned (``malloc_trim``); the
process reads its resident set (``VmRSS``, /proc/self/status) and resets the kernel's peak mark
(``echo 5 > /proc/self/clear_refs``); after one call, peak = ``VmHWM`` - that baseline: what
the call adds to the resident set at its peak (outputs, intermediates, gradients), inputs
excluded. Not ``ru_maxrss``: it cannot be reset, and after fork + exec it starts from the
parent's peak. torch 2.13 keeps no CPU allocator statistics.

FLOP rate: useful FLOPs per second as a fraction of ``torch.mm`` on two 2048² float32 matrices
(2·2048³ FLOPs) timed in the same rounds. Useful forward FLOPs of a pattern: 4·B·H·Dh·P, P the
visible (query, key) pairs, counted exactly (T² dense). Nyström: its two T × m attentions
(8·B·H·T·m·Dh), the m × m kernel and the product with its pseudo-inverse (4·B·H·m²·Dh), and the
pseudo-inverse (8·m³ per iteration and head). Modules add their projections (8·B·T·D²); the
token MLP is 4·B·T·D_S·D. Forward+backward counts 3× forward (the backward's recomputation of
scores is not useful work).

Exponent: log(t(16k) / t(4k)) / log 4, per round, median; 1 for O(T), 2 for O(T²).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gc
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    RESULTS,
    measure_interleaved,
    parser,
    peer_version,
    setup,
    write_results,
)

import kexue.attention as ka  # noqa: E402
from kexue.attention._fused import fused_available  # noqa: E402
from kexue.experiments._common import rss_growth  # noqa: E402

Row = dict[str, Any]

B, H, DH = 1, 8, 64
DIM = H * DH  # 512
WINDOW, RATE, STRIDE, LANDMARKS, PINV_ITERS = 256, 64, 64, 64, 6
TOKEN_HIDDEN = DIM // 2  # MLP-Mixer's D_S = C / 2
LENGTHS, QUICK_LENGTHS = (1024, 4096, 16384), (1024, 4096)
MODES = ("forward", "forward+backward")
MATMUL_N = 2048
WARM_T = 1024  # a memory subprocess calls its case once at this T before measuring
MEMORY_WORKERS = 2  # memory subprocesses at once (no time is measured there)
MB = 1e6


# -- peers -------------------------------------------------------------------------------------


@functools.cache
def load_nystrom_peer() -> tuple[type | None, str]:
    """``nystrom_attention.NystromAttention`` and a note (version, or why it is missing)."""
    try:
        from nystrom_attention import NystromAttention
    except ImportError as e:
        return None, f"nystrom-attention unavailable ({e}); pip install --no-deps nystrom-attention"
    return NystromAttention, f"nystrom-attention {peer_version('nystrom-attention')}"


@functools.cache
def load_mixer_peer() -> tuple[Callable[..., nn.Module] | None, str]:
    """The token-mixing layer builder of ``mlp_mixer_pytorch`` (``FeedForward``) and a note."""
    try:
        from mlp_mixer_pytorch.mlp_mixer_pytorch import FeedForward
    except ImportError as e:
        return None, f"mlp-mixer-pytorch unavailable ({e}); pip install --no-deps mlp-mixer-pytorch"
    return FeedForward, f"mlp-mixer-pytorch {peer_version('mlp-mixer-pytorch')}"


def peer_nystrom_module(t: int) -> nn.Module:
    cls, note = load_nystrom_peer()
    if cls is None:
        raise RuntimeError(note)
    return cls(dim=DIM, dim_head=DH, heads=H, num_landmarks=LANDMARKS,
               pinv_iterations=PINV_ITERS, residual=False)


def peer_nystrom_core(t: int) -> nn.Module:
    """The peer module with identity projections: (B, T, 3D) [q | k | v] -> (B, T, D)."""
    module = peer_nystrom_module(t)
    module.to_qkv, module.to_out = nn.Identity(), nn.Identity()
    return module


def kexue_nystrom_core(x: Tensor) -> Tensor:
    """(B, T, 3D) [q | k | v] -> (B, T, D): split heads, :func:`nystrom_attention`, merge."""
    b, t, _ = x.shape
    q, k, v = x.view(b, t, 3, H, DH).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
    y = ka.nystrom_attention(q, k, v, LANDMARKS, pinv_iters=PINV_ITERS)  # (B, H, T, Dh)
    return y.transpose(1, 2).reshape(b, t, DIM)  # (B, T, D)


def peer_token_mixer(t: int) -> nn.Module:
    feed_forward, note = load_mixer_peer()
    if feed_forward is None:
        raise RuntimeError(note)
    # As MLPMixer builds its token mixing: 1×1 convolutions with the T tokens as channels.
    return feed_forward(t, TOKEN_HIDDEN, 0.0, functools.partial(nn.Conv1d, kernel_size=1))


# -- useful FLOPs ------------------------------------------------------------------------------


def _offset_pairs(t: int, offsets: range) -> int:
    """(query, key) pairs with key - query in ``offsets``: Σ (T - |d|) over the offsets d."""
    return sum(t - abs(d) for d in offsets if abs(d) < t)


def _group_pairs(t: int, rate: int) -> int:
    """Pairs within the residue classes mod ``rate``: Σ over classes of (class size)²."""
    small, extra = divmod(t, rate)
    return extra * (small + 1) ** 2 + (rate - extra) * small**2


def pairs_local(t: int) -> int:
    r = WINDOW // 2
    return _offset_pairs(t, range(-r, r + 1))


def pairs_atrous(t: int) -> int:
    return _group_pairs(t, RATE)


def pairs_local_strided(t: int) -> int:
    r = WINDOW // 2
    both = _offset_pairs(t, range(-(r // STRIDE) * STRIDE, r + 1, STRIDE))  # in both sets
    return pairs_local(t) + _group_pairs(t, STRIDE) - both


def attention_flops(pairs: Callable[[int], int]) -> Callable[[int], float]:
    return lambda t: 4 * B * H * DH * pairs(t)


def nystrom_flops(t: int) -> float:
    m = LANDMARKS
    return B * H * (8 * t * m * DH + 4 * m * m * DH + 8 * PINV_ITERS * m**3)


def nystrom_module_flops(t: int) -> float:
    return 8 * B * t * DIM**2 + nystrom_flops(t)


def token_mlp_flops(t: int) -> float:
    return 4 * B * t * TOKEN_HIDDEN * DIM


# -- candidates --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A function on (B, H, T, Dh) q, k, v (``attend``) or on (B, T, in_dim) x (``module``)."""

    label: str
    flops: Callable[[int], float]  # useful forward FLOPs at length T
    attend: Callable[..., Tensor] | None = None
    module: Callable[[int], Callable[[Tensor], Tensor]] | None = None  # T -> mixer
    in_dim: int = DIM
    pairs: Callable[[int], int] | None = None  # visible (query, key) pairs, for patterns
    needs: Callable[[], tuple[Any, str]] | None = None  # peer loader: (None, why) if missing


CANDIDATES: dict[str, Candidate] = {
    "sdpa": Candidate("dense SDPA", attention_flops(lambda t: t * t),
                      attend=F.scaled_dot_product_attention, pairs=lambda t: t * t),
    "local": Candidate(f"kexue local w={WINDOW}", attention_flops(pairs_local),
                       attend=functools.partial(ka.local_attention, window=WINDOW),
                       pairs=pairs_local),
    "atrous": Candidate(f"kexue atrous r={RATE}", attention_flops(pairs_atrous),
                        attend=functools.partial(ka.atrous_attention, rate=RATE),
                        pairs=pairs_atrous),
    "strided": Candidate(f"kexue local+strided w={WINDOW} s={STRIDE}",
                         attention_flops(pairs_local_strided),
                         attend=functools.partial(ka.sparse_attention, window=WINDOW,
                                                  stride=STRIDE),
                         pairs=pairs_local_strided),
    "nystrom": Candidate(f"kexue nystrom_attention m={LANDMARKS}", nystrom_flops,
                         attend=functools.partial(ka.nystrom_attention, landmarks=LANDMARKS,
                                                  pinv_iters=PINV_ITERS)),
    "nystrom_core_peer": Candidate("nystrom-attention core", nystrom_flops,
                                   module=peer_nystrom_core, in_dim=3 * DIM,
                                   needs=load_nystrom_peer),
    "nystrom_core": Candidate("kexue nystrom_attention core", nystrom_flops,
                              module=lambda t: kexue_nystrom_core, in_dim=3 * DIM),
    "nystrom_module_peer": Candidate("nystrom-attention NystromAttention", nystrom_module_flops,
                                     module=peer_nystrom_module, needs=load_nystrom_peer),
    "nystrom_module": Candidate("kexue NystromAttention", nystrom_module_flops,
                                module=lambda t: ka.NystromAttention(DIM, H, LANDMARKS,
                                                                     PINV_ITERS)),
    "mixer_peer": Candidate("mlp-mixer-pytorch token FeedForward", token_mlp_flops,
                            module=peer_token_mixer, needs=load_mixer_peer),
    "mixer": Candidate("kexue MLPMixerToken", token_mlp_flops,
                       module=lambda t: ka.MLPMixerToken(DIM, t)),
    # one mask object each, so that the block mask is built once per T (kexue.attention.flex)
    "flex_local": Candidate(f"kexue flex_sparse_attention local w={WINDOW}",
                            attention_flops(pairs_local), pairs=pairs_local,
                            attend=functools.partial(ka.flex_sparse_attention,
                                                     mask=ka.masks.local(WINDOW))),
    "flex_atrous": Candidate(f"kexue flex_sparse_attention dilated r={RATE}",
                             attention_flops(pairs_atrous), pairs=pairs_atrous,
                             attend=functools.partial(ka.flex_sparse_attention,
                                                      mask=ka.masks.dilated(RATE))),
    "flex_strided": Candidate(
        f"kexue flex_sparse_attention local+strided w={WINDOW} s={STRIDE}",
        attention_flops(pairs_local_strided), pairs=pairs_local_strided,
        attend=functools.partial(ka.flex_sparse_attention,
                                 mask=ka.masks.or_(ka.masks.local(WINDOW),
                                                   ka.masks.strided(STRIDE)))),
}


@dataclasses.dataclass(frozen=True)
class Group:
    """Candidates timed together, each compared with ``baseline``; timing per --quick or not."""

    keys: tuple[str, ...]
    baseline: str
    timing: tuple[int, int, float]  # warmup, repeats, min_time of measure_interleaved
    quick_timing: tuple[int, int, float]
    modes: tuple[str, ...] = MODES


GROUPS = {
    # Dense SDPA at 16k sets the pace: the first (sizing) call is the warm-up, 3 rounds.
    "attention fn (B, H, T, Dh)": Group(("sdpa", "local", "atrous", "strided", "nystrom"),
                                        "sdpa", (0, 3, 0.2), (0, 3, 0.05)),
    "Nyström core (B, T, 3D)": Group(("nystrom_core_peer", "nystrom_core"), "nystrom_core_peer",
                                     (0, 5, 0.1), (0, 3, 0.05)),
    "Nyström module (B, T, D)": Group(("nystrom_module_peer", "nystrom_module"),
                                      "nystrom_module_peer", (0, 5, 0.1), (0, 3, 0.05)),
    "token MLP (B, T, D)": Group(("mixer_peer", "mixer"), "mixer_peer", (0, 5, 0.1),
                                 (0, 3, 0.05)),
    # FlexAttention has no CPU backward: inference only. Warm-up 1 call = the compilation.
    "FlexAttention compiled (B, H, T, Dh)": Group(
        ("sdpa", "local", "flex_local", "atrous", "flex_atrous", "strided", "flex_strided"), "sdpa",
        (1, 3, 0.2), (1, 3, 0.05), modes=("forward",)),
}


def missing(key: str) -> str | None:
    """None if ``key`` can run here, else why not."""
    needs = CANDIDATES[key].needs
    if needs is None:
        return None
    found, note = needs()
    return None if found is not None else note


def make_step(key: str, t: int, mode: str) -> Callable[[], None]:
    """Allocate the inputs of ``key`` at length ``t``; return one call of ``mode`` over them."""
    c = CANDIDATES[key]
    gen = torch.Generator().manual_seed(0)
    if c.attend is not None:
        fn, params = c.attend, []
        inputs = [torch.randn(B, H, t, DH, generator=gen) for _ in range(3)]  # q, k, v
        out_shape = (B, H, t, DH)
    else:
        torch.manual_seed(0)  # module initialisation
        fn = c.module(t)
        params = list(fn.parameters()) if isinstance(fn, nn.Module) else []
        inputs = [torch.randn(B, t, c.in_dim, generator=gen)]  # x (B, T, in_dim)
        out_shape = (B, t, DIM)
    if mode == "forward":

        def forward() -> None:
            with torch.no_grad():
                fn(*inputs)

        return forward
    grad = torch.randn(out_shape, generator=gen)  # dL/d(output)
    for x in inputs:
        x.requires_grad_(True)
    leaves = inputs + params

    def forward_backward() -> None:
        for x in leaves:
            x.grad = None
        fn(*inputs).backward(grad)

    return forward_backward


def matmul_step() -> Callable[[], None]:
    """One (2048, 2048) @ (2048, 2048) float32 product into a preallocated output."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=gen) for _ in range(2))
    c = torch.empty(MATMUL_N, MATMUL_N)
    return lambda: torch.mm(a, b, out=c)


# -- memory: one case in a fresh process -------------------------------------------------------


def run_case(key: str, t: int, mode: str) -> dict[str, int]:
    """Peak resident-set growth of one call of ``key`` at ``t`` over its allocated inputs."""
    make_step(key, WARM_T, mode)()  # code pages and lazy state, not this case's memory
    peak = rss_growth(make_step(key, t, mode))
    if peak is None:
        raise SystemExit("memory needs Linux with glibc (/proc/self/status, malloc_trim)")
    return {"peak_bytes": peak}


def case_in_subprocess(key: str, t: int, mode: str, threads: int) -> dict[str, Any]:
    """:func:`run_case` in a fresh interpreter; ``{"error": ...}`` if it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{key}:{t}:{mode}",
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_memory(rows: list[Row], threads: int, lengths: tuple[int, ...]) -> None:
    """``peak_mb`` of every timed row at ``lengths``, each case in a fresh subprocess."""
    todo = sorted((r for r in rows if "median_s" in r and r.get("T") in lengths),
                  key=lambda r: -r["median_s"])  # longest first, so the pool ends together
    with concurrent.futures.ThreadPoolExecutor(MEMORY_WORKERS) as pool:
        futures = {pool.submit(case_in_subprocess, r["key"], r["T"], r["mode"], threads): r
                   for r in todo}
        for future in concurrent.futures.as_completed(futures):
            r, res = futures[future], future.result()
            if "error" in res:
                r["memory_note"] = f"memory run failed: {res['error']}"
            else:
                r["peak_mb"] = res["peak_bytes"] / MB


# -- time ----------------------------------------------------------------------------------------


def _paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a_i / b_i."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def time_group(name: str, mode: str, lengths: tuple[int, ...], quick: bool) -> list[Row]:
    """Every candidate of group ``name`` at every T, and the matmul, interleaved in rounds."""
    group = GROUPS[name]
    benchmark = f"{name} · {mode}"
    rows: list[Row] = []
    fns: dict[str, Callable[[], None]] = {"matmul": matmul_step()}
    for key in group.keys:
        for t in lengths:
            why = missing(key)
            if why is None:
                fns[f"{key}@{t}"] = make_step(key, t, mode)
            else:
                rows.append({"key": key, "T": t, "note": why})
    warmup, repeats, min_time = group.quick_timing if quick else group.timing
    timings = measure_interleaved(fns, warmup=warmup, repeats=repeats, min_time=min_time)
    mm = timings.pop("matmul")
    mm_flops = 2 * MATMUL_N**3
    for label, timing in timings.items():
        key, t = label.split("@")
        rows.append({"key": key, "T": int(t), **timing})
    for r in rows:
        c = CANDIDATES[r["key"]]
        r.update(benchmark=benchmark, case=f"T = {r['T']}", mode=mode, group=name, impl=c.label)
        if r["key"] != group.baseline and missing(group.baseline) is None:
            r["baseline"] = CANDIDATES[group.baseline].label
        if "median_s" not in r:
            continue
        flops = c.flops(r["T"]) * (1 if mode == "forward" else 3)
        r["useful_gflop"] = flops / 1e9
        r["useful_gflop_per_s"] = flops / r["median_s"] / 1e9
        # (flops / run_i) / (mm_flops / mm_run_i), median over rounds
        r["fraction_of_matmul"] = flops / mm_flops * _paired(mm["runs"], r["runs"])
        if c.pairs is not None:
            r["keys_per_query"] = c.pairs(r["T"]) / r["T"]
    order = {key: i for i, key in enumerate(group.keys)}
    rows.sort(key=lambda r: (r["T"], order[r["key"]]))
    reference = {"benchmark": benchmark, "case": "FLOP-rate reference",
                 "impl": f"torch.mm {MATMUL_N}² float32", **mm,
                 "gflop_per_s": mm_flops / mm["median_s"] / 1e9}
    return [reference, *rows]


# -- derived figures and targets (issue 3) -------------------------------------------------------


def _find(rows: list[Row], key: str, t: int, mode: str, group: str | None = None) -> Row | None:
    """The timed row of ``key`` at ``t`` and ``mode`` (in ``group``; default: the first found)."""
    return next((r for r in rows if r.get("key") == key and r.get("T") == t
                 and r.get("mode") == mode and "median_s" in r
                 and group in (None, r.get("group"))), None)


def speedup(rows: list[Row], key: str, base: str, t: int, mode: str,
            group: str | None = None) -> float | None:
    """How many times faster ``key`` runs than ``base``: median over rounds of base / key."""
    r, b = _find(rows, key, t, mode, group), _find(rows, base, t, mode, group)
    return None if r is None or b is None else _paired(b["runs"], r["runs"])


def exponent(rows: list[Row], key: str, mode: str, lo: int = 4096, hi: int = 16384,
             group: str | None = None) -> float | None:
    """log(t(hi) / t(lo)) / log(hi / lo), median over rounds."""
    a, b = _find(rows, key, lo, mode, group), _find(rows, key, hi, mode, group)
    if a is None or b is None:
        return None
    return math.log(_paired(b["runs"], a["runs"])) / math.log(hi / lo)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Each target of issue 3 at T = 16k: the measured value and whether it is met."""
    t, fwd, train = 16384, "forward", "forward+backward"

    def peak(key: str, mode: str) -> float | None:
        r = _find(rows, key, t, mode)
        return None if r is None else r.get("peak_mb")

    def peak_ratio(key: str, base: str) -> float | None:
        a, b = peak(key, fwd), peak(base, fwd)
        return None if a is None or b is None or b <= 0 else a / b

    def at_least(x: float) -> Callable[[float], bool]:
        return lambda v: v >= x

    def at_most(x: float) -> Callable[[float], bool]:
        return lambda v: v <= x

    checks = [
        ("local window training ≥ 20× dense SDPA", speedup(rows, "local", "sdpa", t, train),
         "×", at_least(20)),
        ("local window training peak ≤ 300 MB", peak("local", train), " MB", at_most(300)),
        ("atrous training ≥ 35× dense SDPA", speedup(rows, "atrous", "sdpa", t, train), "×",
         at_least(35)),
        ("local+strided training ≥ 10× dense SDPA", speedup(rows, "strided", "sdpa", t, train),
         "×", at_least(10)),
        ("Nyström forward ≥ 70× dense SDPA (functions)",
         speedup(rows, "nystrom", "sdpa", t, fwd), "×", at_least(70)),
    ]
    for level, key, base in (("core", "nystrom_core", "nystrom_core_peer"),
                             ("module", "nystrom_module", "nystrom_module_peer")):
        checks += [
            (f"Nyström forward ≥ 2.3× nystrom-attention ({level})",
             speedup(rows, key, base, t, fwd), "×", at_least(2.3)),
            (f"Nyström training ≥ 1.7× nystrom-attention ({level})",
             speedup(rows, key, base, t, train), "×", at_least(1.7)),
            (f"Nyström forward peak ≤ 0.2× nystrom-attention's ({level})",
             peak_ratio(key, base), "×", at_most(0.2)),
        ]
    for key in ("local", "nystrom", "nystrom_core", "nystrom_module"):
        label = CANDIDATES[key].label
        checks += [(f"{label}: time exponent 4k→16k forward ≤ 1.15", exponent(rows, key, fwd),
                    "", at_most(1.15)),
                   (f"{label}: time exponent 4k→16k training ≤ 1.3", exponent(rows, key, train),
                    "", at_most(1.3))]
    return [{"target": name, "measured": value, "unit": unit,
             "met": None if value is None else bool(ok(value))}
            for name, value, unit, ok in checks]


def agreement() -> list[str]:
    """Do kexue and each peer compute the same map? Max |difference| on one input, T = 1024."""
    notes = []
    gen = torch.Generator().manual_seed(0)
    if missing("nystrom_core_peer") is None:
        x = torch.randn(B, 1024, 3 * DIM, generator=gen)  # [q | k | v]
        with torch.no_grad():
            ours, theirs = kexue_nystrom_core(x), peer_nystrom_core(1024)(x)
        diff = (ours - theirs).abs().max()
        notes.append(f"same map: Nyström cores differ by max |Δ| = {diff:.1e} (outputs up to "
                     f"{theirs.abs().max():.2f}; the pinv iterations start apart: the peer "
                     "scales Z₀ by norms over the whole batch, kexue per head)")
    if missing("mixer_peer") is None:
        torch.manual_seed(0)
        ours, theirs = ka.MLPMixerToken(DIM, 1024), peer_token_mixer(1024)
        with torch.no_grad():
            for mine, conv in ((ours.fc1, theirs[0]), (ours.fc2, theirs[3])):  # Conv1d k=1
                mine.weight.copy_(conv.weight.squeeze(-1))
                mine.bias.copy_(conv.bias)
            x = torch.randn(B, 1024, DIM, generator=gen)
            diff = (ours(x) - theirs(x)).abs().max()
        notes.append(f"same map: token MLPs with copied weights differ by max |Δ| = {diff:.1e}")
    return notes


# -- report ------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{unit}"


def _time(row: Row | None) -> str:
    if row is None:
        return "—"
    s = row["median_s"]
    return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"


def summary_markdown(rows: list[Row], lengths: tuple[int, ...], checks: list[dict]) -> str:
    ts = " / ".join(f"{t // 1024}k" for t in lengths)
    big = f"{lengths[-1] // 1024}k"
    lines = ["", "## Per method", "",
             "Speedup: median over rounds of (baseline's run / this one's), against dense SDPA "
             "for attention functions and against the peer for the rest. Peak: resident-set "
             "growth during one call in a fresh process, inputs excluded (MB = 10⁶ bytes). "
             f"Exponent: log(t16k / t4k) / log 4. FLOP %: useful FLOP rate at {big} / the "
             f"rate of a {MATMUL_N}² matmul in the same rounds.", "",
             f"| method | mode | keys/query at {big} | median {ts} | speedup {ts} | "
             f"peak MB {ts} | exponent | FLOP % |",
             "|---|---|---:|---|---|---|---:|---:|"]
    for name, group in GROUPS.items():
        for key in group.keys:
            for mode in group.modes:
                found = [_find(rows, key, t, mode, name) for t in lengths]
                if all(r is None for r in found):
                    continue
                last = found[-1] or {}
                kpq = _num(last.get("keys_per_query"), ".0f")
                ups = " / ".join("—" if key == group.baseline else
                                 _num(speedup(rows, key, group.baseline, t, mode, name), ".3g", "×")
                                 for t in lengths)
                mems = " / ".join(_num(r and r.get("peak_mb")) for r in found)
                times = " / ".join(_time(r) for r in found)
                frac = last.get("fraction_of_matmul")
                lines.append(
                    f"| {CANDIDATES[key].label} | {mode} | {kpq} | {times} | {ups} | {mems} | "
                    f"{_num(exponent(rows, key, mode, group=name), '.2f')} | "
                    f"{_num(None if frac is None else 100 * frac, '.1f', '%')} |")
    verdict = {True: "met", False: "**missed**", None: "not measured (needs T = 4k and 16k)"}
    if all(c["met"] is None for c in checks):  # e.g. --quick or --group: no target measured
        return "\n".join(lines) + "\n"
    lines += ["", "## Targets at T = 16k (issue 3)", "",
              "| target | measured | verdict |", "|---|---:|---|"]
    lines += [f"| {c['target']} | {_num(c['measured'], '.3g', c['unit'])} | {verdict[c['met']]} |"
              for c in checks]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], lengths: tuple[int, ...], path: Path) -> None:
    """Log-log median time and peak memory vs T, one line per method; forward | training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 10), sharex=True)
    pair = plt.get_cmap("tab20").colors  # (dark, light) pairs: kexue dark, its peer light
    colors = {"sdpa": "black", "local": pair[0], "atrous": pair[2], "strided": pair[4],
              "nystrom": pair[6], "nystrom_core": pair[8], "nystrom_core_peer": pair[9],
              "nystrom_module": pair[10], "nystrom_module_peer": pair[11], "mixer": pair[12],
              "mixer_peer": pair[13], "flex_local": pair[1], "flex_atrous": pair[3],
              "flex_strided": pair[5]}
    for col, mode in enumerate(MODES):
        for key, c in CANDIDATES.items():
            found = [r for r in (_find(rows, key, t, mode) for t in lengths) if r is not None]
            if not found:
                continue
            style = dict(color=colors[key], marker="o",
                         linestyle="-" if c.attend else ":" if c.in_dim != DIM else "--")
            alpha = exponent(rows, key, mode)
            label = c.label + ("" if alpha is None else f"  (exponent {alpha:.2f})")
            axes[0, col].plot([r["T"] for r in found], [r["median_s"] for r in found],
                              label=label, **style)
            mem = [(r["T"], r["peak_mb"]) for r in found if r.get("peak_mb", 0) > 0]
            if mem:
                axes[1, col].plot(*zip(*mem, strict=True), label=c.label, **style)
        axes[0, col].set_title(f"{mode}: median time per call")
        axes[1, col].set_title(f"{mode}: peak memory (resident-set growth, one call)")
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel("sequence length T")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(lengths, [f"{t // 1024}k" for t in lengths])
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=7)
    fig.suptitle(f"kexue.attention vs dense SDPA and peers · CPU, 1 thread, B={B}, H={H}, "
                 f"Dh={DH}, D={DIM}\nsolid: functions (B, H, T, Dh) · dotted: Nyström cores · "
                 "dashed: modules · a peer is the light shade of its kexue counterpart")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--case", help="KEY:T:MODE: print the peak memory of one case as JSON "
                   f"(KEY in {', '.join(CANDIDATES)}; MODE in {', '.join(MODES)})")
    p.add_argument("--group", help="time only the groups whose name contains this text "
                   "(case-insensitive), e.g. flex; results go to results/attention_<text>.*")
    args = p.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_attention.py measures CPU time and resident memory; "
                         "--device cuda is not supported")
    if args.case:
        key, t, mode = args.case.split(":")
        print(json.dumps(run_case(key, int(t), mode)))
        return

    started = time.perf_counter()
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    names = [n for n in GROUPS if args.group is None or args.group.lower() in n.lower()]
    if not names:
        raise SystemExit(f"--group {args.group!r} matches none of: {', '.join(GROUPS)}")
    slug = re.sub(r"\W+", "_", (args.group or "").lower(), flags=re.ASCII).strip("_")
    stem = "attention" if args.group is None else f"attention_{slug}"
    rows: list[Row] = []
    for name in names:
        for mode in GROUPS[name].modes:
            start = time.perf_counter()
            rows += time_group(name, mode, lengths, args.quick)
            gc.collect()
            print(f"{name} · {mode}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    memory_lengths = lengths[-1:] if args.quick else lengths
    start = time.perf_counter()
    add_memory(rows, args.threads, memory_lengths)
    print(f"memory at T = {memory_lengths}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for r in rows:  # targets that are one row's ratio to its baseline, for the main table
        limit = {("local", "forward+backward"): 20, ("atrous", "forward+backward"): 35,
                 ("strided", "forward+backward"): 10, ("nystrom", "forward"): 70,
                 ("nystrom_core", "forward"): 2.3, ("nystrom_core", "forward+backward"): 1.7,
                 ("nystrom_module", "forward"): 2.3, ("nystrom_module", "forward+backward"): 1.7,
                 }.get((r.get("key"), r.get("mode")))
        if limit is not None and r.get("T") == 16384 and "median_s" in r:
            r["target_ratio"] = 1 / limit
    checks = targets(rows)
    _, nystrom_note = load_nystrom_peer()
    _, mixer_note = load_mixer_peer()
    fused = "fused CPU kernels (self-check passed)" if fused_available() else (
        "portable path (public ops only: forced, or the self-check failed)")
    notes = [f"peers: {nystrom_note}; {mixer_note}",
             f"kexue sparse paths: {fused} (kexue/attention/_fused.py)",
             f"mode: {'--quick' if args.quick else 'full'}, threads {torch.get_num_threads()}, "
             f"B={B}, H={H}, Dh={DH}, D={DIM}, window {WINDOW}, rate {RATE}, stride {STRIDE}, "
             f"{LANDMARKS} landmarks, {PINV_ITERS} pinv iterations, float32; memory measured at "
             f"T = {', '.join(map(str, memory_lengths))}",
             "each group (attention functions vs dense SDPA; Nyström cores, Nyström modules and "
             "token MLPs vs their peer) is timed at every T in the same interleaved rounds, "
             f"with a {MATMUL_N}² matmul as the FLOP-rate reference",
             *agreement(),
             "on shared CPU cores the medians move with other tenants' load; the paired ratios "
             "are the steadier figures",
             "after this table: peak memory, speedups, exponents, FLOP rate and the targets; "
             "the method is in the docstring of benchmarks/bench_attention.py"]
    md = write_results(stem, rows, device=device, notes=notes)
    with md.open("a", encoding="utf-8") as f:
        f.write(summary_markdown(rows, lengths, checks))
    data = json.loads((RESULTS / f"{stem}.json").read_text(encoding="utf-8"))
    data["targets"] = checks
    data["exponents"] = {key: {mode: exponent(rows, key, mode) for mode in MODES}
                         for key in CANDIDATES}
    data["seconds_total"] = time.perf_counter() - started
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    plot(rows, lengths, RESULTS / f"{stem}_scaling.png")
    print(md.read_text(encoding="utf-8"))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
