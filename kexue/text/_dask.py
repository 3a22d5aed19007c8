"""The Dask driver: exact n-gram counting on a ``dask.distributed`` cluster.

The counting engine (:mod:`kexue.text._ngram_engine`) is a map over shards and an exact merge
of integer counts, written against the :class:`~kexue.text._drivers.Driver` protocol; this
module implements it with a ``distributed.Client`` (a cluster on Kubernetes, YARN, an HPC
queue, or a ``LocalCluster`` on one machine):

* ``map``: one task per shard (``pure=False``: the same shard is read again at each level). A
  shard's later tasks are placed on the worker that ran its first one (``workers=[address],
  allow_other_workers=True``), so a worker finds the spill it kept of that shard; if that worker
  is gone the task runs elsewhere and the engine recomputes the spill from the shard.
* ``reduce``: a balanced tree of merge tasks on futures, built as results come in: two values
  on the same worker holding as many leaves are merged there (no transfer), the few left are
  merged pairwise; the partial tables stay on the workers, only the final value comes back.
* ``broadcast``: ``client.scatter(obj, broadcast=True)`` (the survivors of a level, the
  alphabet): sent once to every worker, referred to by a future in the tasks.
* ``gather``: ``client.gather``.

With file shards (:mod:`kexue.text.shards`) only the shards' descriptions (paths and byte
ranges) go through the scheduler; the workers read the text themselves.

``dask`` is imported only here, and this module only when a Dask scheduler is asked for, so
:mod:`kexue.text` works without it installed.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    https://distributed.dask.org/en/stable/locality.html (worker restrictions)
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["CONNECT_TIMEOUT", "DaskDriver", "check_scheduler", "dask_driver"]

CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler (and to wait for its first worker)
_INSTALL = "pip install 'kexue[dask]'"
_LOCAL = re.compile(r"local:([0-9]+)")
_TCP = re.compile(r"tcp://\S+:[0-9]{1,5}")
_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"the Dask backend needs dask.distributed, which is not installed: {_INSTALL} "
            f"({exc})"
        ) from exc
    return distributed


class DaskDriver:
    """The :class:`~kexue.text._drivers.Driver` of a ``distributed.Client`` (see the module
    docstring). Handles are futures.

    Args:
        client: a connected ``distributed.Client``; it is not closed here.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._home: dict[str, str] = {}  # shard key -> the worker that ran its first task
        self._first: dict[str, Any] = {}  # shard key -> its first future, until it is placed

    def __repr__(self) -> str:
        return f"DaskDriver({self.client.scheduler.address!r})"

    @property
    def parallelism(self) -> int:
        """Tasks that run at once: the cluster's worker threads (at least 1)."""
        return max(sum(self.client.nthreads().values()), 1)

    def _settle(self) -> None:
        """Learn where the first tasks of shards ran (and stop holding their results)."""
        done = {k: f for k, f in self._first.items() if f.done()}
        if not done:
            return
        where = self.client.who_has(list(done.values()))
        for key, future in done.items():
            workers = where.get(future.key) or ()
            if workers:
                self._home[key] = sorted(workers)[0]
            del self._first[key]

    def map(self, fn: Callable[..., Any], shards: Sequence[Any], *args: Any) -> list[Any]:
        """One task ``fn(shard, *args)`` per shard, on the shard's worker where known."""
        self._settle()
        futures = []
        for shard in shards:
            key = shard.key
            home = self._home.get(key)
            place = {} if home is None else {"workers": [home], "allow_other_workers": True}
            future = self.client.submit(fn, shard, *args, pure=False, **place)
            if home is None and key not in self._first:
                self._first[key] = future
            futures.append(future)
        return futures

    def reduce(self, fn: Callable[[Any, Any], Any], handles: list[Any]) -> Any:
        """Fold ``handles`` with ``fn`` as a balanced tree of tasks; return the value.

        The tree is built as results come in, like a binary counter per worker: two values
        that lie on the same worker and hold the same number of leaves (1, 2, 4, ...) are
        merged by a task on that worker (no transfer); what is left, at most about log₂ k
        values per worker, is merged pairwise, smallest first. So every value is merged
        O(log k) times; the pairing depends on timing, which an associative and commutative
        ``fn`` makes irrelevant (exact integer counts).

        Raises:
            ValueError: if ``handles`` is empty.
            Exception: whatever a map or merge task raised (e.g. a worker's read error).
        """
        futures = list(handles)
        if not futures:
            raise ValueError("handles must not be empty")
        distributed = _distributed()
        rank = {f.key: 0 for f in futures}  # log₂ of the leaves merged into a value
        waiting: dict[tuple[str, int], Any] = {}  # (worker, rank) -> a value awaiting a partner
        flow = distributed.as_completed(futures)
        for batch in flow.batches():
            for future in batch:
                if future.status == "error":
                    future.result()  # raises the task's own error
            where = self.client.who_has(batch)
            for future in batch:
                holders = where.get(future.key) or ()
                home = sorted(holders)[0] if holders else ""
                r = rank.pop(future.key)
                partner = waiting.pop((home, r), None)
                if partner is None:
                    waiting[home, r] = future
                    rank[future.key] = r
                    continue
                del rank[partner.key]
                place = {"workers": [home], "allow_other_workers": True} if home else {}
                merged = self.client.submit(fn, partner, future, pure=False, **place)
                rank[merged.key] = r + 1
                flow.add(merged)
        level = [f for (_, r), f in sorted(waiting.items(), key=lambda kv: kv[0][1])]
        while len(level) > 1:
            pairs = [self.client.submit(fn, level[i], level[i + 1], pure=False)
                     for i in range(0, len(level) - 1, 2)]
            level = pairs + level[len(pairs) * 2 :]
        value = self.client.gather(level[0])
        self._settle()
        return value

    def broadcast(self, obj: Any) -> Any:
        """``obj`` on every worker, as a future (a list of one keeps a container whole)."""
        [future] = self.client.scatter([obj], broadcast=True, hash=False)
        return future

    def gather(self, handles: list[Any]) -> list[Any]:
        return list(self.client.gather(list(handles)))

    def as_completed(self, handles: list[Any]) -> Iterator[tuple[int, Any]]:
        """``(index, value)`` of each handle as its task finishes."""
        index = {h.key: i for i, h in enumerate(handles)}
        for future, value in _distributed().as_completed(handles, with_results=True):
            yield index[future.key], value


def check_scheduler(scheduler: object) -> object:
    """``scheduler`` if it is ``"local:N"`` (N ≥ 1), ``"tcp://HOST:PORT"`` or not a string
    (a client, checked on use); else a ValueError naming it. Imports nothing."""
    if isinstance(scheduler, str):
        m = _LOCAL.fullmatch(scheduler)
        if not ((m is not None and int(m[1]) >= 1) or _TCP.fullmatch(scheduler)):
            raise ValueError(
                "scheduler must be 'local:N' (N >= 1 worker processes here) or "
                f"'tcp://HOST:PORT' (a running Dask scheduler), got {scheduler!r}"
            )
    return scheduler


@contextlib.contextmanager
def dask_driver(scheduler: Any, *, timeout: float | None = None) -> Iterator[DaskDriver]:
    """A :class:`DaskDriver` for ``scheduler``, as a context manager.

    * ``"local:N"``: a ``LocalCluster`` of N worker processes with one thread each, started on
      entry and closed on exit;
    * ``"tcp://HOST:PORT"``: a client of that scheduler (closed on exit; the cluster stays);
    * a ``distributed.Client``: used as it is (neither closed nor changed).

    Raises:
        ValueError: on any other ``scheduler``.
        ImportError: if dask.distributed is not installed (names the extra to install).
        ConnectionError: if the scheduler cannot be reached, or has no worker, within
            ``timeout`` seconds (default :data:`CONNECT_TIMEOUT`; names the address).
    """
    check_scheduler(scheduler)
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    distributed = _distributed()
    if not isinstance(scheduler, str):
        if not isinstance(scheduler, distributed.Client):
            raise ValueError(
                "scheduler must be 'local:N', 'tcp://HOST:PORT' or a distributed.Client, got "
                f"{type(scheduler).__name__}"
            )
        yield DaskDriver(scheduler)
        return
    m = _LOCAL.fullmatch(scheduler)
    if m is not None:
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's
        # mmap threshold: every large array is mapped and unmapped anew, and counting runs
        # 1.7-2.5x slower (measured). The workers of a local cluster keep glibc's defaults.
        with dask.config.set({_TRIM: None}), distributed.LocalCluster(
            n_workers=int(m[1]), threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster, distributed.Client(cluster) as client:
            yield DaskDriver(client)
        return
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s (is it "
            f"running, and is this the address it listens on?): {type(exc).__name__}"
        ) from None
    with client:
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (OSError, TimeoutError):
                raise ConnectionError(
                    f"the Dask scheduler at {scheduler} has no worker (waited {timeout:g} s)"
                ) from None
        yield DaskDriver(client)
