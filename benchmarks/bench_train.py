"""kexue.train side by side with its peers: EMA update and swap, per-tensor clipping, layer decay.

    python benchmarks/bench_train.py [--quick] [--device cpu|cuda] [--threads N]
    python benchmarks/bench_train.py --fsdp2 [--quick]     # e. only: 2 gloo processes

Writes results/train.json and results/train.md (``--fsdp2``: results/train-fsdp2.*). Every
figure is a median over timed runs after warm-up; the candidates of one comparison run in the
same process, interleaved in rounds.

a. EMA update, 420 tensors (48M parameters, and tiny): ``kexue.train.EMA.update`` against the
   floor, one cached ``torch._foreach_lerp_`` over the same tensors, and the peers
   ``ema_pytorch.EMA`` and timm's ``ModelEmaV3``.
b. EMA swap: entering and leaving ``with ema.swapped():`` against a copy-based swap.
c. Per-tensor gradient clipping, 200 tensors: ``clip_by_norm(1.0)`` against
   ``torch.nn.utils.clip_grad_norm_(foreach=True)``; directly and inside an optimizer step.
d. AdamW step with the 40 layer-decay groups of ``param_groups(layer_decay=0.9)`` against one
   group, foreach and fused.
e. FSDP2 (``fully_shard`` on each of 210 ``Linear(478, 478)``, 48M parameters, 2 gloo ranks on
   CPU, ``Shard(0)``): ``EMA.update`` against the per-shard floor, a bare ``_foreach_lerp_``
   over the local shards (and the same lerp dispatched on the DTensors);
   ``clip_by_global_norm(1.0)`` on the DTensor gradients against the floor, a bare
   ``_foreach_norm`` of the local shards + one ``all_reduce`` + ``_foreach_mul_``, beside
   ``torch.nn.utils.clip_grad_norm_(foreach=True)`` on the same DTensor gradients. Both ranks
   time the same calls in the same order (one call per run, so that their collectives pair
   up); rank 0's figures are reported.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import importlib.util
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    measure_interleaved,
    model_label,
    parser,
    peer_version,
    run_cases,
    setup,
    table_rows,
    write_results,
)

import kexue.train as kt  # noqa: E402

Row = dict[str, Any]


# -- peers -------------------------------------------------------------------------------------


@functools.cache
def load_ema_pytorch() -> tuple[type | None, str]:
    """``ema_pytorch.EMA`` and a note (version, or why it is missing)."""
    try:
        from ema_pytorch import EMA
    except ImportError as e:
        return None, f"ema-pytorch unavailable ({e}); pip install --no-deps ema-pytorch"
    return EMA, f"ema-pytorch {peer_version('ema-pytorch')}"


@functools.cache
def load_timm_ema() -> tuple[type | None, str]:
    """timm's ``ModelEmaV3`` and a note.

    ``import timm`` imports timm.models, which needs torchvision; ``timm/utils/model_ema.py``
    itself imports only torch, so without torchvision that one file is loaded on its own.
    """
    version = peer_version("timm")
    try:
        from timm.utils.model_ema import ModelEmaV3
        return ModelEmaV3, f"timm {version}"
    except ImportError as e:
        reason = str(e)
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None, f"timm unavailable; pip install --no-deps timm ({reason})"
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "model_ema.py"
    try:
        file_spec = importlib.util.spec_from_file_location("_timm_model_ema", path)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report whatever stops it, do not fake a number
        return None, f"timm {version}: `import timm` failed ({reason}); loading {path} failed ({e})"
    return module.ModelEmaV3, (f"timm {version} (timm/utils/model_ema.py loaded as a file: "
                               f"`import timm` needs torchvision: {reason})")


# -- models ------------------------------------------------------------------------------------


def linear_stack(width: int, layers: int, device: torch.device) -> nn.Module:
    """``layers`` Linear(width, width): 2·layers tensors, layers·(width² + width) parameters."""
    return nn.ModuleList(nn.Linear(width, width) for _ in range(layers)).to(device)


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class Tower(nn.Module):
    """embed, ``blocks.0.`` … ``blocks.{depth-1}.``, norm and head: depth + 2 layer-decay depths."""

    def __init__(self, dim: int, hidden: int, depth: int = 38, vocab: int = 1000) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)


# -- a. EMA update -------------------------------------------------------------------------------


def bench_ema_update(device: torch.device, width: int, layers: int,
                     timing: dict[str, Any]) -> list[Row]:
    ema_pytorch_cls, ema_pytorch_note = load_ema_pytorch()
    timm_cls, timm_note = load_timm_ema()
    torch.manual_seed(0)
    model = linear_stack(width, layers, device)
    decay = 0.999
    live = [p.detach() for p in model.parameters()]
    floor_shadow = [t.clone() for t in live]
    fns: dict[str, Callable[[], Any]] = {
        "foreach_lerp_ floor": lambda: torch._foreach_lerp_(floor_shadow, live, 1 - decay),
        "kexue EMA": kt.EMA(model, decay=decay).update,
    }
    if ema_pytorch_cls is not None:
        for foreach in (False, True):
            peer = ema_pytorch_cls(model, beta=decay, update_after_step=0, update_every=1,
                                   use_foreach=foreach)
            fns[f"ema_pytorch.EMA (use_foreach={foreach})"] = peer.update
    if timm_cls is not None:
        timm_ema = timm_cls(model, decay=decay)
        fns["timm ModelEmaV3"] = lambda: timm_ema.update(model)
    label = model_label(model)
    extra = {name: {"baseline": "foreach_lerp_ floor"} for name in fns if "floor" not in name}
    extra["kexue EMA"]["target_ratio"] = 1.10
    rows = table_rows("EMA update", label, measure_interleaved(fns, **timing), **extra)
    for cls, impl, note in ((ema_pytorch_cls, "ema_pytorch.EMA", ema_pytorch_note),
                            (timm_cls, "timm ModelEmaV3", timm_note)):
        if cls is None:
            rows.append({"benchmark": "EMA update", "case": label, "impl": impl, "note": note})
    return rows


# -- b. EMA swap ---------------------------------------------------------------------------------


def bench_ema_swap(device: torch.device, width: int, layers: int,
                   timing: dict[str, Any]) -> list[Row]:
    torch.manual_seed(0)
    model = linear_stack(width, layers, device)
    ema = kt.EMA(model, decay=0.999)
    live = [p.detach() for p in model.parameters()]
    backup = [t.clone() for t in live]

    def kexue_swap() -> None:
        with ema.swapped():
            pass

    def copy_swap() -> None:
        torch._foreach_copy_(backup, live)  # set the training weights aside
        torch._foreach_copy_(live, ema.shadow)  # averaged weights in
        torch._foreach_copy_(live, backup)  # training weights back

    params = list(model.parameters())
    plan = list(zip(params, ema.shadow, strict=True))  # dtypes and devices match here

    def data_swap_floor() -> None:
        # What any `.data` exchange must do, with nothing decided per call.
        saved = [p.data for p in params]
        for p, s in plan:
            p.data = s
        for p, d in zip(params, saved, strict=True):
            p.data = d

    copy = "copy swap (3× _foreach_copy_)"
    timings = measure_interleaved({copy: copy_swap, "kexue EMA.swapped()": kexue_swap,
                                   ".data swap floor (plan cached)": data_swap_floor}, **timing)
    return table_rows("EMA swap (enter + exit)", model_label(model), timings, **{
        "kexue EMA.swapped()": {"baseline": copy, "target_s": 1e-3},
        ".data swap floor (plan cached)": {"baseline": copy}})


# -- c. per-tensor clipping ----------------------------------------------------------------------


def bench_clip(device: torch.device, shape: tuple[int, ...], timing: dict[str, Any]) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=gen).to(device)) for _ in range(200)]
    for p in params:
        # Norms ≫ 1, so the first call clips; later calls see norms ≤ 1 and multiply by ≈ 1.
        p.grad = 10 * torch.randn(shape, generator=gen).to(device)
    grads = [p.grad for p in params]
    tx = kt.clip_by_norm(1.0)
    state = tx.init(params)
    torch_opt = torch.optim.SGD(params, lr=0.0, foreach=True)
    kexue_opt = torch.optim.SGD(params, lr=0.0, foreach=True)
    handle = kt.with_transforms(kexue_opt, kt.clip_by_norm(1.0))

    def torch_clip() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)

    def torch_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        torch_opt.step()

    timings = measure_interleaved({
        "clip_grad_norm_(foreach=True)": torch_clip,
        "kexue clip_by_norm update": lambda: tx.update(grads, state, params),
        "clip_grad_norm_ + SGD.step": torch_step,
        "kexue with_transforms SGD.step": kexue_opt.step,
    }, **timing)
    handle.remove()
    case = f"200 × {tuple(shape)} float32"
    return table_rows("clip per tensor", case, timings, **{
        "kexue clip_by_norm update": {"baseline": "clip_grad_norm_(foreach=True)",
                                      "target_ratio": 1.0},
        "kexue with_transforms SGD.step": {"baseline": "clip_grad_norm_ + SGD.step"},
    })


# -- d. AdamW with layer-decay groups ------------------------------------------------------------


def _fused_supported(device: torch.device) -> bool:
    p = nn.Parameter(torch.zeros(2, device=device))
    p.grad = torch.zeros(2, device=device)
    try:
        torch.optim.AdamW([p], fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


def _adamw_step(device: torch.device, dim: int, hidden: int, kind: str,
                layer_decay: bool) -> tuple[Callable[[], Any], nn.Module, int]:
    """``optimizer.step`` of AdamW over a fresh :class:`Tower` with fixed gradients."""
    torch.manual_seed(0)
    model = Tower(dim, hidden).to(device)
    for p in model.parameters():
        p.grad = 1e-3 * torch.randn_like(p)
    if layer_decay:
        groups = kt.param_groups(model, 1e-3, layer_decay=0.9)
    else:
        groups = [{"params": list(model.parameters())}]
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0, **{kind: True})
    return opt.step, model, len(groups)


def bench_layer_decay(device: torch.device, dim: int, hidden: int,
                      timing: dict[str, Any]) -> list[Row]:
    fns: dict[str, Callable[[], Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for kind in ["foreach"] + (["fused"] if _fused_supported(device) else []):
        fns[f"AdamW {kind}, 1 group"], model, _ = _adamw_step(device, dim, hidden, kind, False)
        fns[f"AdamW {kind}, layer decay"], _, n_groups = _adamw_step(device, dim, hidden, kind,
                                                                     True)
        extra[f"AdamW {kind}, layer decay"] = {"baseline": f"AdamW {kind}, 1 group",
                                               "target_ratio": 1.0}
    label = f"{model_label(model)}; {n_groups} groups vs 1"
    return table_rows("AdamW step, layer decay", label, measure_interleaved(fns, **timing), **extra)


# -- e. FSDP2, 2 gloo ranks ----------------------------------------------------------------------


def _sharded_stack(width: int, layers: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """:func:`linear_stack` with ``fully_shard`` on every layer, and DTensor gradients."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = linear_stack(width, layers, torch.device("cpu"))
    for layer in model:
        fully_shard(layer)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1 + torch.distributed.get_rank())
    for p in params:
        local = 10 * torch.randn(p.to_local().shape, generator=gen)  # norms ≫ 1: clipped
        p.grad = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                    shape=p.shape, stride=p.stride())
    return model, params


def bench_fsdp2(width: int, layers: int, timing: dict[str, Any]) -> list[Row]:
    """Run in every rank of an initialised gloo group; every rank must call it alike."""
    dist = torch.distributed
    model, params = _sharded_stack(width, layers)
    decay = 0.999
    label = f"{model_label(model)}; FSDP2, {dist.get_world_size()} gloo ranks"
    with torch.no_grad():
        live = [p.to_local() for p in params]
        floor_shadow = [t.clone() for t in live]
        dtensor_shadow = [p.detach().clone() for p in params]
        dtensors = [p.detach() for p in params]
    ema = kt.EMA(model, decay=decay)
    ema_fns = {
        "foreach_lerp_ floor (local shards)":
            lambda: torch._foreach_lerp_(floor_shadow, live, 1 - decay),
        "kexue EMA": ema.update,
        "foreach_lerp_ on the DTensors": lambda: torch._foreach_lerp_(dtensor_shadow, dtensors,
                                                                      1 - decay),
    }
    floor = "foreach_lerp_ floor (local shards)"
    rows = table_rows("EMA update, sharded", label, measure_interleaved(ema_fns, **timing), **{
        "kexue EMA": {"baseline": floor, "target_ratio": 1.05},
        "foreach_lerp_ on the DTensors": {"baseline": floor}})

    grads = [p.grad for p in params]
    local_grads = [g.to_local() for g in grads]
    tx = kt.clip_by_global_norm(1.0)
    state = tx.init(params)

    def clip_floor() -> None:
        sq = torch.stack(torch._foreach_norm(local_grads)).square().sum()
        dist.all_reduce(sq)
        coef = (1.0 / (sq.sqrt() + 1e-6)).clamp_(max=1.0)
        torch._foreach_mul_(local_grads, coef)

    floor = "foreach_norm + all_reduce + foreach_mul_ floor"
    clip_fns = {
        floor: clip_floor,
        "kexue clip_by_global_norm update": lambda: tx.update(grads, state, params),
        "clip_grad_norm_(foreach=True) on DTensors":
            lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True),
    }
    timings = measure_interleaved(clip_fns, **timing)
    rows += table_rows("global-norm clip, sharded", label, timings, **{
        "kexue clip_by_global_norm update": {"baseline": floor, "target_ratio": 1.05},
        "clip_grad_norm_(foreach=True) on DTensors": {"baseline": floor}})
    return rows


def _fsdp2_rank(rank: int, world: int, tmp: str, width: int, layers: int,
                timing: dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
        timeout=datetime.timedelta(minutes=10))
    try:
        rows = bench_fsdp2(width, layers, timing)
        if rank == 0:
            Path(tmp, "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    finally:
        torch.distributed.destroy_process_group()


def run_fsdp2(width: int, layers: int, timing: dict[str, Any], threads: int,
              world: int = 2) -> list[Row]:
    """:func:`bench_fsdp2` in ``world`` fresh processes (forked where possible); rank 0's rows."""
    import torch.multiprocessing as mp

    # Every rank runs each candidate once per run: the same number of collectives everywhere.
    timing = {**timing, "min_time": 0.0}
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_fsdp2_rank, args=(world, tmp, width, layers, timing, threads),
                           nprocs=world, join=True, start_method=start)
        return json.loads(Path(tmp, "rows.json").read_text(encoding="utf-8"))


def main_fsdp2(args: Any) -> None:
    if args.device != "cpu":
        raise SystemExit("--fsdp2 runs on CPU with gloo; leave --device at cpu")
    timing = (dict(warmup=2, repeats=11) if args.quick else dict(warmup=3, repeats=101))
    width, layers = (240, 210) if args.quick else (478, 210)  # 12.1M / 48.1M params
    start = time.perf_counter()
    rows = run_fsdp2(width, layers, timing, args.threads)
    print(f"bench_fsdp2({width}, {layers}): {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    notes = [f"mode: {'--quick' if args.quick else 'full'}, 2 processes × "
             f"{args.threads} thread(s), gloo on CPU, one call per timed run",
             "both ranks share the machine's cores (and its other tenants): the paired ratio "
             "and the fastest run (min) are the steadier figures"]
    md = write_results("train-fsdp2", rows, device=torch.device("cpu"), notes=notes)
    print(md.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--fsdp2", action="store_true",
                     help="run only e.: EMA and global clip under FSDP2 on 2 gloo processes")
    args = cli.parse_args(argv)
    device = setup(args)
    if args.fsdp2:
        main_fsdp2(args)
        return
    timing = (dict(warmup=2, repeats=15, min_time=0.01) if args.quick
              else dict(warmup=3, repeats=61, min_time=0.05))
    _, ema_note = load_ema_pytorch()
    _, timm_note = load_timm_ema()
    notes = [f"peers: {ema_note}; {timm_note}",
             f"mode: {'--quick' if args.quick else 'full'}, threads {torch.get_num_threads()}",
             "on shared CPU cores the medians move with other tenants' load; the paired ratio "
             "and the fastest run (min) are the steadier figures"]
    cases: list[tuple[Callable[..., list[Row]], tuple[Any, ...]]] = [
        (bench_ema_update, (478, 210)),  # 210 × Linear(478, 478): 48.1M params, 420 tensors
        (bench_ema_update, (8, 210)),  # 210 × Linear(8, 8): 15k params, 420 tensors
        (bench_ema_swap, (478, 210)),
        (bench_ema_swap, (8, 210)),
        (bench_clip, ((256, 256),)),
        (bench_clip, ((64,),)),
        (bench_layer_decay, (192, 768)),  # 11.6M params
        (bench_layer_decay, (16, 64)),  # 115k params
    ]
    run_cases("train", cases, device, timing, notes)


if __name__ == "__main__":
    main()
