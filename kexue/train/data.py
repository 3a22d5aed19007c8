"""Process-safe data loading: every example exactly once per epoch, randomness tied to the example.

The problem. ``DataLoader(dataset, num_workers=k)`` gives each of the ``k`` worker processes its
own copy of the dataset, and under distributed training every rank builds one more copy. Three
things then go wrong with a naive ``IterableDataset``:

1. **Duplicated data.** Each copy iterates the whole source, so one epoch delivers every example
   ``k × world_size`` times.
2. **Duplicated randomness.** Workers are forked from one parent, so any random state the dataset
   carries (a NumPy ``RandomState``, a ``torch.Generator``, a Python ``random.Random``) is copied
   bit for bit: every worker draws the same "random" augmentations.
3. **No nested processes.** DataLoader workers are daemonic processes, and ``multiprocessing``
   refuses to start children from them ("daemonic processes are not allowed to have children"),
   so a worker cannot hand its preprocessing to a ``multiprocessing.Pool``.

The note solves the Keras version of this (a generator read by several workers must be made
thread-/process-safe). :class:`ShardedIterable` is the PyTorch way:

- **Sharding.** Every (rank, worker) pair is one shard,

      shard = worker_id · world_size + rank,        num_shards = num_workers · world_size,

  and the epoch's order (the index order, optionally permuted; or the stream order) is dealt out
  round-robin: position ``p`` goes to shard ``p mod num_shards``. Every example lands on exactly
  one shard: no padding, no drops. Shard ids are numbered worker-major so that rank ``r`` always
  owns positions ``r, r + world_size, r + 2·world_size, ...`` (the same split as
  ``DistributedSampler``) whatever ``num_workers`` is; its workers then split that further, and
  with ``batch_size=None`` the DataLoader's round-robin over workers hands the rank its positions
  in order.
- **Randomness.** A permutation is drawn from ``(seed, epoch)`` and is the same on every shard.
  ``transform(example, generator)`` gets a fresh ``torch.Generator`` seeded from
  ``(seed, epoch, example index)`` by a keyed BLAKE2b hash. Randomness therefore belongs to the
  example, not to the process or thread that happens to process it: the outputs are identical for
  any number of ranks, workers and threads, and differ between epochs.
- **Threads inside workers.** ``threads > 0`` runs loading and ``transform`` in a
  :class:`~concurrent.futures.ThreadPoolExecutor` inside each worker (threads are allowed where
  processes are not; torch, NumPy and PIL release the GIL in their heavy kernels), in order, with
  at most ``prefetch`` examples in flight.

Example::

    ds = ShardedIterable(images, transform=augment, shuffle=True, seed=0, threads=4)
    loader = DataLoader(ds, batch_size=32, num_workers=8)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            ...

References:
    https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    https://pytorch.org/docs/stable/data.html#multi-process-data-loading
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import struct
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from kexue._checks import check_int

__all__ = ["ShardedIterable", "shard_indices"]

_UINT64 = 2**64
# BLAKE2b personalisation strings (<= 16 bytes) keep the permutation stream and the per-example
# streams apart even when (seed, epoch) coincide with (seed, epoch, index) prefixes.
_PERMUTATION_TAG = b"kexue.data.perm"
_EXAMPLE_TAG = b"kexue.data.item"


def shard_indices(
    n: int, shard: int, num_shards: int, *, permutation: Tensor | None = None
) -> list[int]:
    """The example indices that ``shard`` of ``num_shards`` reads, in order.

    Position ``p`` of the order (``permutation`` if given, else ``0, 1, ..., n-1``) goes to shard
    ``p mod num_shards``, so the shards partition the ``n`` indices exactly; their sizes differ
    by at most one.

    Args:
        n: number of examples, >= 0.
        shard: this shard's id, in ``[0, num_shards)``.
        num_shards: total number of shards, >= 1.
        permutation: optional order of the examples, an integer tensor of shape ``(n,)``.

    Returns:
        ``order[shard::num_shards]`` as a list of ints.

    Raises:
        ValueError: if an argument is out of range or ``permutation`` has the wrong shape.
    """
    n = check_int("n", n, low=0)
    num_shards = check_int("num_shards", num_shards, low=1)
    shard = check_int("shard", shard, low=0, high=num_shards - 1)
    if permutation is None:
        return list(range(shard, n, num_shards))
    if permutation.shape != (n,):
        raise ValueError(f"permutation must have shape ({n},), got {tuple(permutation.shape)}")
    return permutation[shard::num_shards].tolist()


class ShardedIterable(IterableDataset):
    """An ``IterableDataset`` that is exact and reproducible under ranks, workers and threads.

    Two kinds of ``source``:

    - **Sequence-like** (has ``__len__`` and ``__getitem__`` taking ``0 .. len - 1``, e.g. a list
      or a map-style ``Dataset``): example ``i`` is ``source[i]``, read by the shard that owns it
      (the read runs in the thread pool when ``threads > 0``). With ``shuffle=True`` the order is
      ``torch.randperm(len(source))`` drawn from ``(seed, epoch)``, the same on every shard.
    - **Stream** (a zero-argument callable returning a fresh iterable, e.g. one that reads the
      lines of a file): item ``i`` of the stream goes to shard ``i mod num_shards``. Every shard
      reads the whole stream and skips the items of others, so keep the stream cheap (read
      lines) and put the expensive work (decode, tokenise, augment) into ``transform``, which
      runs only on the shard's own items. Each call must yield the same items in the same order.
      A stream cannot be shuffled globally without reading it whole, so ``shuffle=True`` is an
      error; shuffle downstream or shuffle the files.

    ``transform(example, generator)`` receives a fresh ``torch.Generator`` seeded from
    ``(seed, epoch, i)`` where ``i`` is the example's index (its position in the stream, or its
    index into the sequence, *not* its position in the shuffled order). A generator per example,
    rather than one per worker or thread, is what makes the output independent of how many
    ranks, workers and threads share the work and of the order in which threads finish.
    Without ``transform`` the examples are yielded as they are.

    Rank and world size come from the arguments, else from ``torch.distributed`` if it is
    initialised when iteration starts, else from the ``RANK`` and ``WORLD_SIZE`` environment
    variables that ``torchrun`` sets (so a dataset built before ``init_process_group`` is
    sharded too), else ``0`` and ``1``. Since nothing is padded or dropped,
    ranks may yield one example more than others: under DDP, handle the uneven last step (e.g.
    with ``torch.distributed.algorithms.Join``) or drop it.

    ``len(ds)`` is defined only for a sequence source: it is the number of examples *this rank*
    yields per epoch, summed over its DataLoader workers, ``len(range(rank, len(source),
    world_size))``, which is what ``DataLoader`` expects of an ``IterableDataset``. For a stream
    ``len()`` raises ``TypeError``.

    Args:
        source: a sequence-like object, or a zero-argument callable returning an iterable.
        transform: ``transform(example, generator) -> output``, or ``None`` for the identity.
        shuffle: permute a sequence source anew each epoch.
        seed: root of all randomness, an int in ``[0, 2**64)``.
        rank: this process's rank in ``[0, world_size)``; give with ``world_size`` or not at all
            (then it comes from ``torch.distributed`` or ``torchrun``'s environment).
        world_size: number of ranks, >= 1.
        threads: size of the thread pool each worker runs loading and ``transform`` in; ``0``
            runs them in the iterating thread.
        prefetch: most examples submitted to the pool and not yet yielded, >= 1; default
            ``2 * threads``. Values below ``threads`` leave threads idle. Unused when
            ``threads == 0``.

    Raises:
        ValueError: if an argument is of the wrong kind or out of range.

    References:
        https://kexue.fm/archives/6575 (让Keras更酷一些!: 中间变量、权重滑动和安全生成器)
    """

    def __init__(
        self,
        source: Any,
        *,
        transform: Callable[[Any, torch.Generator], Any] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        threads: int = 0,
        prefetch: int | None = None,
    ) -> None:
        super().__init__()
        if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
            stream = False
        elif callable(source):
            stream = True
        else:
            raise ValueError(
                "source must be sequence-like (with __len__ and __getitem__) or a zero-argument "
                f"callable returning an iterable, got {type(source).__name__}"
            )
        if stream and shuffle:
            raise ValueError(
                "shuffle=True needs a sequence-like source: a stream source (a callable) is read "
                "in order and cannot be permuted without reading it whole; shuffle downstream "
                "or pass a sequence"
            )
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        seed = check_int("seed", seed, low=0, high=_UINT64 - 1)
        if (rank is None) != (world_size is None):
            raise ValueError(
                f"rank and world_size must be given together or not at all, got rank={rank!r}, "
                f"world_size={world_size!r}"
            )
        if world_size is not None:
            world_size = check_int("world_size", world_size, low=1)
            rank = check_int("rank", rank, low=0, high=world_size - 1)
        threads = check_int("threads", threads, low=0)
        if prefetch is None:
            prefetch = 2 * threads
        else:
            prefetch = check_int("prefetch", prefetch, low=1)

        self.source = source
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.threads = threads
        self.prefetch = prefetch
        # The epoch lives in shared memory (one int64 holding the epoch's 64 bits), so that
        # DataLoader workers, which iterate their own copy of the dataset, read the value the
        # main process set even when they outlive one epoch (persistent_workers=True): a fork
        # inherits the mapping, and spawn / forkserver workers receive the dataset through
        # torch.multiprocessing, which passes shared tensors by handle.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._stream = stream

    @property
    def epoch(self) -> int:
        """The current epoch (shared with the DataLoader workers); set it with :meth:`set_epoch`."""
        return int(self._epoch.item()) % _UINT64

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: it changes the permutation and every example's generator.

        Call it before creating the epoch's iterator (``iter(loader)`` / ``for ... in
        loader``); each iterator reads the epoch once, when it starts. The epoch is kept in
        shared memory, so DataLoader workers see it too, persistent ones
        (``persistent_workers=True``) included.

        Args:
            epoch: an int in ``[0, 2**64)``.

        Raises:
            ValueError: if ``epoch`` is out of range.
        """
        epoch = check_int("epoch", epoch, low=0, high=_UINT64 - 1)
        self._epoch.fill_(epoch - _UINT64 if epoch >= 2**63 else epoch)

    def _example_seed(self, index: int, epoch: int) -> int:
        """The seed of example ``index``'s generator in ``epoch``, in ``[0, 2**64)``."""
        return _hash_seed(_EXAMPLE_TAG, self.seed, epoch, index)

    def _permutation(self, epoch: int) -> Tensor | None:
        """The order of a shuffled sequence source in ``epoch``, shape ``(len(source),)``.

        ``None`` when not shuffling. Drawn from ``(seed, epoch)`` only, so every shard computes
        the same one.
        """
        if not self.shuffle:
            return None
        seed = _hash_seed(_PERMUTATION_TAG, self.seed, epoch)
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self.source), generator=generator)  # (N,)

    def _shard(self) -> tuple[int, int]:
        """``(shard id, number of shards)`` of the calling process and DataLoader worker."""
        rank, world_size = self._rank_and_world_size()
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return worker_id * world_size + rank, num_workers * world_size

    def __len__(self) -> int:
        if self._stream:
            raise TypeError("ShardedIterable over a stream source has no length")
        rank, world_size = self._rank_and_world_size()
        return len(range(rank, len(self.source), world_size))

    def __iter__(self) -> Iterator[Any]:
        shard, num_shards = self._shard()
        # One read of the shared epoch per iterator: a set_epoch during the epoch cannot mix two.
        jobs = self._jobs(shard, num_shards, self.epoch)
        if self.threads == 0:
            return _run_serial(jobs)
        return _run_threaded(jobs, self.threads, self.prefetch)

    def __repr__(self) -> str:
        kind = "stream" if self._stream else f"sequence of {len(self.source)}"
        return (
            f"{type(self).__name__}({kind}, shuffle={self.shuffle}, seed={self.seed}, "
            f"epoch={self.epoch}, rank={self.rank}, world_size={self.world_size}, "
            f"threads={self.threads})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn/forkserver have no process group: resolve the
        # rank in the parent, where the dataset is pickled for them.
        state = self.__dict__.copy()
        if self.world_size is None:
            state["rank"], state["world_size"] = self._rank_and_world_size()
        return state

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.world_size is not None:
            return self.rank, self.world_size
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return _rank_from_environment()

    def _jobs(
        self, shard: int, num_shards: int, epoch: int
    ) -> Generator[Callable[[], Any], None, None]:
        """Zero-argument callables, one per example of this shard in ``epoch``, in order."""
        if not self._stream:
            indices = shard_indices(
                len(self.source), shard, num_shards, permutation=self._permutation(epoch)
            )
            for index in indices:
                yield functools.partial(self._load, index, epoch)
            return
        items: Iterable[Any] = self.source()
        stream = iter(items)
        try:
            for index, example in itertools.islice(enumerate(stream), shard, None, num_shards):
                yield functools.partial(self._apply, index, example, epoch)
        finally:
            # Close the user's generator (and e.g. its open file) if iteration stops early.
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _load(self, index: int, epoch: int) -> Any:
        return self._apply(index, self.source[index], epoch)

    def _apply(self, index: int, example: Any, epoch: int) -> Any:
        if self.transform is None:
            return example
        generator = torch.Generator().manual_seed(self._example_seed(index, epoch))
        return self.transform(example, generator)


def _rank_from_environment() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as ``torchrun`` sets them, or ``(0, 1)`` when neither is set.

    Raises:
        ValueError: if only one is set, or either is not an integer in range.
    """
    rank, world_size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world_size is None:
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError(
            f"the environment sets RANK={rank!r} and WORLD_SIZE={world_size!r}: torchrun sets "
            "both; set both, or neither, or pass rank= and world_size= to ShardedIterable"
        )
    try:
        rank_i, world_i = int(rank), int(world_size)
    except ValueError:
        raise ValueError(f"environment variables RANK={rank!r} and WORLD_SIZE={world_size!r} "
                         "must be integers, as torchrun sets them") from None
    if world_i < 1 or not 0 <= rank_i < world_i:
        raise ValueError(f"environment variables RANK={rank!r} and WORLD_SIZE={world_size!r} "
                         "need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return rank_i, world_i


def _run_serial(jobs: Generator[Callable[[], Any], None, None]) -> Iterator[Any]:
    with contextlib.closing(jobs):
        for job in jobs:
            yield job()


def _run_threaded(
    jobs: Generator[Callable[[], Any], None, None], threads: int, prefetch: int
) -> Iterator[Any]:
    """Run ``jobs`` on a thread pool, yielding results in order, ``prefetch`` in flight.

    The pool is shut down when the iterator is exhausted, closed, garbage-collected or a job
    raises (the ``finally`` runs on ``GeneratorExit`` too).
    """
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kexue-data")
    window: deque[Future[Any]] = deque()
    try:
        window.extend(pool.submit(job) for job in itertools.islice(jobs, prefetch))
        while window:
            result = window.popleft().result()
            # Refill before yielding so the pool works while the consumer handles `result`.
            window.extend(pool.submit(job) for job in itertools.islice(jobs, 1))
            yield result
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        jobs.close()


def _hash_seed(tag: bytes, *values: int) -> int:
    """A 64-bit seed from non-negative ints < 2**64: keyed BLAKE2b, stable across runs and
    platforms (unlike Python's salted ``hash()``)."""
    digest = hashlib.blake2b(
        struct.pack(f"<{len(values)}Q", *values), digest_size=8, person=tag
    ).digest()
    return int.from_bytes(digest, "little")
