"""Tests for kexue.train.data: exactly-once sharding, per-example randomness, threads in workers.

References are independent of the implementation: ``range(N)`` for coverage, the single-process
run for order and randomness, and plain ``DataLoader`` / ``multiprocessing`` behaviour for the
problems the module exists to solve.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from kexue.train.data import ShardedIterable, shard_indices

N = 103  # not divisible by 2, 3 or 4: shards of unequal size
# fork starts a worker in ~10 ms (spawn re-imports torch: seconds); fall back where unavailable.
CONTEXT = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _collect(dataset: IterableDataset, num_workers: int) -> list:
    """Everything ``dataset`` yields in this process, through a real DataLoader if workers > 0."""
    if num_workers == 0:
        return list(dataset)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=num_workers, multiprocessing_context=CONTEXT
    )
    return list(loader)


def _collect_ranks(make, world_size: int, num_workers: int) -> list[list]:
    """Outputs of ranks 0..world_size-1, simulated one after another in this process."""
    return [_collect(make(rank, world_size), num_workers) for rank in range(world_size)]


def _noisy(example, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """A random augmentation: the example's index and two uniform draws from its generator."""
    return int(example), torch.rand(2, generator=generator)


def _read_ints(path: Path):
    """A stream source: one int per line of a text file."""
    with open(path) as f:
        for line in f:
            yield int(line)


@pytest.fixture
def stream(tmp_path: Path):
    path = tmp_path / "examples.txt"
    path.write_text("".join(f"{i}\n" for i in range(N)))
    return functools.partial(_read_ints, path)


def _as_dict(outputs: list) -> dict[int, torch.Tensor]:
    """``{index: noise}`` from ``_noisy`` outputs, checking no index appears twice."""
    pairs = [(int(index), noise) for index, noise in outputs]
    assert len({index for index, _ in pairs}) == len(pairs), "an example was delivered twice"
    return dict(pairs)


def _assert_same_noise(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    keys = sorted(expected)
    torch.testing.assert_close(
        torch.stack([actual[k] for k in keys]), torch.stack([expected[k] for k in keys])
    )


# --------------------------------------------------------------------------- the problem is real


class _Naive(IterableDataset):
    def __iter__(self):
        return iter(range(N))


def test_naive_iterable_duplicates_each_example_per_worker():
    # The failure ShardedIterable exists to prevent: every worker iterates its own full copy.
    counts = Counter(_collect(_Naive(), num_workers=2))
    assert set(counts.values()) == {2}


class _TriesPool(IterableDataset):
    """Yields the outcome of starting a process pool from inside a DataLoader worker."""

    def __iter__(self):
        try:
            with multiprocessing.Pool(1) as pool:
                pool.map(abs, [1])
        except Exception as error:  # reported to the parent process, not handled
            yield f"{type(error).__name__}: {error}"
        else:
            yield "ok"


def test_process_pool_inside_dataloader_worker_fails():
    # Why ShardedIterable parallelises with threads: workers are daemonic, so no children.
    [outcome] = _collect(_TriesPool(), num_workers=1)
    assert outcome.startswith("AssertionError") and "daemonic" in outcome, outcome


# ------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize("kind", ["sequence", "stream"])
def test_exactly_once_over_two_ranks_and_two_workers(kind, stream):
    source = list(range(N)) if kind == "sequence" else stream

    def make(rank, world_size):
        return ShardedIterable(
            source, shuffle=kind == "sequence", seed=3, rank=rank, world_size=world_size
        )

    per_rank = _collect_ranks(make, world_size=2, num_workers=2)
    everything = [int(x) for outputs in per_rank for x in outputs]
    assert sorted(everything) == list(range(N))  # each example once: no padding, no drops
    # Each rank's share is the same with or without workers, in the same order.
    assert per_rank == _collect_ranks(make, world_size=2, num_workers=0)
    if kind == "sequence":  # len() is what this rank yields, as DataLoader expects
        assert [len(make(rank, 2)) for rank in range(2)] == [len(o) for o in per_rank] == [52, 51]


@pytest.mark.parametrize("world_size, num_workers", [(1, 1), (3, 2), (4, 1)])
def test_exactly_once_for_other_layouts(world_size, num_workers):
    def make(rank, world_size):
        return ShardedIterable(range(N), shuffle=True, rank=rank, world_size=world_size)

    per_rank = _collect_ranks(make, world_size, num_workers)
    assert sorted(x for outputs in per_rank for x in outputs) == list(range(N))


def test_more_shards_than_examples():
    def make(rank, world_size):
        return ShardedIterable(list(range(3)), rank=rank, world_size=world_size)

    per_rank = _collect_ranks(make, world_size=2, num_workers=2)  # 4 shards, 3 examples
    assert sorted(x for outputs in per_rank for x in outputs) == [0, 1, 2]


@pytest.fixture
def rank_1_of_3(monkeypatch):
    """torch.distributed as seen by rank 1 of 3, in this process only."""
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)


def test_rank_from_torch_distributed(rank_1_of_3):
    ds = ShardedIterable(list(range(10)))
    assert list(ds) == [1, 4, 7] and len(ds) == 3


def test_rank_from_torch_distributed_reaches_spawned_workers(rank_1_of_3):
    # Spawned workers have no process group: the rank must be resolved before pickling.
    loader = DataLoader(ShardedIterable(list(range(10))), batch_size=None, num_workers=2,
                        multiprocessing_context="spawn")
    assert sorted(int(x) for x in loader) == [1, 4, 7]


def test_defaults_to_a_single_rank():
    assert list(ShardedIterable(list(range(10)))) == list(range(10))


def test_shard_indices_by_hand():
    assert shard_indices(10, 1, 3) == [1, 4, 7]
    assert shard_indices(10, 0, 1) == list(range(10))
    assert shard_indices(2, 3, 4) == []
    assert shard_indices(4, 0, 2, permutation=torch.tensor([3, 1, 2, 0])) == [3, 2]
    assert shard_indices(4, 1, 2, permutation=torch.tensor([3, 1, 2, 0])) == [1, 0]


@pytest.mark.parametrize("n, num_shards", [(0, 1), (1, 4), (17, 4), (103, 6)])
def test_shard_indices_partition(n, num_shards):
    shards = [shard_indices(n, s, num_shards) for s in range(num_shards)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


# ------------------------------------------------------------------------------------- shuffle


def _order(seed: int, epoch: int) -> list[int]:
    ds = ShardedIterable(list(range(N)), shuffle=True, seed=seed)
    ds.set_epoch(epoch)
    return list(ds)


def test_shuffle_depends_on_seed_and_epoch_only():
    first = _order(seed=0, epoch=0)
    assert sorted(first) == list(range(N)) and first != list(range(N))
    assert _order(seed=0, epoch=0) == first  # a fresh object, same (seed, epoch)
    assert _order(seed=0, epoch=1) != first
    assert _order(seed=1, epoch=0) != first


def test_shuffle_changes_with_set_epoch_on_the_same_object():
    ds = ShardedIterable(list(range(N)), shuffle=True)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append(list(ds))
    assert len({tuple(o) for o in orders}) == 3
    assert all(sorted(o) == list(range(N)) for o in orders)


def test_shuffle_permutation_is_shared_by_all_shards():
    # The single-shard order is the reference; each of 2 ranks x 2 workers must deal from it.
    reference = _order(seed=5, epoch=2)

    def make(rank, world_size):
        ds = ShardedIterable(list(range(N)), shuffle=True, seed=5, rank=rank, world_size=2)
        ds.set_epoch(2)
        return ds

    rank0, rank1 = _collect_ranks(make, world_size=2, num_workers=2)
    assert rank0 == reference[0::2]
    assert rank1 == reference[1::2]


def test_shuffle_first_position_is_roughly_uniform():
    # Over 400 epochs each of 4 examples should come first ~100 times; chi-square with 3 degrees
    # of freedom < 16.27 fails with probability 0.001 for a uniform shuffle (fixed seed: stable).
    ds = ShardedIterable(list(range(4)), shuffle=True, seed=11)
    firsts = Counter()
    for epoch in range(400):
        ds.set_epoch(epoch)
        firsts[next(iter(ds))] += 1
    chi2 = sum((firsts[k] - 100) ** 2 / 100 for k in range(4))
    assert chi2 < 16.27, firsts


# --------------------------------------------------------------------------- per-example noise


def _reference_noise(source=None, *, seed: int = 0, epoch: int = 0) -> dict:
    ds = ShardedIterable(list(range(N)) if source is None else source, transform=_noisy, seed=seed)
    ds.set_epoch(epoch)
    return _as_dict(list(ds))


@pytest.mark.parametrize(
    "world_size, num_workers, threads",
    [(1, 0, 3), (1, 2, 0), (2, 2, 0), (2, 2, 2), (3, 0, 1)],
    ids=["threads", "workers", "ranks-workers", "ranks-workers-threads", "ranks-thread"],
)
def test_random_transform_is_independent_of_the_layout(world_size, num_workers, threads):
    expected = _reference_noise()

    def make(rank, world_size):
        return ShardedIterable(
            list(range(N)),
            transform=_noisy,
            shuffle=True,  # randomness is keyed by the example, not its position
            rank=rank,
            world_size=world_size,
            threads=threads,
        )

    per_rank = _collect_ranks(make, world_size, num_workers)
    _assert_same_noise(_as_dict([x for outputs in per_rank for x in outputs]), expected)


def test_random_transform_of_a_stream_is_independent_of_the_layout(stream):
    expected = _reference_noise(stream)

    def make(rank, world_size):
        return ShardedIterable(
            stream, transform=_noisy, rank=rank, world_size=world_size, threads=2
        )

    per_rank = _collect_ranks(make, world_size=2, num_workers=2)
    _assert_same_noise(_as_dict([x for outputs in per_rank for x in outputs]), expected)


def test_random_transform_differs_between_examples_epochs_and_seeds():
    base = _reference_noise()
    noise = torch.stack([base[k] for k in range(N)])  # (N, 2)
    assert len(set(noise.flatten().tolist())) == noise.numel()  # no shared or copied streams
    for other in (_reference_noise(epoch=1), _reference_noise(seed=1)):
        assert all(not torch.equal(base[k], other[k]) for k in range(N))


def test_random_transform_ignores_global_rng():
    torch.manual_seed(123)
    first = _reference_noise()
    torch.manual_seed(456)
    _assert_same_noise(_reference_noise(), first)


# ----------------------------------------------------------------------------------- threads


def _slow_identity(example, generator):
    time.sleep(0.03 * torch.rand(1, generator=generator).item())  # finishes out of order
    return example


def test_threads_keep_the_order():
    ds = ShardedIterable(list(range(40)), transform=_slow_identity, threads=4)
    assert list(ds) == list(range(40))


def test_threads_inside_dataloader_workers_match_serial():
    expected = _reference_noise()
    ds = ShardedIterable(list(range(N)), transform=_noisy, threads=2)
    outputs = _collect(ds, num_workers=2)
    assert [int(i) for i, _ in outputs] == list(range(N))  # in order, no daemonic crash
    _assert_same_noise(_as_dict(outputs), expected)


def test_thread_pool_runs_at_most_threads_at_once():
    lock, active, peak = threading.Lock(), [0], [0]

    def transform(example, generator):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return example

    ds = ShardedIterable(list(range(12)), transform=transform, threads=3, prefetch=8)
    assert list(ds) == list(range(12))
    assert peak[0] <= 3  # never more than `threads` at once (how many overlap is up to the OS)


def test_prefetch_bounds_the_examples_in_flight():
    read = [0]

    def source():
        for i in range(20):
            read[0] += 1
            yield i

    ds = ShardedIterable(source, transform=lambda x, g: x, threads=2, prefetch=3)
    it = iter(ds)
    for consumed in range(1, 21):
        assert next(it) == consumed - 1
        assert read[0] == min(20, consumed + 3)
    assert list(it) == []


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kexue-data")]


@pytest.mark.parametrize("threads", [0, 3])
def test_closing_early_closes_the_stream_and_the_pool(threads):
    closed, streams = [], []

    def lines():
        try:
            yield from range(50)
        finally:
            closed.append(True)

    def source():
        streams.append(lines())  # a live reference: only an explicit close() finalises it
        return streams[-1]

    it = iter(ShardedIterable(source, transform=_slow_identity, threads=threads))
    assert [next(it) for _ in range(5)] == list(range(5))
    assert bool(_pool_threads()) == (threads > 0)
    it.close()
    assert not _pool_threads()
    assert closed == [True]  # the user's stream was closed too


def test_thread_pool_shuts_down_when_garbage_collected():
    it = iter(ShardedIterable(list(range(50)), transform=_slow_identity, threads=3))
    next(it)
    assert _pool_threads()
    del it  # CPython finalises the generator at once, running its `finally`
    assert not _pool_threads()


def test_error_in_transform_propagates_and_stops_the_pool():
    def transform(example, generator):
        if example == 7:
            raise RuntimeError("bad example 7")
        return example

    it = iter(ShardedIterable(list(range(20)), transform=transform, threads=2))
    with pytest.raises(RuntimeError, match="bad example 7"):
        list(it)
    assert not _pool_threads()


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"source": 5}, "source"),
        ({"transform": "not callable"}, "transform"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"threads": -1}, "threads"),
        ({"threads": 1.0}, "threads"),
        ({"threads": 2, "prefetch": 0}, "prefetch"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": -1, "world_size": 2}, "rank"),
        ({"rank": 1}, "world_size"),
        ({"world_size": 2}, "rank"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    kwargs = {"source": list(range(4)), **kwargs}
    with pytest.raises(ValueError, match=name):
        ShardedIterable(**kwargs)


def test_shuffled_stream_is_rejected_with_a_reason(stream):
    with pytest.raises(ValueError, match="shuffle.*stream"):
        ShardedIterable(stream, shuffle=True)


@pytest.mark.parametrize("epoch", [-1, 0.5, 2**64])
def test_bad_epoch(epoch):
    with pytest.raises(ValueError, match="epoch"):
        ShardedIterable(list(range(4))).set_epoch(epoch)


def test_stream_has_no_length(stream):
    with pytest.raises(TypeError, match="no length"):
        len(ShardedIterable(stream))


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((-1, 0, 1), {}, "n"),
        ((4, 0, 0), {}, "num_shards"),
        ((4, 2, 2), {}, "shard"),
        ((4, 0, 2), {"permutation": torch.arange(5)}, "permutation"),
    ],
)
def test_shard_indices_bad_arguments(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        shard_indices(*args, **kwargs)


def _noisy_with_pid(example, generator: torch.Generator) -> tuple[int, torch.Tensor, int]:
    """``_noisy`` plus the id of the process that ran it."""
    return (*_noisy(example, generator), os.getpid())


@pytest.mark.parametrize(
    "context", [CONTEXT, pytest.param("spawn", marks=pytest.mark.slow)]  # spawn: seconds
)
def test_persistent_workers_follow_set_epoch(context):
    # Persistent workers keep the dataset copy they took at start; the epoch set in the main
    # process must still reach them. The reference is the single-process run of each epoch.
    ds = ShardedIterable(list(range(N)), shuffle=True, transform=_noisy_with_pid)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context=context
    )
    runs, pids = [], []
    for epoch in range(2):
        ds.set_epoch(epoch)
        out = list(loader)
        runs.append(out)
        pids.append({pid for _, _, pid in out})
    assert pids[0] == pids[1] and len(pids[0]) == 2 and os.getpid() not in pids[0]  # same workers
    orders = [[i for i, _, _ in out] for out in runs]
    for epoch, (order, out) in enumerate(zip(orders, runs, strict=True)):
        assert len(order) == N and sorted(order) == list(range(N))  # exactly once
        assert order == _order(seed=0, epoch=epoch)
        noise = _as_dict([(i, x) for i, x, _ in out])
        expected = _reference_noise(epoch=epoch)
        assert all(torch.equal(noise[i], expected[i]) for i in range(N))
    assert orders[0] != orders[1]


def test_epoch_round_trips_all_64_bits_and_survives_pickling():
    import copy
    import pickle

    ds = ShardedIterable(list(range(N)), shuffle=True)
    for epoch in (0, 2**63 - 1, 2**63, 2**64 - 1):
        ds.set_epoch(epoch)
        assert ds.epoch == epoch
    assert _order(seed=0, epoch=2**63) != _order(seed=0, epoch=2**63 - 1)
    ds.set_epoch(7)
    for clone in (pickle.loads(pickle.dumps(ds)), copy.deepcopy(ds)):
        assert clone.epoch == 7 and list(clone) == list(ds)


# ------------------------------------------------------------------- torchrun's environment


@pytest.fixture
def torchrun_rank_1_of_3(monkeypatch):
    """The environment torchrun gives rank 1 of 3, with no process group initialised."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")


def test_rank_from_torchrun_environment(torchrun_rank_1_of_3):
    assert not torch.distributed.is_initialized()
    ds = ShardedIterable(list(range(10)))
    assert list(ds) == [1, 4, 7] and len(ds) == 3
    # workers inherit it, and the arguments still win
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=CONTEXT)
    assert sorted(int(x) for x in loader) == [1, 4, 7]
    assert list(ShardedIterable(list(range(4)), rank=0, world_size=1)) == [0, 1, 2, 3]


@pytest.mark.parametrize("env, match", [
    ({"RANK": "1"}, "set both"),
    ({"WORLD_SIZE": "2"}, "set both"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE"),
])
def test_bad_torchrun_environment_is_a_clear_error(monkeypatch, env, match):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        list(ShardedIterable(list(range(4))))
