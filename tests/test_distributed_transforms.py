"""Gradient transforms on FSDP2 (DTensor) and DDP gradients, 2 gloo processes, vs one process.

One process group runs every case (the module-scoped fixture). The reference is one process
with both ranks' batches concatenated (the same mean loss) and each transform written out in
plain float64 torch from its formula. FSDP2 averages the ranks' gradients in another order
than one mean over the whole batch, so results are compared with atol 1e-6 (float32); the
communication is counted with ``CommDebugMode``: the norms take one all-reduce for all
tensors, the row-wise transforms none.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from _dist import run
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard
from torch.distributed.tensor.debug import CommDebugMode

from kexue.train import (
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
    skip_nonfinite,
    with_transforms,
)

TOL = dict(rtol=0.0, atol=1e-6)
LR = 0.1
GLOBAL, PER_TENSOR, AGC, LIMIT, NOISE_SEED, ETA = 0.5, 0.3, 0.05, 0.2, 5, 0.1


def _model() -> nn.Module:
    # Rows 7, 3 and 1 split unevenly over 2 ranks; rank 1 holds empty shards of the last layer.
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1))


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen)


def _loss(model: nn.Module, batch, rank: int | None = None, world: int = 1) -> torch.Tensor:
    x, y = batch
    if rank is not None:
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    return (model(x) - y).pow(2).mean()


def _cases() -> dict:
    return {
        "global": clip_by_global_norm(GLOBAL),
        "per_tensor": clip_by_norm(PER_TENSOR),
        "agc": adaptive_clip(AGC),
        "centralize": centralize(),
        "chain": chain(centralize(), clip_by_global_norm(GLOBAL), scale(2.0),
                       clip_by_value(LIMIT)),
        "noise": add_noise(ETA, generator=torch.Generator().manual_seed(NOISE_SEED)),
        "map": map_grads(lambda g, p: 2 * g),
    }


def _shard(model: nn.Module, **kwargs) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kwargs)
    return fully_shard(model, **kwargs)


def _gathered(model: nn.Module, what: str = "grad") -> dict:
    return {n: (p.grad if what == "grad" else p.detach()).full_tensor()
            for n, p in model.named_parameters()}


def _error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return "no error"


def _worker(rank: int, world: int, scratch: str) -> dict:
    out: dict = {"grads": {}, "comms": {}}
    batch = _batch(0)
    model = _shard(_model())
    params = list(model.parameters())

    def backward() -> None:
        model.zero_grad()
        _loss(model, batch, rank, world).backward()

    for name, tx in _cases().items():
        backward()
        with CommDebugMode() as mode:
            stepped, _ = apply_transform(params, tx, tx.init(params))
        assert stepped
        out["grads"][name] = _gathered(model)
        out["comms"][name] = mode.get_total_counts()

    # skip_nonfinite: a NaN in rank 1's shard only must stop both ranks.
    tx = skip_nonfinite()
    out["skip"] = []
    for poison in (False, True):
        backward()
        if poison and rank == 1:
            params[0].grad.to_local()[0, 0] = math.nan
        with CommDebugMode() as mode:
            stepped, skipped = apply_transform(params, tx, tx.init(params))
        out["skip"].append((stepped, skipped, mode.get_total_counts()))

    # accumulate(2) with FSDP2's gradient sync off for the first micro-batch.
    model = _shard(_model())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    handle = with_transforms(opt, accumulate(2))
    for i, seed in enumerate((1, 2)):
        model.set_requires_gradient_sync(i == 1)
        _loss(model, _batch(seed), rank, world).backward()
        opt.step()
        opt.zero_grad()
    out["fsdp_accumulate"] = (_gathered(model, "param"), handle.steps_taken,
                              handle.steps_skipped)

    # accumulate(2) under DDP's no_sync, with and without process_group.
    out["ddp_accumulate"] = {}
    for label, group, quiet in (("no_sync first", dist.group.WORLD, (True, False)),
                                ("no_sync both", dist.group.WORLD, (True, True)),
                                ("no group", None, (True, False))):
        ddp = nn.parallel.DistributedDataParallel(_model())
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        with_transforms(opt, accumulate(2, process_group=group))
        for seed, no_sync in zip((1, 2), quiet, strict=True):
            with ddp.no_sync() if no_sync else torch.enable_grad():
                _loss(ddp, _batch(seed), rank, world).backward()
            opt.step()
            opt.zero_grad()
        out["ddp_accumulate"][label] = {n: p.detach().clone()
                                        for n, p in ddp.module.named_parameters()}

    # Mixed: only the first layer sharded, the rest plain tensors averaged by hand (as DDP).
    model = _model()
    fully_shard(model[0])
    params = list(model.parameters())
    out["mixed"] = {}
    for name in ("global", "per_tensor", "chain"):
        model.zero_grad()
        _loss(model, batch, rank, world).backward()
        for p in params[2:]:
            dist.all_reduce(p.grad)
            p.grad /= world
        tx = _cases()[name]
        apply_transform(params, tx, tx.init(params))
        out["mixed"][name] = {n: p.grad.full_tensor() if n.startswith("0.") else p.grad
                              for n, p in model.named_parameters()}

    # Shard(1) weights: norms still work, row-wise transforms refuse.
    model = _shard(_model(), shard_placement_fn=lambda p: Shard(1) if p.ndim == 2
                   and p.shape[1] % world == 0 else None)
    params = list(model.parameters())
    backward()
    tx = clip_by_global_norm(GLOBAL)
    apply_transform(params, tx, tx.init(params))
    out["shard1_global"] = _gathered(model)
    out["placements"] = [str(p.placements) for p in params]
    for name, tx in (("centralize", centralize()), ("agc", adaptive_clip(AGC))):
        backward()
        out[f"shard1_{name}"] = _error(lambda tx=tx: apply_transform(params, tx, None))
    backward()
    tx = map_grads(lambda g, p: g.full_tensor())
    out["map_plain"] = _error(lambda: apply_transform(params, tx, None))
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run(_worker)


def _reference_grads(seed: int = 0) -> tuple[dict, dict]:
    """Gradients (float64) of the whole-batch mean loss of the plain model, and its weights."""
    model = _model()
    _loss(model, _batch(seed)).backward()
    return ({n: p.grad.double() for n, p in model.named_parameters()},
            {n: p.detach().double() for n, p in model.named_parameters()})


def _rows(t: torch.Tensor) -> torch.Tensor:
    if t.ndim <= 1:
        return t.norm()
    return t.flatten(1).norm(dim=1).reshape(-1, *[1] * (t.ndim - 1))


def _expected() -> dict:
    g, w = _reference_grads()
    total = torch.sqrt(sum(v.pow(2).sum() for v in g.values()))

    def global_clip(grads: dict) -> dict:
        norm = torch.sqrt(sum(v.pow(2).sum() for v in grads.values()))
        return {n: v * min(1.0, GLOBAL / (float(norm) + 1e-6)) for n, v in grads.items()}

    def central(grads: dict) -> dict:
        return {n: v - v.mean(dim=1, keepdim=True) if v.ndim > 1 else v
                for n, v in grads.items()}

    assert GLOBAL < total  # the clip is active
    gen = torch.Generator().manual_seed(NOISE_SEED)
    noise = {n: torch.randn(v.shape, generator=gen).double() for n, v in g.items()}
    chained = {n: (2 * v).clamp(-LIMIT, LIMIT) for n, v in global_clip(central(g)).items()}
    return {
        "global": global_clip(g),
        "per_tensor": {n: v * min(1.0, PER_TENSOR / (float(v.norm()) + 1e-6))
                       for n, v in g.items()},
        "agc": {n: v * (AGC * _rows(w[n]).clamp_min(1e-3) / _rows(v).clamp_min(1e-6))
                .clamp(max=1.0) for n, v in g.items()},
        "centralize": central(g),
        "chain": chained,
        "noise": {n: v + math.sqrt(ETA) * noise[n] for n, v in g.items()},
        "map": {n: 2 * v for n, v in g.items()},
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_fsdp2_transform_equals_single_process(ranks, name):
    expected = _expected()[name]
    for out in ranks:
        got = out["grads"][name]
        assert set(got) == set(expected)
        for n, value in expected.items():
            torch.testing.assert_close(got[n].double(), value, **TOL, msg=f"{name}: {n}")


@pytest.mark.parametrize("name", ["global", "per_tensor", "chain"])
def test_mixed_dtensor_and_plain_gradients(ranks, name):
    expected = _expected()[name]
    for out in ranks:
        for n, value in expected.items():
            torch.testing.assert_close(out["mixed"][name][n].double(), value, **TOL, msg=n)


def test_norms_take_one_all_reduce_for_all_tensors(ranks):
    for out in ranks:
        assert out["comms"]["global"] == 1 and out["comms"]["per_tensor"] == 1
        assert out["comms"]["agc"] == 1  # the vectors' (biases') norms, all at once
        assert out["comms"]["centralize"] == 0 and out["comms"]["map"] == 0


def test_agc_clips_some_rows_and_not_others():
    # Guards the AGC case above against passing vacuously (all rows clipped or none).
    g, w = _reference_grads()
    coef = torch.cat([(AGC * _rows(w[n]).clamp_min(1e-3) / _rows(v)).reshape(-1)
                      for n, v in g.items()])
    assert (coef < 1).any() and (coef > 1).any()


def test_skip_nonfinite_agrees_on_every_rank(ranks):
    for out in ranks:
        (stepped, skipped, comms), (poisoned, poisoned_skips, _) = out["skip"]
        assert stepped and skipped == 0 and comms == 1  # the all-reduced decision
        assert not poisoned and poisoned_skips == 1  # rank 0's shard was finite


def _sgd_after_accumulation() -> dict:
    g1, w = _reference_grads(1)
    g2, _ = _reference_grads(2)
    return {n: w[n] - LR * (g1[n] + g2[n]) / 2 for n in w}


def test_accumulate_with_fsdp2_gradient_sync_off(ranks):
    expected = _sgd_after_accumulation()
    for out in ranks:
        params, taken, skipped = out["fsdp_accumulate"]
        assert (taken, skipped) == (1, 1)
        for n, value in expected.items():
            torch.testing.assert_close(params[n].double(), value, **TOL)


@pytest.mark.parametrize("label", ["no_sync first", "no_sync both"])
def test_accumulate_with_ddp_no_sync_and_process_group(ranks, label):
    expected = _sgd_after_accumulation()
    for out in ranks:
        for n, value in expected.items():
            torch.testing.assert_close(out["ddp_accumulate"][label][n].double(), value, **TOL)


def test_ddp_no_sync_without_process_group_leaves_ranks_apart(ranks):
    # Why process_group exists: the first micro-batch's gradients were never averaged.
    a, b = (out["ddp_accumulate"]["no group"] for out in ranks)
    assert any(not torch.allclose(a[n], b[n]) for n in a)


def test_shard1_placements_norms_work_rowwise_transforms_refuse(ranks):
    expected = _expected()["global"]
    for out in ranks:
        assert "Shard(dim=1)" in out["placements"][0]
        for n, value in expected.items():
            torch.testing.assert_close(out["shard1_global"][n].double(), value, **TOL)
        for key in ("shard1_centralize", "shard1_agc", "map_plain"):
            assert "FSDP2" in out[key], out[key]
