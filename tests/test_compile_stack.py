"""kexue's training controls around a ``torch.compile``-d model: the compiled forward and
backward (``aot_eager``: dynamo's graph capture and AOTAutograd's joint graph, without the
minutes inductor's C++ compile would take on CI) feed ``with_transforms`` and ``EMA`` exactly
as the eager model does."""

from __future__ import annotations

import torch
from torch import nn

from kexue.train import EMA, chain, clip_by_global_norm, skip_nonfinite, with_transforms


def _train(compiled: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1))
    run = torch.compile(model, backend="aot_eager") if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    handle = with_transforms(opt, chain(skip_nonfinite(), clip_by_global_norm(0.1)))
    ema = EMA(run, decay=0.8)
    gen = torch.Generator().manual_seed(1)
    norms = []
    for step in range(6):
        x = torch.randn(8, 6, generator=gen)
        if step == 3:
            x[0, 0] = float("nan")  # a step the chain must skip
        opt.zero_grad()
        run(x).square().mean().backward()
        opt.step()
        norms.append(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters()])).item()
            if handle.last_stepped else float("nan"))
        if handle.last_stepped:
            ema.update()
    assert handle.steps_skipped == 1 and ema.num_updates == 5
    weights = [p.detach().clone() for p in model.parameters()]
    with ema.swapped():
        averaged = [p.detach().clone() for p in model.parameters()]
    return weights, averaged, norms


def test_compiled_model_trains_like_the_eager_one_through_transforms_and_ema():
    eager_w, eager_avg, eager_norms = _train(compiled=False)
    comp_w, comp_avg, comp_norms = _train(compiled=True)
    for a, b in zip(eager_w + eager_avg, comp_w + comp_avg):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the clip bound held on every step that stepped, compiled or not
    stepped = [n for n in comp_norms if n == n]
    assert len(stepped) == 5 and max(stepped) <= 0.1 * (1 + 1e-5)
    assert eager_norms[3] != eager_norms[3] and comp_norms[3] != comp_norms[3]  # skipped
