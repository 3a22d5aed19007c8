"""Two-process DDP fit on CPU (gloo) with kexue's Lightning callbacks; run as a script.

    python tests/_lightning_ddp_script.py OUT_DIR

Lightning's ``strategy="ddp"`` starts the second rank by running this same command again, so
this must be a script (under pytest, ``sys.argv`` is pytest). Run alone it launches rank 1
itself; the test starts both ranks at once with ``LOCAL_RANK`` set, as torchrun would. Each
rank writes
``OUT_DIR/rank{r}.pt``: its EMA, its final weights and the weights its validation step saw.
:func:`reference` is the 1-process run on the concatenated batches, in float64, with the
clipping and the EMA written out by hand; tests/test_integrations_lightning.py compares them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

STEPS, PER_RANK, LR, CLIP, DECAY = 4, 4, 0.2, 0.3, 0.7


def data() -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    n = STEPS * 2 * PER_RANK  # every global batch: 2 ranks × PER_RANK samples
    return torch.utils.data.TensorDataset(torch.randn(n, 3, generator=gen),
                                          torch.randn(n, 2, generator=gen))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def reference() -> dict[str, dict[str, torch.Tensor]]:
    """SGD on batches of 2·PER_RANK consecutive samples (a DistributedSampler without shuffle
    gives rank r the samples r, r + 2, ...: each global batch is the union of the ranks'),
    global-norm clipping and ema_t = d·ema_{t-1} + (1 − d)·θ_t, all in float64."""
    model = net().double()
    x, y = (t.double() for t in data().tensors)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    for step in range(STEPS):
        rows = slice(step * 2 * PER_RANK, (step + 1) * 2 * PER_RANK)
        loss = ((model(x[rows]) - y[rows]) ** 2).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        coef = min(1.0, CLIP / (norm.item() + 1e-6))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= LR * coef * g
        for k, p in model.named_parameters():
            ema[k] = DECAY * ema[k] + (1 - DECAY) * p.detach()
    return {"ema": {f"net.{k}": v for k, v in ema.items()},
            "weights": {f"net.{k}": v.detach() for k, v in model.named_parameters()}}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    import lightning.pytorch as pl

    from kexue.integrations.lightning import EMACallback, GradientTransformCallback
    from kexue.train import clip_by_global_norm

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net()
            self.validated: dict[str, torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self(x) - y) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            self.validated = {k: v.detach().clone() for k, v in self.state_dict().items()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

        def train_dataloader(self):
            # Lightning's own DistributedSampler would shuffle the training data.
            sampler = torch.utils.data.DistributedSampler(
                data(), num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                shuffle=False)
            return torch.utils.data.DataLoader(data(), batch_size=PER_RANK, sampler=sampler)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(data(), batch_size=PER_RANK)

    ema_cb = EMACallback(decay=DECAY)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=STEPS,
        use_distributed_sampler=False,
        callbacks=[ema_cb, GradientTransformCallback(clip_by_global_norm(CLIP))],
    )
    model = Module()
    trainer.fit(model)
    torch.save({"ema": ema_cb.ema.state_dict()["shadow"],
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "validated": model.validated},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
