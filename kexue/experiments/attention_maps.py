"""Claim: attention maps of any model that calls SDPA can be captured without editing it.

Trains a two-layer transformer on sklearn's real digits, reading each 8×8 image as 8 tokens
(one per pixel row), built from kexue's own pieces: :class:`kexue.attention.Block` around
:class:`kexue.attention.DenseAttention`, whose attention goes through
``F.scaled_dot_product_attention`` and never materialises the probabilities.
``kexue.train.capture(model, "blocks.*.mixer", attention=True)`` then records every layer's
attention probabilities; they are checked against softmax(QKᵀ/√d) recomputed in float64 from
each block's captured normalised input and its mixer's query/key weights, and drawn. An
identity to float precision, so no threshold and no control.
Note: https://kexue.fm/archives/6575
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from kexue._seeds import derive_seed
from kexue.attention import Block, DenseAttention
from kexue.experiments._common import batches, digits, evaluate
from kexue.experiments.base import Anchor, Context, Experiment, Result
from kexue.train import capture

TOLERANCE = 1e-5  # float32 attention against its float64 recomputation


@dataclass(frozen=True)
class Config:
    epochs: int = 15
    width: int = 32
    heads: int = 2
    depth: int = 2
    lr: float = 3e-3


class RowTransformer(nn.Module):
    """8×8 digit -> 8 row tokens -> kexue attention blocks -> mean-pool -> 10 classes."""

    def __init__(self, width: int, heads: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.pos = nn.Parameter(torch.zeros(8, width))
        self.blocks = nn.ModuleList(
            Block(width, DenseAttention(width, heads), mlp_ratio=2) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.view(-1, 8, 8)) + self.pos  # (B, 8 rows, D)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))


def _reference(attn: DenseAttention, x_in: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√Dh) in float64 from the mixer's input and its own q/k weights."""
    w, bias = attn.qkv.weight.double(), attn.qkv.bias.double()
    b, t, _ = x_in.shape
    q, k, _ = (x_in.double() @ w.T + bias).view(b, t, 3, attn.heads, attn.head_dim).unbind(2)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / attn.head_dim ** 0.5  # (B, H, T, T)
    return scores.softmax(-1)


def run(config: Config, ctx: Context) -> Result:
    x_tr, y_tr, x_te, y_te = map(ctx.put, digits(ctx.seed))
    torch.manual_seed(derive_seed(ctx.seed, "init"))
    model = ctx.place(RowTransformer(config.width, config.heads, config.depth))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    gen = ctx.stream("batches")
    for _ in range(config.epochs):
        for idx in batches(len(x_tr), 32, gen):
            opt.zero_grad()
            with ctx.autocast():
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
    model.eval()
    with ctx.autocast():
        _, acc = evaluate(model, x_te, y_te)

    # the identity is checked in full precision, whatever the training's precision was
    sample = x_te[:64]
    with torch.no_grad():
        plain = model(sample)
        # the mixers' maps, and apart (no attention asked of them) their inputs
        with capture(model, "blocks.*.norm1") as inputs, \
                capture(model, "blocks.*.mixer", attention=True) as cap:
            captured_out = model(sample)
    # Independent float64 reference from each block's captured mixer input.
    err = max(
        (cap.attention[f"blocks.{i}.mixer"][0].double()
         - _reference(block.mixer, inputs.outputs[f"blocks.{i}.norm1"][0])).abs().max().item()
        for i, block in enumerate(model.blocks))
    unchanged = torch.equal(plain, captured_out)

    fig, axes = plt.subplots(config.depth, config.heads + 1,
                             figsize=(2.4 * (config.heads + 1), 2.4 * config.depth),
                             squeeze=False)
    j = 0
    image = (sample[j].view(8, 8) - sample[j].min()).cpu().numpy()
    for i in range(config.depth):
        axes[i, 0].imshow(image, cmap="gray_r")
        axes[i, 0].set_title(f"digit {int(y_te[j])}" if i == 0 else "")
        axes[i, 0].set_ylabel(f"layer {i}")
        probs = cap.attention[f"blocks.{i}.mixer"][0][j]  # (H, T, T)
        for h in range(config.heads):
            axes[i, h + 1].imshow(probs[h].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
            axes[i, h + 1].set_title(f"head {h}: row → row")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()

    return Result(
        metrics={"test_acc": acc, "max_abs_err_vs_float64": err, "outputs_unchanged": unchanged},
        holds=err < TOLERANCE and unchanged,
        summary=(f"test accuracy {acc:.3f}; captured vs float64 softmax max |Δ| {err:.1e}; "
                 f"outputs bit-identical with capture: {unchanged}"),
        figures={"attention_maps": fig},
    )


QUICK = Config()
EXPERIMENT = Experiment(
    name="attention_maps",
    title="Capturing SDPA attention maps without model edits (sklearn digits)",
    note="https://kexue.fm/archives/6575",
    claim=("captured attention probabilities of kexue's own DenseAttention equal "
           "softmax(QKᵀ/√d) recomputed in float64, and the model's outputs are unchanged by "
           "capturing"),
    threshold=None,  # an identity checked to float32 precision, not a tunable line
    anchor=Anchor(
        None,
        source=("an identity checked to float precision: the note "
                "(https://kexue.fm/archives/6575) shows how to read intermediate variables such "
                "as an attention matrix out of a model, and measures nothing"),
    ),
    quick=QUICK,
    full=replace(QUICK, epochs=60),
    run=run,
    devices=("cpu", "cuda"),
    precisions=("fp32", "bf16"),  # the training; the capture is checked in fp32
)
