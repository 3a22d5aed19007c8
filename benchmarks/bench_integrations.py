"""kexue's Lightning EMA callback beside Lightning's own and torch's, per optimizer step.

    python benchmarks/bench_integrations.py [--quick] [--device cpu|cuda] [--threads N]

Writes results/integrations.json and .md (results/integrations-cuda.* on a GPU). Every
figure is a median over timed runs after warm-up; the candidates of one comparison run in the
same process, interleaved in rounds. The models are 210 × ``Linear(w, w)`` inside a
LightningModule: 420 tensors, 48.1M parameters (w = 478) or 15.1k (w = 8).

a. EMA after one optimizer step (decay 0.999), what each one does per step, the optimizer
   step itself left out:
   - ``kexue EMACallback``: its optimizer step post-hook, then ``on_train_batch_end``, which
     calls :meth:`kexue.train.EMA.update` (one cached ``_foreach_lerp_``), and that update
     alone;
   - ``lightning EMAWeightAveraging``: ``on_train_batch_end`` with ``trainer.global_step``
     advanced, i.e. ``AveragedModel.update_parameters`` with its per-tensor ``avg_fn``;
   - ``torch AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(d))``: ``update_parameters``;
   - the floor: one ``torch._foreach_lerp_(shadow, params, 1 − d)`` over cached lists.
b. Validation swap, enter and leave: kexue's ``on_validation_start`` + ``on_validation_end``
   (storage exchange) and Lightning's ``on_validation_epoch_start`` + ``_end`` (a clone and
   two copies per tensor each way), against ``EMA.swapped()`` alone (the floor).

The callbacks are driven by their hooks with a stand-in trainer holding only what the hooks
read (``global_step``, ``optimizers``), so that Trainer overhead, equal for all, is left out.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    measure_interleaved,
    model_label,
    parser,
    peer_version,
    run_cases,
    setup,
    table_rows,
)

Row = dict[str, Any]
DECAY = 0.999


def _stack(width: int, layers: int, device: torch.device) -> Any:
    import lightning.pytorch as pl

    class Stack(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    torch.manual_seed(0)
    return Stack().to(device)


def bench_update(device: torch.device, width: int, layers: int,
                 timing: dict[str, Any]) -> list[Row]:
    from lightning.pytorch.callbacks import EMAWeightAveraging
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from kexue.integrations.lightning import EMACallback

    module = _stack(width, layers, device)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    trainer = types.SimpleNamespace(global_step=0, optimizers=[optimizer])

    ours = EMACallback(decay=DECAY)
    ours.on_train_start(trainer, module)

    def kexue_step() -> None:
        ours._after_step(optimizer, (), {})  # what the step post-hook does
        ours.on_train_batch_end(trainer, module, None, None, 0)

    theirs = EMAWeightAveraging(decay=DECAY)
    theirs.setup(trainer, module, "fit")

    def lightning_step() -> None:
        trainer.global_step += 1
        theirs.on_train_batch_end(trainer, module, None, None, 0)

    averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    live = [p.detach() for p in module.parameters()]
    shadow = [t.clone() for t in live]
    fns = {
        "foreach_lerp_ floor": lambda: torch._foreach_lerp_(shadow, live, 1 - DECAY),
        "kexue EMACallback": kexue_step,
        "kexue EMA.update() alone": ours.ema.update,
        "lightning EMAWeightAveraging": lightning_step,
        "torch AveragedModel(multi_avg_fn)": lambda: averaged.update_parameters(module),
    }
    extra = {name: {"baseline": "foreach_lerp_ floor"} for name in fns if "floor" not in name}
    extra["kexue EMACallback"]["target_ratio"] = 1.10
    rows = table_rows("EMA per optimizer step", model_label(module),
                      measure_interleaved(fns, **timing), **extra)
    ours.on_train_end(trainer, module)
    return rows


def bench_swap(device: torch.device, width: int, layers: int,
               timing: dict[str, Any]) -> list[Row]:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from kexue.integrations.lightning import EMACallback

    module = _stack(width, layers, device)
    trainer = types.SimpleNamespace(global_step=0, optimizers=[])
    ours = EMACallback(decay=DECAY)
    ours.on_train_start(trainer, module)
    theirs = EMAWeightAveraging(decay=DECAY)
    theirs.setup(trainer, module, "fit")

    def kexue_swap() -> None:
        ours.on_validation_start(trainer, module)
        ours.on_validation_end(trainer, module)

    def lightning_swap() -> None:
        theirs.on_validation_epoch_start(trainer, module)
        theirs.on_validation_epoch_end(trainer, module)

    def ema_swapped() -> None:
        with ours.ema.swapped():
            pass

    base = "kexue EMA.swapped() alone"
    fns = {base: ema_swapped, "kexue EMACallback": kexue_swap,
           "lightning EMAWeightAveraging": lightning_swap}
    extra = {name: {"baseline": base} for name in fns if name != base}
    extra["kexue EMACallback"]["target_ratio"] = 1.10
    return table_rows("validation swap (in + out)", model_label(module),
                      measure_interleaved(fns, **timing), **extra)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    device = setup(args)
    timing = (dict(warmup=2, repeats=15, min_time=0.01) if args.quick
              else dict(warmup=3, repeats=61, min_time=0.05))
    notes = [f"peers: lightning {peer_version('lightning')} "
             "(lightning.pytorch.callbacks.EMAWeightAveraging); torch "
             f"{torch.__version__} (torch.optim.swa_utils.AveragedModel)",
             f"mode: {'--quick' if args.quick else 'full'}, threads {torch.get_num_threads()}",
             "callbacks driven by their hooks with a stand-in trainer (global_step, "
             "optimizers); the optimizer step itself is not timed",
             "on shared CPU cores the medians move with other tenants' load; the paired ratio "
             "and the fastest run (min) are the steadier figures"]
    cases = [(bench_update, (478, 210)), (bench_update, (8, 210)),  # 48.1M and 15.1k params
             (bench_swap, (478, 210)), (bench_swap, (8, 210))]
    run_cases("integrations", cases, device, timing, notes)


if __name__ == "__main__":
    main()
