"""Claim: every token mixer behind the one contract trains on a real task.

Reads each sklearn digit as a sequence of 16 tokens, one per 2×2 patch (linear patch embedding
+ learned position, as in ViT/MLP-Mixer),
builds the same two-block model around every mixer in ``kexue.attention.MIXERS`` with
``Block(mixer=...)``, trains each for the same budget and reports test accuracy per mixer.
Notes: https://kexue.fm/archives/6853, https://kexue.fm/archives/8180,
https://kexue.fm/archives/8431
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from kexue.attention import MIXERS, Block
from kexue.experiments._common import batches, digits, evaluate

NAME = "mixers_digits"
TITLE = "Every token mixer on sklearn digits read as sequences of 2×2 patches"
NOTE = "https://kexue.fm/archives/8431"
CLAIM = "every mixer trains to at least 3× chance (30% test accuracy) on the same budget"
QUICK: dict[str, Any] = {"epochs": 6, "width": 32, "heads": 4, "depth": 2, "lr": 3e-3,
                         "batch_size": 32}
FULL: dict[str, Any] = {**QUICK, "epochs": 30}
SEQ_LEN = 16  # 4 × 4 patches of 2 × 2 pixels


class PixelSequenceModel(nn.Module):
    """8×8 digit -> 16 patch tokens -> Block(mixer) × depth -> mean-pool -> 10 classes."""

    def __init__(self, name: str, width: int, heads: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN, width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(width, MIXERS[name](width, SEQ_LEN, heads)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = x.view(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4)  # (B, 4 rows, 4 cols, 2, 2)
        h = self.embed(patches.reshape(b, SEQ_LEN, 4)) + self.pos  # (B, 16, D)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = digits(seed)
    accuracy: dict[str, float] = {}
    for name in MIXERS:
        torch.manual_seed(seed)
        model = PixelSequenceModel(name, config["width"], config["heads"], config["depth"])
        opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
        gen = torch.Generator().manual_seed(seed)
        for _ in range(config["epochs"]):
            for idx in batches(len(x_tr), config["batch_size"], gen):
                opt.zero_grad()
                F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
        accuracy[name] = evaluate(model, x_te, y_te)[1]

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = sorted(accuracy, key=accuracy.get)
    ax.barh(names, [accuracy[n] for n in names], color="#4a8")
    ax.axvline(0.1, color="#a00", ls="--", lw=1, label="chance")
    ax.set_xlabel("test accuracy")
    ax.set_xlim(0, 1)
    ax.set_title(f"digits as 16 patch tokens, {config['epochs']} epochs each")
    ax.legend(loc="lower right")
    fig.tight_layout()
    worst = min(accuracy, key=accuracy.get)
    return {
        "metrics": {f"acc_{k}": v for k, v in accuracy.items()},
        "claim_holds": accuracy[worst] > 0.3,
        "summary": ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()),
        "figures": {"mixer_accuracy": fig},
    }
