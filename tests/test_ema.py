"""EMA against its closed form, checkpoint round-trips, bit-exact swaps and DDP."""

from __future__ import annotations

import io
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kexue.train import EMA, ema_warmup


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _closed_form(history: list[dict[str, torch.Tensor]], decays: list[float]):
    """ema_t = d_t ema_{t-1} + (1 − d_t) θ_t in float64, ema_0 = θ_0."""
    ema = {k: v.double().clone() for k, v in history[0].items()}
    for theta, d in zip(history[1:], decays, strict=True):
        for k in ema:
            ema[k] = d * ema[k] + (1 - d) * theta[k].double()
    return ema


def _perturb(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("decay", [0.9, ema_warmup(0.99, power=1.0)])
def test_ema_equals_closed_form(decay):
    gen = torch.Generator().manual_seed(1)
    model = nn.Linear(5, 3)
    ema = EMA(model, decay=decay, buffers="ignore")
    history = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(25):
        _perturb(model, gen)
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update()
    decays = [decay(t) if callable(decay) else decay for t in range(1, 26)]
    expected = _closed_form(history, decays)
    got = ema.state_dict()["shadow"]
    for k in expected:
        torch.testing.assert_close(got[k].double(), expected[k], rtol=1e-6, atol=1e-6)


def test_warmup_schedule_is_running_mean_at_power_one():
    # d_t = t/(t+1) gives ema_t = mean(θ_0..θ_t): a closed form independent of the recursion.
    gen = torch.Generator().manual_seed(2)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=ema_warmup(0.999999, power=1.0))
    seen = [model.weight.detach().clone()]
    for _ in range(10):
        _perturb(model, gen)
        seen.append(model.weight.detach().clone())
        ema.update()
    torch.testing.assert_close(ema.state_dict()["shadow"]["weight"], torch.stack(seen).mean(0))


def test_update_every_and_buffers():
    gen = torch.Generator().manual_seed(3)
    model = _net()
    ema = EMA(model, decay=0.5, update_every=3)
    history = [{k: v.clone() for k, v in model.state_dict().items()}]
    model.train()
    for step in range(1, 10):
        model(torch.randn(16, 4, generator=gen))  # moves BN running statistics
        _perturb(model, gen)
        ema.update()
        if step % 3 == 0:
            history.append({k: v.clone() for k, v in model.state_dict().items()})
    assert ema.num_updates == 3 and ema.step == 9
    float_keys = [k for k, v in history[0].items() if v.is_floating_point()]
    expected = _closed_form([{k: h[k] for k in float_keys} for h in history], [0.5] * 3)
    state = ema.state_dict()
    assert "1.running_mean" in state["shadow"] and "1.running_var" in state["shadow"]
    for k in float_keys:
        torch.testing.assert_close(state["shadow"][k].double(), expected[k])
    # Integer buffers are copied as of the last average, not averaged.
    assert state["copied"]["1.num_batches_tracked"].item() == 9


def _train_steps(model, opt, ema, gen, n):
    for _ in range(n):
        x = torch.randn(8, 4, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()


def test_save_load_resume_is_bit_exact():
    torch.manual_seed(0)
    model = _net()
    ref = _net()
    ref.load_state_dict(model.state_dict())
    decay = ema_warmup(0.99)

    # 2N steps straight through.
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ema = EMA(ref, decay=decay)
    _train_steps(ref, opt, ema, torch.Generator().manual_seed(7), 12)

    # N steps, save everything, load into fresh objects, N more steps.
    opt1 = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema1 = EMA(model, decay=decay)
    gen = torch.Generator().manual_seed(7)
    _train_steps(model, opt1, ema1, gen, 6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt1.state_dict(), "ema": ema1.state_dict(),
                "gen": gen.get_state()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    model2 = _net()
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(ckpt["opt"])
    ema2 = EMA(model2, decay=decay)
    ema2.load_state_dict(ckpt["ema"])
    gen2 = torch.Generator()
    gen2.set_state(ckpt["gen"])
    _train_steps(model2, opt2, ema2, gen2, 6)

    a, b = ema.state_dict(), ema2.state_dict()
    assert a["step"] == b["step"] == 12
    for part in ("shadow", "copied"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k


def test_swap_is_bit_exact_and_shows_average():
    gen = torch.Generator().manual_seed(4)
    model = _net().eval()
    ema = EMA(model, decay=0.8)
    for _ in range(5):
        _perturb(model, gen)
        ema.update()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ptrs = [p.data_ptr() for p in model.parameters()]
    x = torch.randn(6, 4, generator=gen)
    expected = ema.averaged_model().eval()(x)
    with ema.swapped() as swapped:
        assert swapped is model
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        for name, s in ema.state_dict()["shadow"].items():
            assert torch.equal(model.state_dict()[name], s)
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [p.data_ptr() for p in model.parameters()] == ptrs

    with pytest.raises(RuntimeError), ema.swapped():
        raise RuntimeError("boom")
    for k in before:
        assert torch.equal(before[k], model.state_dict()[k]), k


def test_training_mode_forward_inside_swap_leaves_average_alone():
    model = _net()
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.state_dict()["shadow"].items()}
    with ema.swapped():
        model.train()
        model(torch.randn(8, 4))  # updates BatchNorm running statistics
    after = ema.state_dict()["shadow"]
    for k in before:
        assert torch.equal(before[k], after[k]), k


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.register_buffer("mask", torch.full((3, 3), float("-inf")).triu(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.proj(x) + self.mask).softmax(-1)


def test_nonfinite_buffers_are_copied_not_averaged():
    model = _Masked()
    ema = EMA(model, decay=0.9)
    ema.update()
    assert "mask" in ema.state_dict()["copied"]
    with ema.swapped():
        assert not torch.isnan(model(torch.randn(2, 3, 3))).any()


def test_tied_weights_and_replaced_tensors():
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    ema = EMA(model, decay=0.5)
    assert list(ema.state_dict()["shadow"]) == ["emb.weight"]
    with torch.no_grad():
        emb.weight.add_(2.0)
    ema.update()
    with ema.swapped():
        assert model["head"].weight is model["emb"].weight

    # load_state_dict(assign=True) replaces the Parameter objects: the EMA follows them.
    lin = nn.Linear(2, 2)
    ema = EMA(lin, decay=0.5)
    new = {k: torch.full_like(v, 4.0) for k, v in lin.state_dict().items()}
    lin.load_state_dict(new, assign=True)
    start = ema.shadow[0].clone()
    ema.update()
    torch.testing.assert_close(ema.shadow[0], 0.5 * start + 2.0)
    with ema.swapped():
        torch.testing.assert_close(lin.weight.detach(), 0.5 * start + 2.0)
    assert torch.equal(lin.weight.detach(), torch.full((2, 2), 4.0))

    # Replacing a later tensor is noticed by swapped(), which then swaps the new one.
    model = _net()
    ema = EMA(model, decay=0.5)
    old = ema.state_dict()["shadow"]["3.bias"].clone()
    model[3].bias = nn.Parameter(torch.full((3,), 8.0))
    with ema.swapped():
        assert torch.equal(model[3].bias.detach(), old)
    assert torch.equal(model[3].bias.detach(), torch.full((3,), 8.0))
    ema.update()  # the average now follows the new tensor
    torch.testing.assert_close(ema.state_dict()["shadow"]["3.bias"], 0.5 * old + 4.0)


def test_low_precision_model_keeps_fp32_shadow():
    gen = torch.Generator().manual_seed(5)
    model = nn.Linear(6, 4).to(torch.bfloat16)
    ema = EMA(model, decay=0.9)
    assert all(s.dtype == torch.float32 for s in ema.shadow)
    history = [{"weight": model.weight.detach().clone()}]
    for _ in range(20):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=gen).bfloat16())
        history.append({"weight": model.weight.detach().clone()})
        ema.update()
    expected = _closed_form(history, [0.9] * 20)["weight"]
    torch.testing.assert_close(ema.state_dict()["shadow"]["weight"].double(), expected,
                               rtol=1e-6, atol=1e-6)
    before = model.weight.detach().clone()
    with ema.swapped():
        assert model.weight.dtype == torch.bfloat16
        torch.testing.assert_close(model.weight.double(), expected, rtol=1e-2, atol=1e-2)
    assert torch.equal(model.weight, before)


def test_cpu_offload_argument():
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.5, device="cpu", dtype=torch.float64)
    assert all(s.dtype == torch.float64 and s.device.type == "cpu" for s in ema.shadow)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], (model.weight.double() - 0.5).detach())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": 1.0}, "decay"),
        ({"decay": 0.0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"decay": -0.1}, "decay"),
        ({"update_every": 0}, "update_every"),
        ({"buffers": "mean"}, "buffers"),
        ({"dtype": "float64"}, "dtype"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EMA(nn.Linear(2, 2), **kwargs)


def test_model_without_parameters_and_bad_state():
    with pytest.raises(ValueError, match="no floating-point parameters"):
        EMA(nn.ReLU())
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not match"):
        ema.load_state_dict(EMA(nn.Linear(2, 3, bias=False)).state_dict())
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict(EMA(nn.Linear(3, 2)).state_dict())
    bad = EMA(nn.Linear(2, 2), decay=lambda t: 1.5)
    with pytest.raises(ValueError, match="decay schedule"):
        bad.update()


# -- DDP: two gloo processes on CPU give the single-process EMA --------------------------------

def _data():
    gen = torch.Generator().manual_seed(11)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(5)]


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _ddp_worker(rank: int, world: int, out: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous needs no free port (no race with other processes for one).
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ema = EMA(model, decay=0.7)
        for x, y in _data():
            xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
            loss = (model(xs) - ys).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update()
        torch.save(ema.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = EMA(model, decay=0.7)
    for x, y in _data():
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
    expected = ema.state_dict()["shadow"]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_ddp_worker, args=(2, out), nprocs=2, join=True)
        for rank in range(2):
            got = torch.load(f"{out}/rank{rank}.pt")["shadow"]
            assert set(got) == set(expected)  # no "module." prefix
            for k in expected:
                torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6)


def test_compiled_model_is_unwrapped():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    compiled = torch.compile(model, backend="eager")
    ema = EMA(compiled, decay=0.5)
    assert list(ema.state_dict()["shadow"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = torch.randn(3, 4)
    start = model(x).detach()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    expected = ema.averaged_model()(x)
    with ema.swapped():
        torch.testing.assert_close(compiled(x), expected)
    assert not torch.allclose(compiled(x), start)


# -- the EMA follows model.double() / .to(device); state-dict errors ---------------------------

def test_shadow_follows_model_double_against_float64_closed_form():
    """Averages in float32, then model.double(): the rest is a float64 EMA, checked against the
    float64 closed form to 1e-12 (a float32 shadow would be off by ~1e-7)."""
    gen = torch.Generator().manual_seed(21)
    model = _net()
    float_keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    snap = lambda: {k: model.state_dict()[k].clone() for k in float_keys}  # noqa: E731
    # Phase 1 in float32 with d = 1/2 and steps of k/8: every value is exact in float32.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-8, 8, p.shape, generator=gen) / 8)
    model.eval()
    ema = EMA(model, decay=0.5)
    history = [snap()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randint(-8, 8, p.shape, generator=gen) / 8)
        history.append(snap())
        ema.update()
    model.double()  # parameters change dtype in place; BatchNorm buffers are replaced
    model.train()
    for _ in range(6):
        model(torch.randn(16, 4, generator=gen, dtype=torch.float64))  # BN statistics move
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        history.append(snap())
        ema.update()
    assert all(s.dtype == torch.float64 for s in ema.shadow)
    expected = _closed_form(history, [0.5] * 9)
    state = ema.state_dict()
    for k in float_keys:
        assert state["shadow"][k].dtype == torch.float64
        torch.testing.assert_close(state["shadow"][k], expected[k], rtol=1e-12, atol=1e-12)
    assert state["copied"]["1.num_batches_tracked"].item() == 6


def test_swapped_after_model_double_puts_float64_weights_in():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.double()
    with torch.no_grad():
        model.weight.add_(torch.full((2, 3), 1e-9, dtype=torch.float64))
    before = model.weight.detach().clone()
    with ema.swapped():  # no update since the conversion
        assert model.weight.dtype == torch.float64
        assert torch.equal(model.weight.detach(), start["weight"].double())
        model(torch.randn(4, 3, dtype=torch.float64))  # no dtype error
    assert torch.equal(model.weight.detach(), before)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], 0.5 * start["weight"].double() + 0.5 * before,
                               rtol=1e-15, atol=1e-15)


def test_shadow_follows_model_device_but_fixed_arguments_stay():
    # No GPU needed: the meta device stands in for another device.
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    model.to("meta")
    ema.update()
    assert all(s.device.type == "meta" for s in ema.shadow)
    # An explicit dtype is kept when the model changes dtype.
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, dtype=torch.float64)
    start = model.weight.detach().double().clone()
    model.half()
    ema.update()
    assert all(s.dtype == torch.float64 for s in ema.shadow)
    torch.testing.assert_close(ema.shadow[0], 0.5 * start + 0.5 * model.weight.double(),
                               rtol=1e-12, atol=1e-12)


def test_load_state_dict_names_missing_keys_and_leaves_ema_alone():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    state = ema.state_dict()
    before = [s.clone() for s in ema.shadow]
    bad = {"shadow": {k: v + 1 for k, v in state["shadow"].items()}, "copied": {}}
    with pytest.raises(ValueError, match=r"missing \['step', 'num_updates'\]; it must hold"):
        ema.load_state_dict(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.shadow, strict=True))
    with pytest.raises(ValueError, match=r"state\['step'\] must be an int >= 0"):
        ema.load_state_dict({**state, "step": -1})
    with pytest.raises(ValueError, match="must be a mapping"):
        ema.load_state_dict([1, 2])
    ema.load_state_dict({**state, "step": torch.tensor(4), "num_updates": 4})
    assert ema.step == 4 and ema.num_updates == 4


@pytest.mark.parametrize("kwargs", [{"power": float("inf")}, {"gamma": float("inf")},
                                    {"power": float("nan")}, {"gamma": "1"}, {"power": 0.0}])
def test_ema_warmup_needs_finite_positive_power_and_gamma(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        ema_warmup(0.99, **kwargs)


@pytest.mark.parametrize("use_buffers", [False, True])
def test_ema_is_bit_identical_to_torch_averaged_model(use_buffers):
    # torch.optim.swa_utils.AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d)) is torch's own
    # weight EMA. Aligned here: (1) its first update_parameters() copies the weights instead of
    # averaging, so it is called once on θ_0, where EMA(model) takes θ_0 at construction, and
    # from then on both average once per optimizer step; (2) the same constant decay d, which
    # both turn into the weight 1 − d of one torch._foreach_lerp_ per (device, dtype) group;
    # (3) buffers: use_buffers=False ↔ buffers="ignore", use_buffers=True ↔ buffers="average"
    # for the floating buffers (BatchNorm statistics). Not aligned: AveragedModel also "averages"
    # the int64 num_batches_tracked (ema·d + θ·(1 − d) cast back to int64), EMA copies it, so
    # that buffer is left out of the comparison.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 0.9
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=decay, buffers="average" if use_buffers else "ignore")
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                             use_buffers=use_buffers)
    averaged.update_parameters(model)  # copies θ_0
    gen = torch.Generator().manual_seed(11)
    for _ in range(30):
        loss = model(torch.randn(16, 4, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        averaged.update_parameters(model)
    assert averaged.n_averaged.item() == 31 and ema.num_updates == 30
    ours = ema.state_dict()["shadow"]
    theirs = {k: v for k, v in averaged.module.state_dict().items() if v.is_floating_point()}
    if not use_buffers:
        theirs = {k: v for k, v in theirs.items() if k in dict(model.named_parameters())}
    assert ours.keys() == theirs.keys()
    assert len(ours) == (8 if use_buffers else 6)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    # Not a vacuous match: the average is not the current weights.
    assert not torch.equal(ours["0.weight"], model[0].weight)


def test_swapped_inside_an_autocast_region_uses_the_average():
    # Autocast caches each weight's bf16 copy for the whole region (keyed by the parameter):
    # without clearing it, the swapped-in average would be scored with the training weights.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the training weights now differ from the average
    averaged = ema.averaged_model()
    x = torch.randn(4, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw_before = model(x)  # fills the cache with the training weights' copies
        with ema.swapped():
            inside = model(x)
        raw_after = model(x)
        want = averaged(x)
    assert torch.equal(inside, want)
    assert torch.equal(raw_after, raw_before)
    assert not torch.equal(inside, raw_before)
