"""kexue in an accelerate loop: ``Accelerator.prepare`` keeps the ``with_transforms`` hook (the
``AcceleratedOptimizer`` steps the wrapped torch optimizer), and the EMA follows the real steps.

One CPU loop with gradient accumulation over 2 micro-batches, checked against float64 references:
the gradient the transform sees, the clipped SGD step, the clip bound on every step, and the EMA's
closed form from the recorded weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

from kexue.train import EMA, GradientTransform, chain, clip_by_global_norm, with_transforms  # noqa: E402


def _recording(log: list) -> GradientTransform:
    """Keeps a float64 copy of the gradients it sees; changes nothing."""

    def update(grads, state, params):
        log.append([g.detach().double().clone() for g in grads])
        return grads, state

    return GradientTransform(lambda params: None, update)


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))


def test_accelerate_loop_transforms_real_steps_and_ema_equals_closed_form():
    bound, lr, d, accum = 0.05, 0.1, 0.7, 2
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(dim=1, keepdim=True) ** 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    reference = copy.deepcopy(model).double()
    raw, clipped = [], []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    handle = with_transforms(optimizer, chain(_recording(raw), clip_by_global_norm(bound),
                                              _recording(clipped)))

    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accum)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    assert isinstance(optimizer, accelerate.optimizer.AcceleratedOptimizer)
    ema = EMA(model, decay=d)
    weights = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema.update()
            weights.append({n: p.detach().clone() for n, p in model.named_parameters()})

    steps = len(loader) // accum
    # The transform ran on real steps only, once per accumulation window.
    assert handle.steps_taken == len(raw) == len(clipped) == len(weights) - 1 == steps
    assert ema.num_updates == steps
    for before, after in zip(raw, clipped):
        assert _norm(before) > bound  # the bound binds ...
        assert _norm(after) <= bound * (1 + 1e-6)  # ... and holds

    # Step 1 in float64: the mean of the two micro-batches' gradients, clipped, one SGD step.
    loss = sum(nn.functional.mse_loss(reference(x[i:i + 4].double()), y[i:i + 4].double())
               for i in (0, 4)) / accum
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for got, want in zip(raw[0], grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    coef = min(1.0, bound / (_norm(list(grads)) + 1e-6))
    for (n, p), g in zip(reference.named_parameters(), grads):
        torch.testing.assert_close(weights[1][n].double(), p.detach() - lr * coef * g,
                                   rtol=1e-5, atol=1e-6)

    # The EMA against its closed form: ema_t = d·ema_{t−1} + (1 − d)·θ_t, ema_0 = θ_0.
    want = {n: w.double() for n, w in weights[0].items()}
    for theta in weights[1:]:
        want = {n: d * want[n] + (1 - d) * theta[n].double() for n in want}
    shadow = ema.state_dict()["shadow"]
    for n in want:
        torch.testing.assert_close(shadow[n].double(), want[n], rtol=1e-5, atol=1e-7)
