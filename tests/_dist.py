"""Run one function on 2 gloo processes and hand each rank's result back to the test.

One call per test module (a module-scoped fixture): the worker runs every check of the topic
in one process group and returns a picklable result (tensors, numbers, error messages); the
tests then compare those results with a single-process reference computed in the parent.

Processes are forked (a fork starts in milliseconds; spawn would re-import torch, seconds)
and meet through a file rendezvous in a fresh temporary directory, so parallel runs never
compete for a port. A rank that raises fails the call with its traceback; the others are
killed rather than left waiting in a collective.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
START = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _entry(rank: int, fn: Callable[[int, int, str], Any], world: int, tmp: str,
           backend: str) -> None:
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        scratch = os.path.join(tmp, "scratch")  # shared by the ranks (checkpoints)
        os.makedirs(scratch, exist_ok=True)
        result = fn(rank, world, scratch)
        torch.save(result, os.path.join(tmp, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(fn: Callable[[int, int, str], Any], world: int = WORLD, *, backend: str = "gloo",
        start_method: str = START) -> list[Any]:
    """``[fn(0, world, scratch), ...]``, each rank in its own process of one process group.

    ``scratch`` is a directory every rank sees (for checkpoints). ``fn`` must be a
    module-level function (or a ``functools.partial`` of one: spawn pickles it by name).
    With ``backend="nccl"`` rank r uses GPU r; pass ``start_method="spawn"``, since a fork
    of a process that has used CUDA cannot use it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_entry, args=(fn, world, tmp, backend), nprocs=world, join=True,
                           start_method=start_method)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False)
                for r in range(world)]

