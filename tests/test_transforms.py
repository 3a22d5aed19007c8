"""Gradient transforms: invariants, hand-computed references, composition order, optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kexue.train import (
    GradientTransform,
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
    select,
    skip_nonfinite,
    with_transforms,
)


def _grads(seed: int = 0, scale_: float = 3.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (5,), (3, 2, 2), (1,), (6, 1)]
    return [scale_ * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _run(tx: GradientTransform, grads, params=None):
    params = params if params is not None else [torch.zeros_like(g) for g in grads]
    out, _ = tx.update([g.clone() for g in grads], tx.init(params), params)
    return out


def test_clip_by_norm_matches_formula_and_bound():
    grads = _grads()
    grads[1] = grads[1] * 1e-3  # one tensor already inside the bound
    out = _run(clip_by_norm(1.0, eps=0.0), grads)
    for g, o in zip(grads, out):
        n = g.norm().item()
        torch.testing.assert_close(o, g * min(1.0, 1.0 / n))
        assert o.norm() <= 1.0 + 1e-12
    torch.testing.assert_close(out[1], grads[1])


def test_clip_by_global_norm_matches_torch_and_bound():
    grads = _grads()
    out = _run(clip_by_global_norm(2.0), grads)
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 2.0, foreach=False)
    for p, o in zip(params, out):
        torch.testing.assert_close(o, p.grad)
    total = math.sqrt(sum(o.pow(2).sum().item() for o in out))
    assert total <= 2.0 + 1e-9
    small = _grads(scale_=1e-4)
    for o, g in zip(_run(clip_by_global_norm(2.0), small), small):
        torch.testing.assert_close(o, g)


_shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
                   min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(shapes=_shapes, bound=st.floats(1e-3, 1e3), spread=st.floats(-4, 4), seed=st.integers(0, 99))
def test_clipping_invariants_property(shapes, bound, spread, seed):
    """Any shapes, any scale: clipped norms within the bound, directions kept, and tensors
    already inside the bound untouched."""
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) * 10**spread for s in shapes]
    per = _run(clip_by_norm(bound, eps=0.0), grads)
    glob = _run(clip_by_global_norm(bound, eps=0.0), grads)
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    assert math.sqrt(sum(o.pow(2).sum().item() for o in glob)) <= bound * (1 + 1e-9)
    for g, p, q in zip(grads, per, glob):
        n = g.norm().item()
        assert p.norm().item() <= bound * (1 + 1e-9)
        if n <= bound:
            assert torch.equal(p, g)
        torch.testing.assert_close(p, g * min(1.0, bound / n) if n > 0 else g)
        torch.testing.assert_close(q, g * min(1.0, bound / total) if total > 0 else g)


def test_clip_by_value():
    grads = _grads()
    out = _run(clip_by_value(0.5), grads)
    for g, o in zip(grads, out):
        assert o.abs().max() <= 0.5
        torch.testing.assert_close(o, g.clamp(-0.5, 0.5))


def test_adaptive_clip_rowwise_reference():
    grads = _grads()
    gen = torch.Generator().manual_seed(9)
    params = [torch.randn(g.shape, generator=gen, dtype=torch.float64) * 0.1 for g in grads]
    clip, eps = 0.05, 1e-3
    out = _run(adaptive_clip(clip, eps), grads, params)
    for g, p, o in zip(grads, params, out):
        rows_g = g.reshape(g.shape[0], -1) if g.ndim > 1 else g.reshape(1, -1)  # (units, fan_in)
        rows_p = p.reshape(p.shape[0], -1) if p.ndim > 1 else p.reshape(1, -1)
        expected = []
        for rg, rp in zip(rows_g, rows_p):
            limit = clip * max(rp.norm().item(), eps)
            expected.append(rg * min(1.0, limit / rg.norm().item()))
        torch.testing.assert_close(o, torch.stack(expected).reshape(g.shape))
        assert (o.reshape(rows_g.shape).norm(dim=1)
                <= clip * rows_p.norm(dim=1).clamp_min(eps) + 1e-9).all()


def test_centralize_zero_mean_rows():
    grads = _grads()
    out = _run(centralize(), grads)
    for g, o in zip(grads, out):
        if g.ndim > 1:
            rows = o.reshape(o.shape[0], -1)  # (units, fan_in)
            torch.testing.assert_close(rows.mean(1), torch.zeros(o.shape[0], dtype=o.dtype))
            torch.testing.assert_close(o - g, (-g.reshape(g.shape[0], -1).mean(1))
                                       .reshape(-1, *[1] * (g.ndim - 1)).expand_as(g))
        else:
            torch.testing.assert_close(o, g)


def test_add_noise_variance_schedule():
    # Statistical: 200k draws; the sample std is within 1% of σ_t (≈ 14 standard errors).
    eta, gamma = 0.5, 0.55
    tx = add_noise(eta, gamma, generator=torch.Generator().manual_seed(0))
    grads = [torch.zeros(100_000), torch.zeros(100_000)]
    state = tx.init(grads)
    for t in range(3):
        out, state = tx.update([g.clone() for g in grads], state, grads)
        std = torch.cat(out).std().item()
        assert abs(std - math.sqrt(eta / (1 + t) ** gamma)) < 0.01 * std
        assert abs(torch.cat(out).mean().item()) < 0.01


def test_chain_order_matters():
    grads = _grads()
    a = _run(chain(clip_by_norm(1.0), scale(2.0)), grads)
    b = _run(chain(scale(2.0), clip_by_norm(1.0)), grads)
    assert all(o.norm() <= 2.0 + 1e-9 for o in a) and max(o.norm() for o in a) > 1.5
    assert all(o.norm() <= 1.0 + 1e-9 for o in b)


def test_select_only_touches_matched():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    params = list(model.parameters())
    grads = [torch.ones_like(p) for p in params]
    tx = select(model, "1.*", scale(0.0))
    out, _ = tx.update([g.clone() for g in grads], tx.init(params), params)
    assert torch.equal(out[0], grads[0]) and torch.equal(out[1], grads[1])
    assert out[2].abs().sum() == 0 and out[3].abs().sum() == 0
    with pytest.raises(ValueError, match="matches no parameter"):
        select(model, "2.*", scale(1.0))


def test_map_grads_user_function_and_shape_check():
    grads = _grads()
    out = _run(map_grads(lambda g, p: g.sign()), grads)
    for g, o in zip(grads, out):
        torch.testing.assert_close(o, g.sign())
    with pytest.raises(ValueError, match="shape"):
        _run(map_grads(lambda g, p: g.sum()), grads)


def _quadratic():
    torch.manual_seed(0)
    target = torch.tensor([1.0, -2.0, 3.0])
    w = nn.Parameter(torch.zeros(3))
    return w, target


@pytest.mark.parametrize(
    "make_opt, steps",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), 400),
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 400),
        (lambda p: torch.optim.Adam(p, lr=0.05), 800),
        (lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.0), 800),
        (lambda p: torch.optim.RMSprop(p, lr=0.01), 800),
        (lambda p: torch.optim.Adagrad(p, lr=0.5), 800),
    ],
)
def test_every_optimizer_reaches_the_minimum(make_opt, steps):
    w, target = _quadratic()
    opt = make_opt([w])
    with_transforms(opt, chain(clip_by_norm(1.0), centralize(), clip_by_value(5.0)))
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (w - target).pow(2).sum()).backward()
        opt.step()
    torch.testing.assert_close(w.detach(), target, atol=2e-3, rtol=0)


def test_accumulate_equals_one_big_batch():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    ref = nn.Linear(4, 2)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    handle = with_transforms(opt, accumulate(4))
    start = [p.detach().clone() for p in model.parameters()]
    for i, (xb, yb) in enumerate(zip(x.chunk(4), y.chunk(4))):
        opt.zero_grad()
        (model(xb) - yb).pow(2).mean().backward()
        opt.step()
        if i < 3:
            assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    (ref(x) - y).pow(2).mean().backward()
    ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert handle.steps_taken == 1 and handle.steps_skipped == 3


def test_skip_nonfinite_leaves_params_and_state_alone():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    handle = with_transforms(opt, skip_nonfinite())
    (w * torch.tensor([1.0, float("nan"), 1.0])).sum().backward()
    opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and len(opt.state) == 0
    assert handle.steps_skipped == 1 and handle.state == 1
    opt.zero_grad()
    w.sum().backward()
    opt.step()
    assert not torch.equal(w.detach(), torch.ones(3)) and handle.steps_taken == 1


def test_params_without_grad_stay_untouched():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a, b], lr=1.0)
    with_transforms(opt, clip_by_global_norm(1.0))
    (3 * a).sum().backward()
    opt.step()
    assert b.grad is None and torch.equal(b.detach(), torch.ones(2))
    torch.testing.assert_close(a.detach(), torch.ones(2) - 1 / math.sqrt(2))


def test_accumulate_keeps_sums_of_params_missing_from_the_last_micro_batch():
    a, b, c = (nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.SGD([a, b, c], lr=1.0)
    handle = with_transforms(opt, accumulate(2))
    (a.sum() + b.sum()).backward()  # micro-batch 1: a and b
    opt.step()
    opt.zero_grad()
    b.sum().backward()  # micro-batch 2: only b
    opt.step()
    assert handle.last_stepped
    torch.testing.assert_close(a.detach(), torch.full((2,), -0.5))  # mean of (1, 0)
    torch.testing.assert_close(b.detach(), torch.full((2,), -1.0))
    assert c.grad is None and torch.equal(c.detach(), torch.zeros(2))  # never had a gradient


def _quadratic_form(seed: int = 0):
    """f(x) = ½ xᵀAx − bᵀx in float64 with A positive definite; a large b so clipping binds."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T / 6 + torch.eye(6, dtype=torch.float64)
    b = 20 * torch.randn(6, generator=gen, dtype=torch.float64)
    return a, b


def test_lbfgs_closure_matches_hand_clipped_reference():
    # Every evaluation of the closure must see the clipped gradient g·min(1, c/‖g‖): the
    # reference clips by hand inside its own closure, in float64, with no kexue code.
    a, b = _quadratic_form()
    c = 0.5

    def run(transformed: bool):
        x = nn.Parameter(torch.zeros(6, dtype=torch.float64))
        opt = torch.optim.LBFGS([x], lr=0.5, max_iter=5, history_size=4)
        if transformed:
            handle = with_transforms(opt, clip_by_global_norm(c, eps=0.0))
        evaluations = 0

        def closure():
            nonlocal evaluations
            evaluations += 1
            opt.zero_grad()
            loss = 0.5 * x @ a @ x - b @ x
            loss.backward()
            if not transformed:
                with torch.no_grad():
                    x.grad.mul_(min(1.0, c / x.grad.norm().item()))
            return loss

        for _ in range(3):
            opt.step(closure)
        return x.detach(), evaluations, (handle if transformed else None)

    ref, ref_evals, _ = run(False)
    got, evals, handle = run(True)
    assert evals == ref_evals > 3  # LBFGS evaluated the closure several times per step
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert handle.steps_taken == 3 and handle.steps_skipped == 0  # counted per step
    assert not torch.equal(ref, torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("positional", [True, False])
def test_closure_step_equals_backward_then_step(positional):
    # Adam stepped with a closure and with backward()-then-step() must agree exactly.
    a, b = _quadratic_form(1)

    def run(with_closure: bool):
        x = nn.Parameter(torch.zeros(6, dtype=torch.float64))
        opt = torch.optim.Adam([x], lr=0.1)
        with_transforms(opt, chain(clip_by_norm(0.3), scale(0.5)))
        losses = []
        for _ in range(4):
            def closure():
                opt.zero_grad()
                loss = 0.5 * x @ a @ x - b @ x
                loss.backward()
                return loss
            if with_closure:
                losses.append(opt.step(closure) if positional else opt.step(closure=closure))
            else:
                losses.append(closure())
                opt.step()
        return x.detach(), torch.stack(losses).detach()

    x1, l1 = run(True)
    x2, l2 = run(False)
    assert torch.equal(x1, x2) and torch.equal(l1, l2)


def test_closure_skip_returns_loss_and_moves_nothing():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=1.0)
    handle = with_transforms(opt, skip_nonfinite())

    def closure():
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, float("nan"), 1.0])).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.isnan(loss)  # the closure's own loss comes back
    assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None
    assert not handle.last_stepped and handle.steps_skipped == 1
    assert opt.state[w] == {}  # Adam never saw a gradient: no moments, no step count


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_clip_without_overflow(dtype):
    # ‖g‖ = 300·√1e5 ≈ 9.5e4 > fp16 max: the norm must be accumulated in float32.
    g = [torch.full((100_000,), 300.0, dtype=dtype), torch.full((10,), 0.5, dtype=dtype)]
    per = _run(clip_by_norm(1.0), g)
    glob = _run(clip_by_global_norm(1.0), g)
    assert torch.isfinite(per[0]).all() and per[0].abs().max() > 0
    assert per[0].double().norm() <= 1.0 + 5e-3  # within the dtype's rounding
    assert sum(o.double().pow(2).sum() for o in glob).sqrt() <= 1.0 + 5e-3
    out = _run(skip_nonfinite(), g)
    assert out is not None  # all finite: do not skip


def test_state_survives_torch_save_load(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = with_transforms(opt, chain(add_noise(0.1), accumulate(3), skip_nonfinite()))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save(handle.state_dict(), tmp_path / "tx.pt")
    loaded = torch.load(tmp_path / "tx.pt")  # default weights_only=True
    fresh = with_transforms(torch.optim.SGD(model.parameters(), lr=0.1),
                            chain(add_noise(0.1), accumulate(3), skip_nonfinite()))
    fresh.load_state_dict(loaded)
    noise_step, acc, skipped = fresh.state
    assert noise_step == 1 and acc["count"] == 1 and skipped == 0
    torch.testing.assert_close(acc["buffers"][0], handle.state[1]["buffers"][0])


def test_sparse_gradients_are_a_clear_error():
    emb = nn.Embedding(5, 2, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    with_transforms(opt, clip_by_norm(1.0))
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="dense"):
        opt.step()


def test_handle_remove_and_state_dict():
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=1.0)
    handle = with_transforms(opt, scale(0.0))
    w.sum().backward()
    opt.step()
    assert torch.equal(w.detach(), torch.ones(2))
    handle.remove()
    opt.zero_grad()
    w.sum().backward()
    opt.step()
    assert torch.equal(w.detach(), torch.zeros(2))
    saved = handle.state_dict()
    handle.load_state_dict(saved)
    assert handle.steps_taken == 1


def test_apply_transform_function():
    w = nn.Parameter(torch.ones(4))
    w.grad = torch.full((4,), 10.0)
    tx = clip_by_norm(1.0)
    stepped, _ = apply_transform([w], tx, tx.init([w]))
    assert stepped and w.grad.norm() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: clip_by_norm(0.0), "max_norm"),
        (lambda: clip_by_norm(float("nan")), "max_norm"),
        (lambda: clip_by_global_norm(-1.0), "max_norm"),
        (lambda: clip_by_value(-1), "limit"),
        (lambda: adaptive_clip(0.0), "clipping"),
        (lambda: add_noise(-1.0), "eta"),
        (lambda: accumulate(0), "every"),
        (lambda: chain(scale(1.0), "clip"), "chain argument 1"),
        (lambda: map_grads(3), "fn"),
        (lambda: with_transforms("adam", scale(1.0)), "optimizer"),
    ],
)
def test_bad_input(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


# -- parameter groups added after with_transforms ---------------------------------------------


def test_added_param_group_is_clipped_with_the_others():
    # Reference: torch's clip_grad_norm_ over all parameters, then a plain SGD step.
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(3, dtype=torch.float64)), nn.Parameter(
        torch.randn(4, dtype=torch.float64))
    ref_a, ref_b = (nn.Parameter(t.detach().clone()) for t in (a, b))
    opt = torch.optim.SGD([a], lr=0.5)
    handle = with_transforms(opt, clip_by_global_norm(1.0, eps=0.0))
    opt.add_param_group({"params": [b], "lr": 0.25})
    (5 * a.sum() + 7 * b.pow(2).sum()).backward()
    opt.step()
    (5 * ref_a.sum() + 7 * ref_b.pow(2).sum()).backward()
    torch.nn.utils.clip_grad_norm_([ref_a, ref_b], 1.0)
    torch.testing.assert_close(a.detach(), ref_a.detach() - 0.5 * ref_a.grad)
    torch.testing.assert_close(b.detach(), ref_b.detach() - 0.25 * ref_b.grad)
    assert len(handle.params) == 2 and handle.state_dict()["num_params"] == 2


def test_added_param_group_joins_an_accumulation_window_and_select():
    model = nn.ModuleDict({"body": nn.Linear(2, 2)})
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    # scale(3) on every bias, including those of modules added to the model later.
    handle = with_transforms(opt, chain(select(model, "*.bias", scale(3.0)), accumulate(2)))
    body_bias = model["body"].bias.detach().clone()
    model["body"].bias.sum().backward()  # micro-batch 1: only the body
    opt.step()
    assert not handle.last_stepped
    model["head"] = nn.Linear(2, 1)
    with torch.no_grad():
        for p in model["head"].parameters():
            p.zero_()
    opt.add_param_group({"params": list(model["head"].parameters())})
    opt.zero_grad()
    head = model["head"]
    (head.weight.sum() + head.bias.sum() + model["body"].bias.sum()).backward()  # micro-batch 2
    opt.step()
    assert handle.last_stepped
    # Means over the 2 micro-batches of the (scaled) gradients, by hand:
    torch.testing.assert_close(head.weight.detach(), torch.full((1, 2), -0.5))  # (0 + 1) / 2
    torch.testing.assert_close(head.bias.detach(), torch.full((1,), -1.5))  # (0 + 3) / 2
    torch.testing.assert_close(model["body"].bias.detach(), body_bias - 3.0)  # (3 + 3) / 2


def test_added_param_group_with_a_custom_transform():
    w, v = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=1.0)
    double = GradientTransform(lambda params: None, lambda g, s, p: ([2 * x for x in g], s))
    with_transforms(opt, double)  # stateless: no extend needed
    opt.add_param_group({"params": [v]})
    (w.sum() + v.sum()).backward()
    opt.step()
    assert torch.equal(v.detach(), -torch.ones(2)) and torch.equal(w.detach(), -torch.ones(2))

    counter = GradientTransform(lambda params: 0, lambda g, s, p: (g, s + 1))  # state, no extend
    opt = torch.optim.SGD([w], lr=1.0)
    with_transforms(opt, counter)
    opt.add_param_group({"params": [v]})
    with pytest.raises(ValueError, match="no extend"):
        opt.step()


def test_removed_param_group_and_bad_state_dict_are_clear_errors():
    w, v = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [v]}], lr=1.0)
    handle = with_transforms(opt, accumulate(2))
    saved = handle.state_dict()
    opt.param_groups.pop(0)
    opt.add_param_group({"params": [nn.Parameter(torch.ones(2))]})
    opt.add_param_group({"params": [nn.Parameter(torch.ones(2))]})
    with pytest.raises(ValueError, match="other than by add_param_group"):
        opt.step()
    fresh = with_transforms(torch.optim.SGD([w], lr=1.0), accumulate(2))
    with pytest.raises(ValueError, match="saved for 2 parameters"):
        fresh.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"missing \['steps_taken', 'steps_skipped'\]"):
        fresh.load_state_dict({"state": saved["state"]})


def test_accumulate_process_group_must_be_a_process_group():
    with pytest.raises(ValueError, match="process_group must be a torch.distributed"):
        accumulate(2, process_group="WORLD")
    accumulate(2, process_group=None)  # the default: no communication


def test_clips_marks_the_bounding_transforms_through_chain_and_select():
    model = nn.Linear(2, 2)
    bounding = [clip_by_norm(1.0), clip_by_global_norm(1.0), clip_by_value(1.0), adaptive_clip()]
    others = [scale(0.5), centralize(), accumulate(2), skip_nonfinite(), add_noise(),
              map_grads(lambda g, p: g.clamp(-1, 1))]  # a hand-written clip does not say so
    assert all(t.clips for t in bounding) and not any(t.clips for t in others)
    assert chain(scale(0.5), select(model, "weight", clip_by_value(1.0))).clips
    assert not chain(scale(0.5), select(model, "weight", centralize())).clips


def test_transform_handles_lists_the_attached_handles_in_order():
    from kexue.train import transform_handles

    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    a = with_transforms(opt, scale(1.0))
    b = with_transforms(opt, skip_nonfinite())
    assert transform_handles(opt) == [a, b]
    a.remove()
    assert transform_handles(opt) == [b]
    b.remove()
    assert transform_handles(opt) == []
