"""EMA under FSDP2 (``fully_shard``, gloo, 2 processes) and DDP, against one process.

One process group runs every check (the module-scoped fixture); each test compares what the
ranks returned with a single-process run written in plain torch: the same model, SGD on both
ranks' batches concatenated (the same mean loss), and the average taken by hand with
``torch.lerp``.

Tolerances: the EMA arithmetic itself is elementwise, so the gathered shadow is bit-equal
to the average of the gathered weights. The weights differ from the single-process ones by
the order of the gradient sums (a reduce-scatter or all-reduce of the ranks' half-batch
means against one mean over the whole batch), about 1e-8 here: compared with atol 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _dist import run
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

from kexue.train import EMA

DECAY = 0.7
LR = 0.1
TOL = dict(rtol=0.0, atol=1e-6)


def _model() -> nn.Module:
    # Rows 7, 3 and 1 split unevenly over 2 ranks (4 + 3, 2 + 1, 1 + 0: rank 1 holds empty
    # shards of the last layer).
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(11)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen))
            for _ in range(6)]


PROBE = torch.linspace(-1, 1, 12).reshape(3, 4)


def _shard(model: nn.Module) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def _train(model: nn.Module, rank: int, world: int, emas: list[EMA], after_step=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in _data():
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        loss = (model(xs) - ys).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for ema in emas:
            ema.update()
        if after_step is not None:
            after_step()


def _plain(state: dict) -> dict:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def _worker(rank: int, world: int, scratch: str) -> dict:
    out: dict = {}
    # -- FSDP2 ---------------------------------------------------------------------------
    model = _model()
    early = EMA(model, decay=DECAY)  # made before sharding: it must follow fully_shard
    model = _shard(model)
    ema = EMA(model, decay=DECAY)
    comms = []
    weights = []

    def record() -> None:
        weights.append({n: p.full_tensor() for n, p in model.named_parameters()})

    update = ema.update

    def counted_update() -> None:
        with CommDebugMode() as mode:
            update()
        comms.append(mode.get_total_counts())

    ema.update = counted_update
    _train(model, rank, world, [ema, early], after_step=record)
    del ema.update
    out["comms_per_update"] = comms
    out["weights"] = weights
    out["shadow_kinds"] = [(type(s).__name__, tuple(s.shape)) for s in ema.shadow]
    out["local_shapes"] = [tuple(p.to_local().shape) for p in model.parameters()]
    out["full"] = ema.state_dict(full=True)
    out["early_full"] = early.state_dict(full=True)
    sharded = ema.state_dict()
    out["sharded_types"] = {k: type(v).__name__ for k, v in sharded["shadow"].items()}

    training = [p.to_local().clone() for p in model.parameters()]
    with ema.swapped():
        out["swapped_out"] = model(PROBE).detach()
    out["restored"] = all(torch.equal(a, p.to_local())
                          for a, p in zip(training, model.parameters(), strict=True))
    out["after_out"] = model(PROBE).detach()

    dcp.save(sharded, checkpoint_id=f"{scratch}/ema")
    fresh = EMA(model, decay=0.5)
    target = fresh.state_dict()
    dcp.load(target, checkpoint_id=f"{scratch}/ema")
    fresh.load_state_dict(target)
    out["dcp_equal"] = (fresh.step == ema.step and fresh.num_updates == ema.num_updates
                        and all(torch.equal(a, b)
                                for a, b in zip(fresh.shadow, ema.shadow, strict=True)))
    from_full = EMA(model, decay=0.5)
    from_full.load_state_dict(out["full"])  # whole tensors: each rank keeps its shard
    out["full_load_equal"] = all(torch.equal(a, b) for a, b in
                                 zip(from_full.shadow, ema.shadow, strict=True))
    plain = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(),
                          nn.Linear(3, 1))
    ema.copy_to(plain)  # gathers: every rank calls
    out["copy_to_plain"] = {k: v.clone() for k, v in plain.state_dict().items()}
    try:
        ema.averaged_model()
    except ValueError as e:
        out["averaged_model_error"] = str(e)

    # -- DDP -----------------------------------------------------------------------------
    ddp = nn.parallel.DistributedDataParallel(_model())
    ddp_ema = EMA(ddp, decay=DECAY)
    _train(ddp, rank, world, [ddp_ema])
    out["ddp"] = _plain(ddp_ema.state_dict()["shadow"])
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run(_worker)


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, both ranks' batches at once: weights after each step and the EMA by hand."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    shadow = {n: p.detach().clone() for n, p in model.named_parameters()}
    for x, y in _data():
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for n, p in model.named_parameters():
            shadow[n] = torch.lerp(shadow[n], p.detach(), 1 - DECAY)
    return {"shadow": shadow, "model": model}


def _forward(params: dict, x: torch.Tensor) -> torch.Tensor:
    model = _model()
    model.load_state_dict(params)
    with torch.no_grad():
        return model(x)


def test_shadow_is_shard_local_and_updates_communicate_nothing(ranks):
    for out in ranks:
        assert out["comms_per_update"] == [0] * len(_data())
        assert [kind for kind, _ in out["shadow_kinds"]] == ["Tensor"] * 6
        assert [shape for _, shape in out["shadow_kinds"]] == out["local_shapes"]
    assert ranks[0]["local_shapes"][0] == (4, 4) and ranks[1]["local_shapes"][0] == (3, 4)
    assert ranks[1]["local_shapes"][4] == (0, 3)  # an empty shard takes part too


def test_gathered_ema_is_the_average_of_the_gathered_weights_bit_for_bit(ranks):
    weights = ranks[0]["weights"]
    expected = {n: _model().state_dict()[n] for n in weights[0]}
    for step in weights:
        expected = {n: torch.lerp(expected[n], step[n], 1 - DECAY) for n in expected}
    for out in ranks:
        assert out["full"]["step"] == out["full"]["num_updates"] == len(weights)
        for n, value in expected.items():
            assert torch.equal(out["full"]["shadow"][n], value), n


def test_gathered_ema_equals_the_single_process_ema(ranks, reference):
    for out in ranks:
        assert set(out["full"]["shadow"]) == set(reference["shadow"])
        for n, value in reference["shadow"].items():
            torch.testing.assert_close(out["full"]["shadow"][n], value, **TOL)


def test_ema_made_before_fully_shard_follows_the_sharding(ranks):
    for out in ranks:
        for n, value in out["full"]["shadow"].items():
            assert torch.equal(out["early_full"]["shadow"][n], value), n


def test_swapped_evaluates_the_average_and_restores_the_shards(ranks, reference):
    expected = _forward(reference["shadow"], PROBE)
    for out in ranks:
        torch.testing.assert_close(out["swapped_out"], expected, **TOL)
        assert out["restored"]
        # after the block the model computes with its training weights again
        torch.testing.assert_close(out["after_out"],
                                   _forward(ranks[0]["weights"][-1], PROBE), **TOL)


def test_state_dict_forms_and_distributed_checkpoint(ranks):
    for out in ranks:
        assert set(out["sharded_types"].values()) == {"DTensor"}
        assert out["dcp_equal"] and out["full_load_equal"]
        for n, value in out["full"]["shadow"].items():
            assert torch.equal(out["copy_to_plain"][n], value)
        assert "FSDP2" in out["averaged_model_error"]


def test_ddp_every_rank_equals_the_single_process_ema(ranks, reference):
    for out in ranks:
        assert set(out["ddp"]) == set(reference["shadow"])  # no "module." prefix
        for n, value in reference["shadow"].items():
            torch.testing.assert_close(out["ddp"][n], value, **TOL)


# -- CUDA: FSDP2 with NCCL on one GPU, against a float64 CPU reference --------------------------


def _one_gpu(rank: int, world: int, scratch: str, device: str = "cuda") -> dict:
    from kexue.train import apply_transform, clip_by_global_norm

    model = _shard(_model().to(device))
    ema = EMA(model, decay=DECAY)
    _train(model, rank, world, [ema])
    out = {"shadow": {k: v.cpu() for k, v in ema.state_dict(full=True)["shadow"].items()}}
    with ema.swapped():
        out["swapped_out"] = model(PROBE.to(device)).detach().cpu()
    x, y = _data()[0]
    model.zero_grad()
    (model(x.to(device)) - y.to(device)).pow(2).mean().backward()
    params = list(model.parameters())
    apply_transform(params, clip_by_global_norm(0.1), None)
    out["clipped"] = {n: p.grad.full_tensor().cpu() for n, p in model.named_parameters()}
    return out


@pytest.mark.gpu
def test_fsdp2_nccl_one_gpu_against_float64_cpu():
    import functools

    got = run(functools.partial(_one_gpu, device="cuda"), world=1, backend="nccl",
              start_method="spawn")[0]
    model = _model().double()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    shadow = {n: p.detach().clone() for n, p in model.named_parameters()}
    for x, y in _data():
        opt.zero_grad()
        (model(x.double()) - y.double()).pow(2).mean().backward()
        opt.step()
        shadow = {n: torch.lerp(shadow[n], p.detach(), 1 - DECAY)
                  for n, p in model.named_parameters()}
    for n, value in shadow.items():
        torch.testing.assert_close(got["shadow"][n].double(), value, rtol=0.0, atol=1e-5)
    ema_model = _model().double()
    ema_model.load_state_dict(shadow)
    with torch.no_grad():
        torch.testing.assert_close(got["swapped_out"].double(), ema_model(PROBE.double()),
                                   rtol=0.0, atol=1e-5)
    x, y = _data()[0]
    model.zero_grad()
    (model(x.double()) - y.double()).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    assert norm > 0.1  # the clip is active
    for n, g in grads.items():
        torch.testing.assert_close(got["clipped"][n].double(), g * 0.1 / (norm + 1e-6),
                                   rtol=0.0, atol=1e-6)
