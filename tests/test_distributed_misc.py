"""param_groups, regularized gradients and ShardedIterable with 2 gloo processes, vs one process.

One process group runs every check (the module-scoped fixture); the tests compare the ranks'
results with one process that sees both ranks' batches concatenated (the same mean loss),
written in plain torch:

- ``param_groups`` on a ``fully_shard`` model gives the grouping written out by hand (and
  the unsharded model's), and AdamW over those groups trains the sharded model like plain
  torch AdamW with hand-made groups (atol 1e-6: FSDP2 sums gradients in another order).
- ``regularized_backward`` / ``minibatch_regularized_backward`` / ``midpoint_backward`` with
  ``process_group`` on DDP-style replicas (float64) equal each backend's formula evaluated by
  hand on the whole batch (atol 1e-10); FSDP2 parameters are refused with an error naming it.
- ``ShardedIterable`` without rank arguments inside the process group, read through
  ``DataLoader(num_workers=2, persistent_workers=True)``: every example once per epoch, the
  epochs advance, rank r gets positions r, r + 2, ... of the one-process order.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from _dist import run
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader

from kexue.train import (
    ShardedIterable,
    midpoint_backward,
    minibatch_regularized_backward,
    param_groups,
    regularized_backward,
)

LR, DECAY, WD = 0.01, 0.5, 0.1
LAM, EPS, H = 0.05, 1e-4, 0.2
N = 24


# -- models and data ---------------------------------------------------------------------------


class Net(nn.Module):
    """embed (depth 0), blocks.0 (1), blocks.1 (2), then norm and head (depth 3 = L)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = torch.tanh(block(h))
        return self.head(self.norm(h))


# lr multiplier and weight decay of every parameter, worked out by hand from
# lr_scale = DECAY^(L - depth) · multiplier (head.* × 2) and no decay for ndim ≤ 1.
HAND = {
    "embed.weight": (0.125, WD),
    "blocks.0.weight": (0.25, WD), "blocks.0.bias": (0.25, 0.0),
    "blocks.1.weight": (0.5, WD), "blocks.1.bias": (0.5, 0.0),
    "norm.weight": (1.0, 0.0), "norm.bias": (1.0, 0.0),
    "head.weight": (2.0, WD), "head.bias": (2.0, 0.0),
}


def _groups(model: nn.Module) -> list[dict]:
    return param_groups(model, LR, weight_decay=WD, multipliers={"head.*": 2.0},
                        layer_decay=DECAY)


def _summary(groups: list[dict]) -> list[tuple]:
    return [(tuple(g["names"]), g["lr"], g["lr_scale"], g["weight_decay"]) for g in groups]


def _tokens(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (8, 5), generator=gen), torch.randn(8, 5, 3, generator=gen)


def _net_loss(model: nn.Module, batch, rank: int | None = None, world: int = 1) -> torch.Tensor:
    x, y = batch
    if rank is not None:
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    return (model(x) - y).pow(2).mean()


def _mlp() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _regression(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(8, 3, generator=gen, dtype=torch.float64),
            torch.randn(8, 2, generator=gen, dtype=torch.float64))


def _mlp_closure(model: nn.Module, batch, rank: int | None = None, world: int = 1):
    x, y = batch
    if rank is not None:
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    return lambda: (model(x) - y).pow(2).mean()


def _example(i: int, generator: torch.Generator) -> tuple[int, torch.Tensor, int]:
    return i, torch.rand(2, generator=generator), os.getpid()


# -- the 2-process run ---------------------------------------------------------------------------


def _worker(rank: int, world: int, scratch: str) -> dict:
    out: dict = {}
    # param_groups on fully_shard, then two AdamW steps over its groups.
    model = Net()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    groups = _groups(model)
    out["groups"] = _summary(groups)
    out["params_are_the_sharded_ones"] = (
        {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()})
    opt = torch.optim.AdamW(groups, lr=LR)
    for seed in (1, 2):
        opt.zero_grad()
        _net_loss(model, _tokens(seed), rank, world).backward()
        opt.step()
    out["adamw"] = {n: p.detach().full_tensor() for n, p in model.named_parameters()}

    # regularised gradients on replicas, averaged over the group.
    group = dist.group.WORLD
    out["regularized"] = {}
    for backend in ("double_backprop", "finite_difference", "extra_gradient"):
        net = _mlp()
        step = regularized_backward(_mlp_closure(net, _regression(0), rank, world),
                                    net.parameters(), LAM, backend=backend,
                                    eps=EPS if backend == "finite_difference" else None,
                                    process_group=group)
        out["regularized"][backend] = ([p.grad.clone() for p in net.parameters()],
                                       step.loss, step.grad_sq_norm)
    net = _mlp()
    closures = [_mlp_closure(net, _regression(seed), rank, world) for seed in (1, 2)]
    step = minibatch_regularized_backward(closures, net.parameters(), LAM, process_group=group)
    out["minibatch"] = ([p.grad.clone() for p in net.parameters()], step.variance)
    net = _mlp()
    midpoint_backward(_mlp_closure(net, _regression(0), rank, world), net.parameters(), H,
                      process_group=group)
    out["midpoint"] = [p.grad.clone() for p in net.parameters()]
    try:
        regularized_backward(lambda: _net_loss(model, _tokens(1), rank, world),
                             model.parameters(), LAM)
    except ValueError as e:
        out["fsdp2_refused"] = str(e)

    # ShardedIterable: rank and world from the process group, persistent workers.
    ds = ShardedIterable(list(range(N)), transform=_example, shuffle=True, seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                        multiprocessing_context="fork")
    out["epochs"] = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        out["epochs"].append([(i, x, pid) for i, x, pid in loader])
    out["len"] = len(ds)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run(_worker)


# -- param_groups ------------------------------------------------------------------------------


def test_param_groups_on_fully_shard_equal_the_hand_grouping_and_the_unsharded_one(ranks):
    unsharded = _summary(_groups(Net()))
    for out in ranks:
        assert out["groups"] == unsharded
        assert out["params_are_the_sharded_ones"]
        got = {n: (scale, wd) for names, _, scale, wd in out["groups"] for n in names}
        assert got == pytest.approx(HAND)


def test_adamw_over_the_groups_trains_like_plain_torch(ranks):
    model = Net()
    named = dict(model.named_parameters())
    by_kind: dict[tuple[float, float], list] = {}
    for n, (scale, wd) in HAND.items():
        by_kind.setdefault((scale, wd), []).append(named[n])
    opt = torch.optim.AdamW([{"params": ps, "lr": LR * scale, "weight_decay": wd}
                             for (scale, wd), ps in by_kind.items()])
    for seed in (1, 2):
        opt.zero_grad()
        _net_loss(model, _tokens(seed)).backward()
        opt.step()
    for out in ranks:
        for n, p in named.items():
            torch.testing.assert_close(out["adamw"][n], p.detach(), rtol=0.0, atol=1e-6)


# -- regularised gradients -----------------------------------------------------------------------


def _grads(model: nn.Module, batch, create_graph: bool = False) -> list[torch.Tensor]:
    loss = _mlp_closure(model, batch)()
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))


def _at(shift: list[torch.Tensor], alpha: float, batch) -> list[torch.Tensor]:
    """∇L at θ + α·shift on the whole batch (a fresh model, θ its initial weights)."""
    model = _mlp()
    with torch.no_grad():
        for p, d in zip(model.parameters(), shift, strict=True):
            p.add_(alpha * d)
    return _grads(model, batch)


def _penalised(batch) -> list[torch.Tensor]:
    """∇(L + λ‖∇L‖²) by double backprop on the whole batch."""
    model = _mlp()
    params = list(model.parameters())
    loss = _mlp_closure(model, batch)()
    g = torch.autograd.grad(loss, params, create_graph=True)
    return list(torch.autograd.grad(loss + LAM * sum(v.pow(2).sum() for v in g), params))


def _expected_regularized() -> dict:
    batch = _regression(0)
    g = _grads(_mlp(), batch)
    norm = torch.sqrt(sum(v.pow(2).sum() for v in g))
    v = [t / norm for t in g]
    plus, minus = _at(v, EPS, batch), _at(v, -EPS, batch)
    loss = _mlp_closure(_mlp(), batch)().detach()
    return {
        "double_backprop": _penalised(batch),
        "finite_difference": [a + LAM * norm * (p - m) / EPS
                              for a, p, m in zip(g, plus, minus, strict=True)],
        "extra_gradient": _at(g, 2 * LAM, batch),
        "loss": loss, "sq_norm": norm**2,
    }


TIGHT = dict(rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("backend", ["double_backprop", "finite_difference", "extra_gradient"])
def test_regularized_backward_with_process_group_equals_the_whole_batch(ranks, backend):
    expected = _expected_regularized()
    for out in ranks:
        grads, loss, sq_norm = out["regularized"][backend]
        for a, b in zip(grads, expected[backend], strict=True):
            torch.testing.assert_close(a, b, **TIGHT)
        torch.testing.assert_close(loss, expected["loss"], **TIGHT)
        torch.testing.assert_close(sq_norm, expected["sq_norm"], **TIGHT)


def test_minibatch_and_midpoint_with_process_group(ranks):
    per_batch = [_penalised(_regression(seed)) for seed in (1, 2)]
    mean = [(a + b) / 2 for a, b in zip(*per_batch, strict=True)]
    g = [_grads(_mlp(), _regression(seed)) for seed in (1, 2)]
    full = [(a + b) / 2 for a, b in zip(*g, strict=True)]
    variance = sum(sum((gk - f).pow(2).sum() for gk, f in zip(gs, full, strict=True))
                   for gs in g) / 2
    g0 = _grads(_mlp(), _regression(0))
    midpoint = _at(g0, -H / 2, _regression(0))
    for out in ranks:
        grads, var = out["minibatch"]
        for a, b in zip(grads, mean, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)
        torch.testing.assert_close(var, variance, **TIGHT)
        for a, b in zip(out["midpoint"], midpoint, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)


def test_regularized_backward_refuses_fsdp2(ranks):
    for out in ranks:
        assert "FSDP2" in out["fsdp2_refused"]


# -- ShardedIterable ---------------------------------------------------------------------------


def _single_process_epoch(epoch: int) -> list[int]:
    ds = ShardedIterable(list(range(N)), shuffle=True, seed=3, rank=0, world_size=1)
    ds.set_epoch(epoch)
    return list(ds)


def test_sharded_iterable_takes_the_process_group_and_advances_epochs(ranks):
    orders = []
    for epoch in range(2):
        order = _single_process_epoch(epoch)
        orders.append(order)
        got = [[i for i, _, _ in out["epochs"][epoch]] for out in ranks]
        assert sorted(got[0] + got[1]) == list(range(N))  # every example exactly once
        for rank in range(2):
            assert got[rank] == order[rank::2]  # DistributedSampler's split, in order
    assert orders[0] != orders[1]  # the epoch reached the persistent workers
    for out in ranks:
        assert out["len"] == N // 2
        pids = [{pid for _, _, pid in epoch} for epoch in out["epochs"]]
        assert pids[0] == pids[1] and len(pids[0]) == 2  # the same two workers both epochs


def test_sharded_iterable_randomness_belongs_to_the_example(ranks):
    for epoch in range(2):
        ds = ShardedIterable(list(range(N)), transform=_example, shuffle=True, seed=3,
                             rank=0, world_size=1)
        ds.set_epoch(epoch)
        expected = {i: x for i, x, _ in ds}
        for out in ranks:
            for i, x, _ in out["epochs"][epoch]:
                assert torch.equal(x, expected[i])


def test_regularizers_check_process_group():
    net = _mlp()
    for fn, args in ((regularized_backward, (LAM,)), (midpoint_backward, (H,))):
        with pytest.raises(ValueError, match="process_group must be a torch.distributed"):
            fn(_mlp_closure(net, _regression(0)), net.parameters(), *args, process_group=0)
    with pytest.raises(ValueError, match="process_group must be a torch.distributed"):
        minibatch_regularized_backward([_mlp_closure(net, _regression(0))], net.parameters(),
                                       LAM, process_group="WORLD")
