"""route(): one optimizer object over several, bit-equal to the optimizers built by hand."""

from __future__ import annotations

import copy
import io
import math
import pickle
import re

import pytest
import torch
from torch import nn

from kexue.train import (
    RoutedOptimizer,
    clip_by_global_norm,
    param_groups,
    route,
    skip_nonfinite,
    with_transforms,
)

MUON = {"lr": 0.05, "weight_decay": 0.01}
ADAMW = {"lr": 1e-2, "weight_decay": 0.1}


def _muon(groups):
    return torch.optim.Muon(groups, **MUON)


def _adamw(groups):
    return torch.optim.AdamW(groups, **ADAMW)


ROUTES = [(2, _muon), ("*", _adamw)]


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 16),
                         nn.GELU(), nn.Linear(16, 2))


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 2, generator=gen)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    return (model(x) - y).pow(2).mean()


def _backward(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    opt.zero_grad()
    _loss(model, step).backward()


def _hand_built(model: nn.Module):
    """What users write today: Muon for the 2-D weights, AdamW for the rest, two schedulers."""
    mats = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    return torch.optim.Muon(mats, **MUON), torch.optim.AdamW(rest, **ADAMW)


def _step_both(ref: nn.Module, hand_built: tuple[torch.optim.Optimizer, ...],
               model: nn.Module, opt: torch.optim.Optimizer, t: int) -> None:
    """Step t of the hand-built optimizers on ``ref`` and of the routed one on ``model``."""
    for o in hand_built:
        o.zero_grad()
    _loss(ref, t).backward()
    for o in hand_built:
        o.step()
    _backward(model, opt, t)
    opt.step()


def test_route_is_bit_equal_to_muon_plus_adamw_with_scheduler_and_resume():
    steps, cut = 20, 10
    ref = _net(0)
    muon, adamw = _hand_built(ref)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps) for o in (muon, adamw)]
    expected = []
    for t in range(steps):
        muon.zero_grad()
        adamw.zero_grad()
        _loss(ref, t).backward()
        muon.step()
        adamw.step()
        for s in scheds:
            s.step()
        expected.append(([p.detach().clone() for p in ref.parameters()],
                         [muon.param_groups[0]["lr"], adamw.param_groups[0]["lr"]]))

    model = _net(0)
    opt = route(model, ROUTES)
    assert isinstance(opt, RoutedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    assert [type(o) for o in opt.optimizers] == [torch.optim.Muon, torch.optim.AdamW]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for t in range(steps):
        if t == cut:  # save, and go on with a fresh model, optimizer and scheduler
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict()}, buf)
            buf.seek(0)
            ckpt = torch.load(buf)
            model = _net(1)
            assert not torch.equal(model[0].weight, expected[cut - 1][0][0])
            model.load_state_dict(ckpt["model"])
            opt = route(model, ROUTES)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
        _backward(model, opt, t)
        opt.step()
        sched.step()
        params, lrs = expected[t]
        assert [g["lr"] for g in opt.param_groups] == lrs, t
        for (name, p), q in zip(model.named_parameters(), params, strict=True):
            assert torch.equal(p, q), (t, name)
    assert opt.optimizers[1].state[model[0].bias]["step"].item() == steps
    assert lrs[0] < 1e-3 * MUON["lr"]  # the cosine reached both children


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Linear(6, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16))
                                    for _ in range(2))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


def test_param_groups_are_split_by_the_rules_layer_decay_and_muon():
    # depth: embed 0, layers.0 1, layers.1 2, head L = 3; lr = base · 0.5^(3 − depth).
    depth = {"embed": 0, "layers.0": 1, "layers.1": 2, "head": 3}
    muon_lr, adamw_lr = 0.05, 1e-2

    def lr_of(name, base):
        return base * 0.5 ** (3 - next(d for k, d in depth.items() if name.startswith(k)))

    ref = _Blocks()
    named = list(ref.named_parameters())
    muon = torch.optim.Muon([{"params": [p], "lr": lr_of(n, muon_lr), "weight_decay": 0.1}
                             for n, p in named if p.ndim == 2])
    adamw = torch.optim.AdamW([{"params": [p], "lr": lr_of(n, adamw_lr), "weight_decay": 0.0}
                               for n, p in named if p.ndim != 2])

    model = _Blocks()
    groups = param_groups(model, adamw_lr, weight_decay=0.1, layer_decay=0.5)
    opt = route(model, [
        (2, lambda gs: torch.optim.Muon([{**g, "lr": muon_lr * g["lr_scale"]} for g in gs])),
        ("*", lambda gs: torch.optim.AdamW(gs)),
    ], groups=groups)
    lrs = {n: g["lr"] for o in opt.optimizers for g in o.param_groups for n in g["names"]}
    assert lrs == {n: lr_of(n, muon_lr if p.ndim == 2 else adamw_lr) for n, p in named}
    assert all(g["weight_decay"] == (0.1 if isinstance(o, torch.optim.Muon) else 0.0)
               for o in opt.optimizers for g in o.param_groups)
    for t in range(5):
        _step_both(ref, (muon, adamw), model, opt, t)
        for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            assert torch.equal(p, q), (t, n)


def test_rules_first_match_wins_for_each_kind_of_rule():
    model = _Blocks()
    sgd = [lambda gs: torch.optim.SGD(gs, lr=0.1) for _ in range(4)]
    opt = route(model, [
        (re.compile(r"^head\."), sgd[0]),
        (lambda name, p: p.ndim == 2 and p.shape[0] == p.shape[1], sgd[1]),  # square matrices
        ("*.bias", sgd[2]),
        ("*", sgd[3]),
    ])
    names = [[n for g in o.param_groups for n in g["names"]] for o in opt.optimizers]
    assert names == [
        ["head.weight", "head.bias"],
        ["layers.0.1.weight", "layers.1.1.weight"],
        ["embed.bias", "layers.0.0.bias", "layers.0.1.bias", "layers.1.0.bias",
         "layers.1.1.bias"],
        ["embed.weight", "layers.0.0.weight", "layers.1.0.weight"],
    ]
    assert opt.labels[0] == "re.compile('^head\\\\.')" and opt.labels[2] == "'*.bias'"
    text = repr(opt)
    assert "route 1: test_rules_first_match_wins_for_each_kind_of_rule.<locals>.<lambda>" in text
    assert "-> SGD (5 tensors)" in text


def test_param_groups_state_and_hooks_are_shared_with_the_children():
    model = _net(0)
    opt = route(model, ROUTES)
    muon, adamw = opt.optimizers
    assert opt.param_groups[0] is muon.param_groups[0]
    assert opt.param_groups[1] is adamw.param_groups[0]
    opt.param_groups[1]["lr"] = 0.5  # what a scheduler does
    assert adamw.param_groups[0]["lr"] == 0.5
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    muon.register_step_pre_hook(lambda *a: calls.append("muon"))
    adamw.register_step_pre_hook(lambda *a: calls.append("adamw"))
    for t in range(2):
        _backward(model, opt, t)
        opt.step()
    assert calls == ["pre", "muon", "adamw", "post"] * 2
    # state: a view of the children's per-parameter state, writes included
    assert len(opt.state) == 8
    assert opt.state[model[0].weight] is muon.state[model[0].weight]
    opt.state[model[0].bias]["exp_avg"] = torch.zeros(16)
    assert torch.equal(adamw.state[model[0].bias]["exp_avg"], torch.zeros(16))
    with pytest.raises(KeyError):
        opt.state[torch.zeros(1)]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_with_transforms_on_the_routed_optimizer_clips_by_the_norm_of_all_routes():
    max_norm = 0.05
    ref = _net(0)
    muon, adamw = _hand_built(ref)
    model = _net(0)
    opt = route(model, ROUTES)
    handle = with_transforms(opt, clip_by_global_norm(max_norm, eps=0.0))
    for t in range(5):
        for o in (muon, adamw):
            o.zero_grad()
        _loss(ref, t).backward()
        # The hand-transformed reference: one global norm over both optimizers, in float64.
        grads = [p.grad for p in ref.parameters()]
        total = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))
        assert total > 2 * max_norm  # the clip is active
        for g in grads:
            g.copy_(g.double() * min(1.0, max_norm / total))
        muon.step()
        adamw.step()

        _backward(model, opt, t)
        opt.step()
        clipped = torch.cat([p.grad.double().flatten() for p in model.parameters()])
        torch.testing.assert_close(clipped.norm().item(), max_norm, rtol=1e-6, atol=0)
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert handle.steps_taken == 5 and handle.steps_skipped == 0


def test_with_transforms_skip_and_closure_on_the_routed_optimizer():
    model = _net(0)
    opt = route(model, ROUTES)
    handle = with_transforms(opt, skip_nonfinite())
    evaluations = []

    def closure(t):
        def run():
            evaluations.append(t)
            opt.zero_grad()
            loss = _loss(model, t)
            loss.backward()
            if t == 1:
                model[0].bias.grad[0] = float("nan")  # one route's gradient: both must skip
            return loss
        return run

    ref = _net(0)
    ref_opt = route(ref, ROUTES)
    losses = [opt.step(closure(t)) for t in range(3)]
    assert evaluations == [0, 1, 2]
    assert handle.steps_taken == 2 and handle.steps_skipped == 1
    assert opt.optimizers[1].state[model[0].bias]["step"].item() == 2
    # Equal to the same run without step 1 and without closures.
    for t in (0, 2):
        _backward(ref, ref_opt, t)
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(losses[0], _loss(_net(0), 0))


def test_add_param_group_routes_the_new_parameters():
    model = _net(0)
    model[5].requires_grad_(False)  # the head joins later
    opt = route(model, ROUTES)
    handle = with_transforms(opt, clip_by_global_norm(1e9))
    ref = _net(0)
    ref_muon = torch.optim.Muon([ref[0].weight, ref[3].weight], **MUON)
    ref_adamw = torch.optim.AdamW([ref[0].bias, ref[1].weight, ref[1].bias, ref[3].bias],
                                  **ADAMW)
    for t in range(4):
        if t == 2:
            model[5].requires_grad_(True)
            opt.add_param_group({"params": model[5].parameters(), "lr": 1e-3})
            ref_muon.add_param_group({"params": [ref[5].weight], "lr": 1e-3})
            ref_adamw.add_param_group({"params": [ref[5].bias], "lr": 1e-3})
        for o in (ref_muon, ref_adamw):
            o.zero_grad()
        _loss(ref, t).backward()
        ref_muon.step()
        ref_adamw.step()
        _backward(model, opt, t)
        opt.step()
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            assert torch.equal(p, q), t
    assert [g["names"] for g in opt.param_groups[2:]] == [["5.weight"], ["5.bias"]]
    assert opt.param_groups[2] is opt.optimizers[0].param_groups[1]
    assert handle.steps_taken == 4 and len(handle.params) == 8

    with pytest.raises(ValueError, match=r"'5.bias' is already optimized by route 1 \('\*'\)"):
        opt.add_param_group({"params": [model[5].bias]})
    with pytest.raises(ValueError, match="must be a tensor of the routed model"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    opt.optimizers[0].add_param_group({"params": [nn.Parameter(torch.zeros(2, 2))]})
    with pytest.raises(ValueError, match=r"route 0 \(ndim == 2\)'s optimizer gained a param"):
        opt.step()


def test_route_errors_name_the_rule_or_parameter():
    model = _net(0)
    with pytest.raises(ValueError, match=r"match no rule: \['0.bias \(16,\)'"):
        route(model, [(2, _muon)])
    with pytest.raises(ValueError, match=r"routes\[1\] rule ndim == 2 gets no parameter"):
        route(model, [("*", _adamw), (2, _muon)])
    with pytest.raises(ValueError, match=r"routes\[0\] rule must be a name glob.*got 2.5"):
        route(model, [(2.5, _adamw)])
    with pytest.raises(ValueError, match=r"routes\[0\] rule must be .*got True"):
        route(model, [(True, _adamw)])
    with pytest.raises(ValueError, match=r"routes\[0\] rule \(an ndim\) must be an int >= 0"):
        route(model, [(-1, _adamw)])
    with pytest.raises(ValueError, match="non-empty list of"):
        route(model, [])
    with pytest.raises(ValueError, match=r"routes\[0\] must be a \(rule, optimizer_factory\)"):
        route(model, [("*",)])
    with pytest.raises(ValueError, match="optimizer_factory must be a function"):
        route(model, [("*", "adamw")])
    with pytest.raises(ValueError, match=r"routes\[0\] \('\*'\) optimizer_factory must return"):
        route(model, [("*", lambda gs: None)])
    with pytest.raises(ValueError, match=r"over 8 tensors, not over the 3 it was given"):
        route(model, [(2, lambda gs: torch.optim.SGD(model.parameters(), lr=0.1)),
                      ("*", _adamw)])
    with pytest.raises(ValueError, match="returned LBFGS, which re-evaluates the closure"):
        route(model, [("*", lambda gs: torch.optim.LBFGS(gs[0]["params"]))])
    with pytest.raises(ValueError, match=r"groups\[0\] holds a tensor of shape \(2,\)"):
        route(model, ROUTES, groups=[{"params": [nn.Parameter(torch.zeros(2))]}])
    with pytest.raises(ValueError, match=r"groups\[1\] repeats parameter '0.bias'"):
        route(model, ROUTES, groups=[{"params": [model[0].bias]}, {"params": [model[0].bias]}])
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        route([model[0].weight], ROUTES)


def test_load_state_dict_checks_everything_before_loading():
    model = _net(0)
    opt = route(model, ROUTES)
    for t in range(2):
        _backward(model, opt, t)
        opt.step()
    before = opt.state_dict()
    muon_mom = opt.optimizers[0].state[model[0].weight]["momentum_buffer"].clone()
    cases = [
        (before["optimizers"][1], "one optimizer's state dict"),
        ({**before, "routes": before["routes"] * 2, "optimizers": before["optimizers"] * 2},
         r"holds 4 routes .* this optimizer has 2"),
        ({**before, "routes": [{**before["routes"][0], "optimizer": "SGD"},
                               before["routes"][1]]},
         r"route 0 \(ndim == 2\) was saved from a SGD optimizer, this one is Muon"),
    ]
    fresh = _net(0)
    glob = route(fresh, [("[035].weight", _muon), ("*", _adamw)])
    assert glob.state_dict()["routes"][0]["names"] == before["routes"][0]["names"]
    moved = route(fresh, [(re.compile(r"^0\.weight$"), _muon), ("*", _adamw)])
    with pytest.raises(ValueError, match=r"route 0 .* was saved for other parameters: 3 saved, "
                                         r"1 here; the first difference is at position 1"):
        moved.load_state_dict(before)
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(bad)
    assert torch.equal(opt.optimizers[0].state[model[0].weight]["momentum_buffer"], muon_mom)
    glob.load_state_dict(before)  # same names and classes: loads
    assert torch.equal(glob.optimizers[0].state[fresh[0].weight]["momentum_buffer"], muon_mom)
    assert glob.param_groups[0] is glob.optimizers[0].param_groups[0]


@pytest.mark.gpu
def test_route_on_cuda_with_fused_adamw_is_bit_equal_to_hand_built():
    # Same kernels in the same order on the same device: routing adds no arithmetic.
    ref, model = _net(0).cuda(), _net(0).cuda()
    muon = torch.optim.Muon([p for p in ref.parameters() if p.ndim == 2], **MUON)
    adamw = torch.optim.AdamW([p for p in ref.parameters() if p.ndim != 2], fused=True, **ADAMW)
    opt = route(model, [(2, _muon), ("*", lambda gs: torch.optim.AdamW(gs, fused=True, **ADAMW))])
    for t in range(5):
        _step_both(ref, (muon, adamw), model, opt, t)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert p.is_cuda and torch.equal(p, q)


def _state_tensors(state) -> list[torch.Tensor]:
    """Every tensor of a (nested) state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in _state_tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _state_tensors(v)]
    return []


def test_deepcopy_and_pickle_give_a_working_routed_optimizer():
    # The copy's parameter maps must follow the copied parameters (they are keyed by id), and
    # a with_transforms handle stays with the original (as for any torch optimizer).
    model = _net(0)
    opt = route(model, [(2, _muon), ("*", _adamw)])
    with_transforms(opt, clip_by_global_norm(1.0))
    _backward(model, opt, 0)
    opt.step()
    for copied_model, copied in (copy.deepcopy((model, opt)),
                                 pickle.loads(pickle.dumps((model, opt)))):
        a, b = opt.state_dict(), copied.state_dict()
        assert a["routes"] == b["routes"]
        ta, tb = _state_tensors(a), _state_tensors(b)
        assert len(ta) == len(tb) > 0 and all(torch.equal(x, y) for x, y in zip(ta, tb))
        p = next(copied_model.parameters())
        assert p in copied.state and next(model.parameters()) not in copied.state
        _backward(copied_model, copied, 1)
        copied.step()  # steps the copied parameters, not the original ones
        assert not torch.equal(p, next(model.parameters()))
