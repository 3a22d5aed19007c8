"""Claim: a network trained by gradient descent is exactly a sum over its training examples.

A tanh MLP (64-32-10, float64) is trained on 300 sklearn digits by full-batch SGD while a
``PathKernelRecorder`` watches the optimizer. Its test logits are then rebuilt as
f(x) = f₀(x) + Σ_t Σ_i c_{t,i}(x), each step's increment being the line integral of
∇_θ f(x) along the step (Gauss–Legendre over the segment), and the per-step tangent-kernel
sum (the first-order version) is compared. The contribution of each training example to the
predicted class's logit ranks the examples that explain a prediction (a kernel machine's
support): the figure shows the five largest for a few test digits.
Note: https://kexue.fm/archives/8009
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from kexue.dynamics.path_kernel import PathKernelRecorder

NAME = "path_kernel_digits"
TITLE = "The path kernel: which training digits explain a prediction"
NOTE = "https://kexue.fm/archives/8009"
CLAIM = (
    "the exact line integral rebuilds the trained network's test logits to ≤ 1e-10 relative "
    "(the first-order tangent-kernel sum is far off it, ≥ 1000× that error), and the five "
    "training examples that contribute most to a prediction carry its label ≥ 80% of the time"
)
QUICK: dict[str, Any] = {"train": 300, "hidden": 32, "steps": 100, "lr": 0.5, "nodes": 4,
                         "explain": 6, "top": 5}
FULL: dict[str, Any] = {**QUICK, "train": 600, "steps": 300, "explain": 12}


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float64)  # (N, 64)
    y = torch.tensor(y_np)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[: config["train"]], order[config["train"]:]
    x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, config["hidden"]), nn.Tanh(),
                          nn.Linear(config["hidden"], 10)).double()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])

    def per_example(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target, reduction="none")

    recorder = PathKernelRecorder(model, opt, per_example, x_tr, y_tr)
    for _ in range(config["steps"]):
        opt.zero_grad()
        per_example(model(x_tr), y_tr).mean().backward()
        opt.step()
    recorder.remove()

    with torch.no_grad():
        logits = model(x_te)  # (N_test, 10)
    accuracy = (logits.argmax(1) == y_te).double().mean().item()
    errors = {}
    for method, nodes in (("exact", config["nodes"]), ("tangent", 1)):
        rebuilt = recorder.reconstruct(x_te, method=method, nodes=nodes)
        errors[method] = ((rebuilt - logits).norm() / logits.norm()).item()

    n = config["explain"]
    pred = logits[:n].argmax(1)  # (n,)
    contrib = recorder.contributions(x_te[:n], method="exact", nodes=config["nodes"])
    support = contrib[torch.arange(n), :, pred]  # (n, N_train) on the predicted logit
    values, top = support.topk(config["top"], dim=1)  # (n, top)
    same_label = (y_tr[top] == pred[:, None]).double().mean().item()
    holds = (errors["exact"] <= 1e-10 and errors["tangent"] >= 1000 * errors["exact"]
             and same_label >= 0.8)

    k = config["top"]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.4 * (k + 1), 1.5 * n))
    for row in range(n):
        axes[row, 0].imshow(x_te[row].view(8, 8), cmap="gray_r")
        axes[row, 0].set_title(f"test: pred {int(pred[row])}", fontsize=8, color="#a00")
        for j in range(k):
            i = int(top[row, j])
            axes[row, j + 1].imshow(x_tr[i].view(8, 8), cmap="gray_r")
            axes[row, j + 1].set_title(f"#{i} y={int(y_tr[i])}\n+{values[row, j]:.2f}",
                                       fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Training digits with the largest contribution to the predicted logit",
                 fontsize=9)
    fig.tight_layout()

    return {
        "metrics": {"test_accuracy": accuracy, "exact_relative_error": errors["exact"],
                    "tangent_relative_error": errors["tangent"], "top_same_label": same_label},
        "claim_holds": holds,
        "summary": (f"test accuracy {accuracy:.3f}; rebuilt logits: exact {errors['exact']:.1e}, "
                    f"tangent sum {errors['tangent']:.1e} relative error; top-{k} supporters "
                    f"share the predicted label {same_label:.0%}"),
        "top_supporters": {int(test[r]): [[int(train[i]), float(v)]
                                          for i, v in zip(top[r], values[r], strict=True)]
                           for r in range(n)},
        "figures": {"supporters": fig},
    }
