"""Path-kernel decomposition: exact telescoping, first-order error, per-example attribution."""

import pytest
import torch
from torch import nn

from kexue.dynamics.path_kernel import PathKernelRecorder, TopK

# torch scripts its forward-mode decompositions on the first jvp; not our warning.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

D = torch.float64


def sq_loss(out, y):
    return 0.5 * ((out - y) ** 2).sum(-1)  # (B,)


def toy_data(n=20, n_test=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    y = torch.sin(2 * x[:, :1]) * x[:, 1:]  # (n, 1)
    return x, y, torch.randn(n_test, 2, generator=g, dtype=D)


def mlp(seed=0, d_in=2, hidden=16, d_out=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(D)


def train(model, opt, x, y, steps, rec=None, batches=None):
    for t in range(steps):
        idx = slice(None) if batches is None else batches[t]
        if rec is not None and batches is not None:
            rec.set_batch(idx)
        opt.zero_grad()
        sq_loss(model(x[idx]), y[idx]).mean().backward()
        opt.step()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def trained_mlp(lr=0.1, steps=50):
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, steps)
    return model, rec, x, xt


def test_exact_reconstruction_matches_trained_mlp():
    model, rec, _, xt = trained_mlp()
    with torch.no_grad():
        f_t, f_0 = model(xt), rec.initial(xt)
    assert rec.num_steps == 50 and all(rec.attributable)
    assert rel(f_t, f_0) > 0.1  # training moved the outputs
    assert rel(rec.reconstruct(xt, "exact", nodes=8), f_t) <= 1e-10
    # The midpoint rule (one node) is second order: far from rounding, far better than tangent.
    mid = rel(rec.reconstruct(xt, "exact", nodes=1), f_t)
    assert 1e-10 < mid < rel(rec.reconstruct(xt, "tangent"), f_t) / 100


def test_tangent_error_halves_with_learning_rate():
    errors = []
    for lr, steps in [(0.1, 50), (0.05, 100)]:  # same training time η·T
        model, rec, _, xt = trained_mlp(lr, steps)
        with torch.no_grad():
            errors.append((rec.reconstruct(xt, "tangent") - model(xt)).norm().item())
    assert 1.7 <= errors[0] / errors[1] <= 2.3


def test_contributions_sum_to_total_change():
    model, rec, _, xt = trained_mlp()
    with torch.no_grad():
        change = model(xt) - rec.initial(xt)
    c = rec.contributions(xt)
    assert c.shape == (30, 20, 1)
    assert rel(c.sum(1), change) <= 1e-10
    tangent = rec.contributions(xt, method="tangent").sum(1)
    torch.testing.assert_close(tangent, rec.increments(xt, "tangent").sum(0), rtol=1e-12,
                               atol=1e-14)


def test_linear_model_contributions_closed_form():
    g = torch.Generator().manual_seed(1)
    x, xt = torch.randn(6, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    y = torch.randn(6, 1, generator=g, dtype=D)
    model = nn.Linear(3, 1, bias=False).to(D)
    lr, steps = 0.05, 20
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y, reduction="sum")
    w = model.weight.detach().clone().reshape(3)
    dl_sum = torch.zeros(6, dtype=D)  # Σ_t ℓ'_{t,i}
    for _ in range(steps):
        resid = x @ w - y[:, 0]  # ℓ'_{t,i} = f(x_i) − y_i
        dl_sum += resid
        w = w - lr * x.T @ resid
        opt.zero_grad()
        sq_loss(model(x), y).sum().backward()
        opt.step()
    torch.testing.assert_close(model.weight.detach().reshape(3), w)
    expected = -lr * dl_sum[None, :] * (xt @ x.T)  # (4, 6): −η Σ_t ℓ'_{t,i} x·x_i
    for method in ("exact", "tangent"):
        c = rec.contributions(xt, method=method)
        torch.testing.assert_close(c[..., 0], expected, rtol=1e-12, atol=1e-14)


def test_minibatch_sgd_with_groups_schedule_and_vector_output():
    x, _, xt = toy_data(n=12)
    y = torch.cat([torch.sin(x[:, :1]), x[:, 1:] ** 2], 1)  # (12, 2)
    model = mlp(d_out=2)
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2},
                           {"params": model[2].parameters(), "lr": 0.05}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randperm(11, generator=g)[:4] for _ in range(15)]  # example 11 never used
    for t in range(15):
        rec.set_batch(batches[t])
        opt.zero_grad()
        sq_loss(model(x[batches[t]]), y[batches[t]]).mean().backward()
        opt.step()
        sched.step()
    assert all(rec.attributable)
    with torch.no_grad():
        f_t = model(xt)
    assert rel(rec.reconstruct(xt), f_t) <= 1e-10
    c = rec.contributions(xt, chunk_size=3)
    assert c.shape == (30, 12, 2)
    assert rel(c.sum(1), f_t - rec.initial(xt)) <= 1e-10
    assert c[:, 11].abs().max() == 0


def test_undeclared_minibatch_is_not_attributed():
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x[:5], y[:5], 3)  # trains on 5 examples without set_batch
    assert rec.attributable == (False, False, False)
    with torch.no_grad():
        assert rel(rec.reconstruct(xt), model(xt)) <= 1e-10
    with pytest.raises(ValueError, match="not SGD steps"):
        rec.contributions(xt)


@pytest.mark.parametrize("with_data", [True, False])
def test_adam_total_reconstruction(with_data):
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    rec = (PathKernelRecorder(model, opt, sq_loss, x, y) if with_data
           else PathKernelRecorder(model, opt))
    train(model, opt, x, y, 40)
    with torch.no_grad():
        assert rel(rec.reconstruct(xt), model(xt)) <= 1e-10
    if with_data:
        assert not any(rec.attributable)
        with pytest.raises(ValueError, match="not SGD steps.*first step 0"):
            rec.contributions(xt)
    else:
        with pytest.raises(ValueError, match="training set"):
            rec.contributions(xt)


def test_momentum_first_step_is_sgd_and_later_ones_are_not():
    x, y, _ = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, 3)
    assert rec.attributable == (True, False, False)


def test_weights_edited_between_steps_are_an_external_segment():
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, 2)
    with torch.no_grad():
        model[0].weight.mul_(1.1)
    train(model, opt, x, y, 2)
    assert rec.attributable == (True, True, False, True, True)
    with torch.no_grad():
        assert rel(rec.reconstruct(xt), model(xt)) <= 1e-10
    with pytest.raises(ValueError, match="changed between optimizer steps"):
        rec.contributions(xt)


def test_remove_detaches_hooks():
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, 5)
    with torch.no_grad():
        f_5 = model(xt)
    rec.remove()
    train(model, opt, x, y, 5)
    assert rec.num_steps == 5
    assert rel(rec.reconstruct(xt), f_5) <= 1e-10
    rec.remove()  # idempotent


def test_top_k_finds_the_planted_example():
    # Nearly orthogonal inputs; two examples carry large targets, the rest are near zero.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 12, generator=g, dtype=D)
    y = 0.05 * torch.randn(10, 1, generator=g, dtype=D)
    y[3], y[7] = 3.0, -3.0
    model = mlp(d_in=12, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, 60)
    top = rec.top_k(x[[3, 7]], k=2)
    assert isinstance(top, TopK) and top.indices.shape == (2, 2) and top.values.shape == (2, 2, 1)
    assert top.indices[:, 0].tolist() == [3, 7]
    assert top.values[0, 0, 0] > 0 > top.values[1, 0, 0]  # pulled towards +3 and −3


def test_top_k_matches_closed_form_for_a_linear_model():
    # f(x) = wᵀx (no bias) is linear in w, so c_i(x) = Σ_t −(η/B)(x·x_i) r_{t,i}, with the
    # residual r_{t,i} = w_tᵀx_i − y_i, replayed here by hand.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, generator=g, dtype=D)
    y = torch.randn(8, 1, generator=g, dtype=D)
    xt = torch.randn(4, 3, generator=g, dtype=D)
    model = nn.Linear(3, 1, bias=False).to(D)
    lr, steps = 0.1, 6
    w = model.weight.detach().clone().reshape(3)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, steps)
    want = torch.zeros(4, 8, dtype=D)
    for _ in range(steps):
        r = x @ w - y[:, 0]  # (8,)
        want -= lr / len(x) * (xt @ x.T) * r  # (4, 8)
        w = w - lr / len(x) * (x.T @ r)
    top = rec.top_k(xt, k=3)
    order = want.abs().argsort(dim=1, descending=True)[:, :3]
    assert top.indices.tolist() == order.tolist()
    torch.testing.assert_close(top.values[..., 0], want.gather(1, order))


def test_bad_input_raises_clear_errors():
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        PathKernelRecorder(nn.Tanh(), opt)
    with pytest.raises(ValueError, match="updates none"):
        PathKernelRecorder(model, torch.optim.SGD(mlp().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="go together"):
        PathKernelRecorder(model, opt, sq_loss, x)
    with pytest.raises(ValueError, match=r"train_y must be a tensor with len\(train_x\)=20"):
        PathKernelRecorder(model, opt, sq_loss, x, y[:5])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'avg'"):
        PathKernelRecorder(model, opt, sq_loss, x, y, reduction="avg")

    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    with pytest.raises(ValueError, match="no optimizer step has been recorded"):
        rec.reconstruct(xt)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 20\), got min 0, max 20"):
        rec.set_batch([0, 20])
    with pytest.raises(ValueError, match="non-empty 1-D integer"):
        rec.set_batch([])
    train(model, opt, x, y, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\) like train_x, got \(30, 3\)"):
        rec.reconstruct(torch.randn(30, 3, dtype=D))
    with pytest.raises(ValueError, match="non-empty tensor"):
        rec.reconstruct(xt[:0])
    with pytest.raises(ValueError, match="method must be 'exact' or 'tangent', got 'simpson'"):
        rec.reconstruct(xt, method="simpson")
    with pytest.raises(ValueError, match="nodes must be an int >= 1, got 0"):
        rec.reconstruct(xt, nodes=0)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 20\], got 21"):
        rec.top_k(xt, k=21)
    rec.remove()

    bad = PathKernelRecorder(model, opt, lambda o, t: ((o - t) ** 2), x, y)  # (B, 1), not (B,)
    with pytest.raises(ValueError, match=r"per-example losses of shape \(20,\), got \(20, 1\)"):
        train(model, opt, x, y, 1)
    bad.remove()


def test_inputs_must_match_the_model_dtype_and_device():
    x, y, xt = toy_data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="train_x must have the model's parameter dtype "
                                         "torch.float64, got torch.float32"):
        PathKernelRecorder(model, opt, sq_loss, x.float(), y)
    with pytest.raises(ValueError, match="train_x must be on the model's device cpu, got meta"):
        PathKernelRecorder(model, opt, sq_loss, x.to("meta"), y)
    with pytest.raises(ValueError, match="train_y must be on the model's device cpu, got meta"):
        PathKernelRecorder(model, opt, sq_loss, x, y.to("meta"))
    # Integer labels are fine: only their device and length are checked.
    PathKernelRecorder(model, opt, sq_loss, x, torch.zeros(20, dtype=torch.long)).remove()

    rec = PathKernelRecorder(model, opt, sq_loss, x, y)
    train(model, opt, x, y, 1)
    for query in (rec.reconstruct, rec.increments, rec.contributions):
        with pytest.raises(ValueError, match="x must have the model's parameter dtype "
                                             "torch.float64, got torch.float32"):
            query(xt.float())
        with pytest.raises(ValueError, match="x must be on the model's device cpu, got meta"):
            query(xt.to("meta"))
    rec.remove()
