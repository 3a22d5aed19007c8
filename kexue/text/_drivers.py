"""Drivers: where the map and reduce tasks of exact n-gram counting run.

The counting engine (:mod:`kexue.text._ngram_engine`) is written against :class:`Driver` only, so
another engine (Spark, Ray) is one file implementing these four methods. The local drivers live
here (:class:`SerialDriver` in this process, :class:`PoolDriver` on spawned processes,
:class:`ExecutorDriver` on any ``concurrent.futures.Executor``); the Dask driver lives in
:mod:`kexue.text._dask` (imported lazily by :func:`resolve_driver`).

* A **shard** is a picklable description of a piece of input that a worker reads itself
  (a byte range of a text file split at line boundaries, one ``.gz`` file, a list of in-memory
  texts). Only its description travels to the worker; the text never passes through the
  scheduler unless the shard holds it (:class:`MemoryShard`).
* ``map(fn, shards, *args)`` runs ``fn(shard, *args)`` once per shard and returns handles, in
  shard order. ``args`` may hold handles returned by :meth:`Driver.broadcast`. A driver may use
  ``shard.key`` to place the task of a shard where that shard's earlier tasks ran (locality of
  the spill a worker keeps between levels); correctness never depends on placement.
* ``reduce(fn, handles)`` folds the handles with an associative, commutative ``fn(a, b)`` as a
  balanced tree (exact: integer counts) and returns the VALUE on the driver. It may empty the
  list ``handles`` (so that map outputs are freed as they are merged); the engine passes each
  list of handles to one ``reduce`` or ``gather`` only.
* ``broadcast(obj)`` makes ``obj`` available to every task (e.g. the survivors of a level). The
  engine's tasks pass every argument through :func:`resolve` first, so a driver may broadcast a
  reference that the task turns into the object (the local process drivers write the object to
  a file once and each worker process loads it once).
* ``gather(handles)`` returns the values of handles.

Optional: a driver with a ``parallelism`` attribute (how many tasks run at once) lets the engine
size the batches in which it reads a one-shot stream, and one with ``release(handles)`` is told
at the end of a run (on error too) that the run's broadcast handles are no longer needed.
:func:`resolve_driver` returns a context manager: the drivers it makes start their workers (a
pool, a cluster connection) on entry and stop them on exit.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Driver",
    "ExecutorDriver",
    "MemoryShard",
    "PoolDriver",
    "SerialDriver",
    "Shard",
    "resolve",
    "resolve_driver",
]


@runtime_checkable
class Shard(Protocol):
    """A piece of input that a worker reads itself."""

    @property
    def key(self) -> str:
        """A stable name, unique within one run (used for placement and spill file names)."""
        ...

    def read(self) -> Iterator[str]:
        """The shard's documents, in order."""
        ...


@runtime_checkable
class Driver(Protocol):
    """Where the engine's tasks run (see the module docstring)."""

    def map(self, fn: Callable[..., Any], shards: Sequence[Shard], *args: Any) -> list[Any]: ...

    def reduce(self, fn: Callable[[Any, Any], Any], handles: list[Any]) -> Any: ...

    def broadcast(self, obj: Any) -> Any: ...

    def gather(self, handles: list[Any]) -> list[Any]: ...


class MemoryShard:
    """Texts held in memory, as a :class:`Shard` (the text travels with the shard).

    :func:`~kexue.text.ngrams.count_ngrams` cuts an iterable of strings into such shards of
    about ``chunk_chars`` characters. The engine reads a shard's text once (the first level);
    later levels read what the worker spilled, and get :meth:`without_text` copies, which
    carry only the key (so the text is pickled and shipped once).

    Args:
        key: the shard's name, unique within a run.
        texts: the documents, or ``None`` for a shard whose text was already read.
    """

    __slots__ = ("_key", "_texts")

    def __init__(self, key: str, texts: Sequence[str] | None) -> None:
        self._key = key
        self._texts = texts

    @property
    def key(self) -> str:
        return self._key

    def read(self) -> Iterator[str]:
        """The texts, in order.

        Raises:
            RuntimeError: for a :meth:`without_text` copy (its text was read once, and the
                worker's spill of it is gone: a task moved to a machine that does not hold it).
        """
        if self._texts is None:
            raise RuntimeError(
                f"in-memory shard {self._key!r}: its text was shipped to a worker once and the "
                "spill that worker kept of it is gone (a task ran on another machine, or the "
                "temporary directory was cleaned); give the corpus as file shards "
                "(kexue.text.shards.plan_shards), which any worker can read again"
            )
        return iter(self._texts)

    def without_text(self) -> MemoryShard:
        """A copy with the key only."""
        return MemoryShard(self._key, None)

    def __reduce__(self) -> tuple:
        return (MemoryShard, (self._key, self._texts))

    def __repr__(self) -> str:
        n = "no text" if self._texts is None else f"{len(self._texts)} texts"
        return f"MemoryShard({self._key!r}, {n})"


# -- broadcast by file: written once by the driver, loaded once per worker process --

_LOADED: dict[str, Any] = {}  # token -> object, in this process
_LOADED_MAX = 4


class _Shared:
    """A reference to an object pickled to a file on this machine (a local broadcast)."""

    __slots__ = ("path", "token")

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token

    def get(self) -> Any:
        obj = _LOADED.get(self.token)
        if obj is None:
            with open(self.path, "rb") as f:
                obj = pickle.load(f)
            while len(_LOADED) >= _LOADED_MAX:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[self.token] = obj
        return obj

    def __reduce__(self) -> tuple:
        return (_Shared, (self.path, self.token))


def resolve(obj: Any) -> Any:
    """The object behind a broadcast handle as a task receives it (itself for a plain value)."""
    return obj.get() if isinstance(obj, _Shared) else obj


def _fold(fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Any:
    """Fold ``values`` pairwise so that merges stay balanced and few partial results live.

    A stack of partial results whose sizes (``len`` where a value has one, else 1 per value
    folded in) shrink by more than half from bottom to top: a new value merges with the top
    while the top is at most twice its size. Each value is merged O(log) times while the
    partial results grow (the tree of a pairwise reduction), and once they stop growing (a
    merged table is as large as the distinct keys of the whole input, D) the stack holds less
    than 2·D: memory does not grow with the number of values.
    """

    def size(v: Any, folded: int) -> int:
        return len(v) if hasattr(v, "__len__") else folded

    stack: list[tuple[int, Any]] = []  # (values folded in, partial result)
    for v in values:
        k = 1
        while stack and size(stack[-1][1], stack[-1][0]) <= 2 * size(v, k):
            j, top = stack.pop()
            v = fn(top, v)
            k += j
        stack.append((k, v))
    if not stack:
        raise ValueError("handles must not be empty")
    out = stack.pop()[1]
    while stack:
        out = fn(stack.pop()[1], out)
    return out


class _Thunk:
    __slots__ = ("args", "fn", "shard")

    def __init__(self, fn: Callable[..., Any], shard: Any, args: tuple) -> None:
        self.fn, self.shard, self.args = fn, shard, args

    def __call__(self) -> Any:
        return self.fn(self.shard, *self.args)


class SerialDriver:
    """Every task in this process (the reference driver).

    ``map`` returns thunks that ``reduce`` and ``gather`` run in shard order, so a reduction
    holds O(log k) partial results at once, never all k map outputs.
    """

    parallelism = 1

    def map(self, fn: Callable[..., Any], shards: Sequence[Shard], *args: Any) -> list[Any]:
        return [_Thunk(fn, s, args) for s in shards]

    def reduce(self, fn: Callable[[Any, Any], Any], handles: list[Any]) -> Any:
        thunks = list(handles)
        handles.clear()  # the caller's list: let each map output go once it is merged
        thunks.reverse()
        return _fold(fn, (thunks.pop()() for _ in range(len(thunks))))

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, handles: list[Any]) -> list[Any]:
        return [h() for h in handles]

    def __enter__(self) -> SerialDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _call(fn: Callable[..., Any], shard: Any, args: tuple) -> Any:
    return fn(shard, *args)


class ExecutorDriver:
    """Tasks on a ``concurrent.futures.Executor`` (threads, processes, or a remote pool).

    Handles are futures. ``reduce`` merges results as they complete, two at a time, each merge a
    task of the executor (a tree: every value is merged O(log k) times; the order depends on
    timing, which an associative and commutative ``fn`` makes irrelevant). ``broadcast`` hands
    the object itself to a thread pool; for a ``ProcessPoolExecutor`` it pickles it once to a
    file in a private temporary directory, which each worker process loads once; any other
    executor gets the object pickled with each task (correct wherever the executor runs).

    The executor is not shut down here (it belongs to the caller), except by :class:`PoolDriver`.

    Args:
        executor: the executor.
        parallelism: tasks that run at once (sizes the engine's batches of a stream);
            default: the executor's ``_max_workers`` where it has one, else 2.
    """

    def __init__(self, executor: cf.Executor, parallelism: int | None = None) -> None:
        if not isinstance(executor, cf.Executor):
            raise ValueError(
                f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}"
            )
        self.executor = executor
        self.parallelism = parallelism or int(getattr(executor, "_max_workers", 2) or 2)
        self._local = isinstance(executor, cf.ProcessPoolExecutor)
        self._dir: str | None = None

    def map(self, fn: Callable[..., Any], shards: Sequence[Shard], *args: Any) -> list[Any]:
        return [self.executor.submit(_call, fn, s, args) for s in shards]

    def reduce(self, fn: Callable[[Any, Any], Any], handles: list[Any]) -> Any:
        if not handles:
            raise ValueError("handles must not be empty")
        pending = set(handles)
        handles.clear()  # a future holds its result: let each go once it is merged
        ready: list[Any] = []
        try:
            while pending:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                ready.extend(f.result() for f in done)
                del done
                while len(ready) >= 2:
                    a, b = ready.pop(), ready.pop()
                    pending.add(self.executor.submit(fn, a, b))
                    del a, b
        except BaseException:
            for f in pending:  # what has not started will not: the run is failing
                f.cancel()
            raise
        return ready[0]

    def broadcast(self, obj: Any) -> Any:
        if not self._local:
            return obj
        if self._dir is None or not os.path.isdir(self._dir):
            self._dir = tempfile.mkdtemp(prefix="kexue-broadcast-")
        token = uuid.uuid4().hex
        path = os.path.join(self._dir, token)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        return _Shared(path, token)

    def gather(self, handles: list[Any]) -> list[Any]:
        return [h.result() for h in handles]

    def release(self, handles: list[Any]) -> None:
        """Delete the files of broadcast handles (the run that made them is over)."""
        for h in handles:
            if isinstance(h, _Shared):
                with contextlib.suppress(OSError):
                    os.unlink(h.path)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)  # when no other run's broadcast is in it
                self._dir = None

    def close(self) -> None:
        """Remove the broadcast files (the executor stays up)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> ExecutorDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoolDriver(ExecutorDriver):
    """Tasks on ``processes`` spawned worker processes, alive for one run (a context manager).

    A ``ProcessPoolExecutor`` with the ``spawn`` start method: workers are not daemonic (a
    worker may start processes of its own), a worker that dies fails the run with
    ``BrokenProcessPool`` instead of hanging it, and nothing of the parent's state (threads,
    locks, CUDA) is forked. Workers start when the driver is entered and stop when it is left.

    Args:
        processes: worker processes, ≥ 1.
    """

    def __init__(self, processes: int) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be an int >= 1, got {processes!r}")
        self.processes = processes
        self.parallelism = processes
        self._local = True
        self._dir = None
        self.executor = None  # type: ignore[assignment]

    def __enter__(self) -> PoolDriver:
        ctx = multiprocessing.get_context("spawn")
        self.executor = cf.ProcessPoolExecutor(self.processes, mp_context=ctx)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        executor, self.executor = self.executor, None
        try:
            if executor is not None:
                if exc_type is not None:  # stop now: cancel what has not started
                    executor.shutdown(wait=False, cancel_futures=True)
                    for p in list((getattr(executor, "_processes", None) or {}).values()):
                        with contextlib.suppress(Exception):
                            p.terminate()
                executor.shutdown(wait=True, cancel_futures=True)
        finally:
            self.close()


_LOCAL = re.compile(r"local:([0-9]+)")
_TCP = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):([0-9]{1,5})")
_SCHEDULERS = (
    "scheduler must be 'local:N', 'tcp://HOST:PORT', a dask Client or a "
    "concurrent.futures.Executor"
)


def _is_dask_client(obj: object) -> bool:
    return any(c.__name__ == "Client" and c.__module__.startswith("distributed")
               for c in type(obj).__mro__)


def _dask(scheduler: object) -> contextlib.AbstractContextManager[Driver]:
    try:
        from kexue.text._dask import dask_driver
    except ImportError as exc:
        raise ImportError(
            f"scheduler={scheduler!r} needs the Dask driver (kexue.text._dask) and "
            f"dask.distributed: pip install 'kexue[dask]' ({exc})"
        ) from exc
    return dask_driver(scheduler)


def resolve_driver(
    processes: int = 1, scheduler: object = None
) -> contextlib.AbstractContextManager[Driver]:
    """The driver for ``processes`` / ``scheduler``, as a context manager.

    * ``scheduler=None``: :class:`SerialDriver` for ``processes == 1``, else
      :class:`PoolDriver` (``processes`` spawned workers for the run).
    * a ``concurrent.futures.Executor``: :class:`ExecutorDriver` (the executor stays up).
    * ``"local:N"`` (a Dask ``LocalCluster`` of N workers for the run), ``"tcp://HOST:PORT"``
      (an existing Dask scheduler) or a ``distributed.Client``: the Dask driver of
      :mod:`kexue.text._dask`, imported only then.
    * an object meeting :class:`Driver` (e.g. a Spark or Ray driver, or an entered
      :class:`PoolDriver` shared by several runs): used as it is, neither entered nor left.

    Raises:
        ValueError: on a bad ``processes`` or ``scheduler``, or both given.
        ImportError: for a Dask scheduler when dask.distributed (or the driver) is missing.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an int >= 1, got {processes!r}")
    if scheduler is None:
        return SerialDriver() if processes == 1 else PoolDriver(processes)
    if processes != 1:
        raise ValueError(
            f"give processes (a pool on this machine) or scheduler, not both: got "
            f"processes={processes!r} and scheduler={scheduler!r}"
        )
    if isinstance(scheduler, cf.Executor):
        return ExecutorDriver(scheduler)
    if isinstance(scheduler, str):
        m = _LOCAL.fullmatch(scheduler)
        if m is not None and int(m.group(1)) < 1:
            raise ValueError(f"{_SCHEDULERS}, with N >= 1, got {scheduler!r}")
        if m is None and _TCP.fullmatch(scheduler) is None:
            raise ValueError(f"{_SCHEDULERS}, got {scheduler!r}")
        return _dask(scheduler)
    if _is_dask_client(scheduler):
        return _dask(scheduler)
    if isinstance(scheduler, Driver):  # the caller's: it starts and stops it
        return contextlib.nullcontext(scheduler)
    raise ValueError(f"{_SCHEDULERS}, got {type(scheduler).__name__} {scheduler!r}")
