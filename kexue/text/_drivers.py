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

import collections
import concurrent.futures as cf
import contextlib
import mmap
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import os
import pickle
import queue
import re
import shutil
import tempfile
import threading
import traceback
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

_LOADED: dict[str, Any] = {}  # token -> object, in this process, least recently used first
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


class _Shared:
    """A reference to an object pickled to a file on this machine (a local broadcast)."""

    __slots__ = ("path", "token")

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token

    def get(self) -> Any:
        with _LOADED_LOCK:
            obj = _LOADED.pop(self.token, None)
        if obj is None:
            with open(self.path, "rb") as f:
                obj = pickle.load(f)
        self.keep(obj)
        return obj

    def keep(self, obj: Any) -> None:
        """Hold ``obj`` as this process's copy (most recently used)."""
        with _LOADED_LOCK:
            _LOADED.pop(self.token, None)
            while len(_LOADED) >= _LOADED_MAX:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[self.token] = obj

    def __reduce__(self) -> tuple:
        return (_Shared, (self.path, self.token))


def resolve(obj: Any) -> Any:
    """The object behind a broadcast handle as a task receives it (itself for a plain value)."""
    return obj.get() if isinstance(obj, _Shared) else obj


class _Folder:
    """Folds values pushed one at a time, so that merges stay balanced and few partials live.

    A stack of partial results whose sizes (``len`` where a value has one, else 1 per value
    folded in) shrink by more than half from bottom to top: a new value merges with the top
    while the top is at most twice its size. Each value is merged O(log) times while the
    partial results grow (the tree of a pairwise reduction), and once they stop growing (a
    merged table is as large as the distinct keys of the whole input, D) the stack holds less
    than 2·D: memory does not grow with the number of values.
    """

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn
        self.stack: list[tuple[int, Any]] = []  # (values folded in, partial result)

    @staticmethod
    def _size(v: Any, folded: int) -> int:
        return len(v) if hasattr(v, "__len__") else folded

    def push(self, v: Any) -> None:
        k = 1
        while self.stack and self._size(self.stack[-1][1], self.stack[-1][0]) <= 2 * self._size(
                v, k):
            j, top = self.stack.pop()
            v = self.fn(top, v)
            k += j
        self.stack.append((k, v))

    def result(self) -> Any:
        if not self.stack:
            raise ValueError("handles must not be empty")
        out = self.stack.pop()[1]
        while self.stack:
            out = self.fn(self.stack.pop()[1], out)
        return out


def _fold(fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Any:
    """Fold ``values`` with an associative, commutative ``fn`` (see :class:`_Folder`)."""
    folder = _Folder(fn)
    for v in values:
        folder.push(v)
    return folder.result()


_SPLIT = 1 << 20  # values holding more entries than this are folded in two key ranges at once


def _fold_split(fn: Callable[[Any, Any], Any], values: list[Any]) -> Any:
    """Fold a few big values here, the lower and upper key ranges in two threads at once.

    For values that split by key range (``pivot()``, ``split_at(pivot)``, ``join(low,
    high)``, like the engine's sorted count tables) and hold many entries: the fold of each
    range is an independent job (the merge releases the GIL in numpy's sort and copies), so
    the last step of a reduction takes about half the time. Anything else: :func:`_fold`.
    """
    splittable = all(hasattr(v, "split_at") and hasattr(v, "__len__") for v in values)
    if len(values) < 2 or not splittable or sum(len(v) for v in values) < _SPLIT:
        return _fold(fn, values)
    pivot = max(values, key=len).pivot()
    low, high = zip(*(v.split_at(pivot) for v in values), strict=True)
    del values
    out: list[Any] = []

    def upper() -> None:
        try:
            out.append(_fold(fn, high))
        except BaseException as exc:
            out.append(exc)

    helper = threading.Thread(target=upper, name="kexue-fold-upper", daemon=True)
    helper.start()
    try:
        lower = _fold(fn, low)
    finally:
        helper.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return type(lower).join(lower, out[0])


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


def _warm() -> None:
    import kexue.text._ngram_engine  # noqa: F401 - what the tasks will need


def _call(fn: Callable[..., Any], shard: Any, args: tuple) -> Any:
    return fn(shard, *args)


class ExecutorDriver:
    """Tasks on a ``concurrent.futures.Executor`` (threads, processes, or a remote pool).

    Handles are futures. ``reduce`` merges results as they complete: on a thread pool two at a
    time, each merge a task of the executor; on any other executor here, in this process (a
    merge task would ship both operands to a worker and the result back). Either way a tree in
    which each value is merged O(log k) times; the order depends on timing, which an
    associative and commutative ``fn`` makes irrelevant. ``broadcast`` hands
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
        if not isinstance(self.executor, cf.ThreadPoolExecutor):
            # merge here, in the order results come: a merge task would ship both tables to a
            # process and the sum back
            try:
                return _fold(fn, (f.result() for f in cf.as_completed(pending)))
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
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


class _Ref:
    """A map output kept by the pool worker that computed it (a :class:`PoolDriver` handle)."""

    __slots__ = ("task",)

    def __init__(self, task: int) -> None:
        self.task = task


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """An exception that pickles (itself, else a RuntimeError naming it) and its traceback."""
    tb = "".join(traceback.format_exception(exc))[-20_000:]
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, tb


def _serve(store: dict[Any, Any], msg: tuple) -> tuple | None:
    """Handle one message of the driver in a worker; the reply, if any.

    ``store`` holds the results of the worker's tasks (by task id) and the folders of the
    reductions under way (by ``("fold", reduction id)``).
    """
    op, tid = msg[0], msg[1]
    try:
        if op == "run":  # and, with ``into``, fold the result into that reduction at once
            fn, shard, args, into = msg[2:]
            store[tid] = fn(shard, *args)
            if into is not None:
                _accumulate(store, *into, tid)
            return ("done", tid, None)
        if op == "acc":  # fold one result into a reduction, as soon as it is there
            fn, task = msg[2:]
            _accumulate(store, tid, fn, task)
            return None
        if op == "fold":
            return ("value", tid, store.pop(("fold", msg[2])).result())
        if op == "get":
            return ("value", tid, [store.pop(t) for t in msg[2]])
        for t in msg[2]:  # "drop"
            store.pop(t, None)
        return None
    except Exception as exc:
        store.pop(tid, None)
        return ("error", tid, _portable(exc))


def _accumulate(store: dict[Any, Any], key: int, fn: Callable[[Any, Any], Any], task: int
                ) -> None:
    folder = store.get(("fold", key))
    if folder is None:
        folder = store[("fold", key)] = _Folder(fn)
    folder.push(store.pop(task))


_OUT_OF_BAND = 1 << 20  # a reply holding more bytes of arrays than this goes through a file


def _send_value(conn: Any, reply: tuple, where: str) -> None:
    """Send a reply; the array buffers of a big value go through a file in ``where``.

    Pickle protocol 5 hands out the buffers of numpy arrays: they are written once to a file
    (the page cache) and the driver maps it, instead of being copied into the message, through
    the pipe and out of it again.
    """
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(reply[2], protocol=5, buffer_callback=buffers.append)
    sizes = [b.raw().nbytes for b in buffers]
    if sum(sizes) < _OUT_OF_BAND:
        conn.send(reply)
        return
    fd, path = tempfile.mkstemp(prefix="value-", dir=where)
    with open(fd, "wb") as f:
        for b in buffers:
            f.write(b.raw())
    conn.send(("file", reply[1], (data, path, sizes)))


def _receive_value(data: bytes, path: str, sizes: list[int]) -> Any:
    """The value of a ``("file", ...)`` reply: its arrays map the file (copy on write)."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if sum(sizes) else b""
    with contextlib.suppress(OSError):
        os.unlink(path)  # the mapping stays
    view = memoryview(mapped)
    buffers, at = [], 0
    for n in sizes:
        buffers.append(view[at : at + n])
        at += n
    return pickle.loads(data, buffers=buffers)


def _pool_worker(tasks: Any, conn: Any, where: str) -> None:
    """A spawned :class:`PoolDriver` worker: runs tasks, keeps their results, folds them."""
    import kexue.text._ngram_engine  # noqa: F401 - what the tasks will need: load it now

    store: dict[Any, Any] = {}
    conn.send(("ready", 0, None))
    while True:
        try:
            msg = tasks.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            reply = _serve(store, msg)
            if reply is not None and reply[0] == "value":
                _send_value(conn, reply, where)
                continue
        except BaseException as exc:  # an interrupt: the driver decides
            reply = ("error", msg[1], _portable(exc))
        if reply is not None:
            conn.send(reply)


def _send_all(box: queue.SimpleQueue[Any], conn: Any) -> None:
    with contextlib.suppress(OSError, ValueError):  # the worker is gone: the pump reports it
        while (buf := box.get()) is not None:
            conn.send_bytes(buf)
    with contextlib.suppress(OSError):
        conn.close()


class _Worker:
    """A spawned worker as the driver sees it.

    Messages to it are pickled by the caller and written by a thread of their own: writing a
    big task (a shard with its text) blocks until the worker reads it, which it does only
    between tasks (or after its imports), and the driver must not wait for that.
    """

    def __init__(self, process: Any, conn: Any, tasks: Any) -> None:
        self.name = process.name
        self.process, self.conn = process, conn  # conn: the worker's replies
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sender = threading.Thread(target=_send_all, args=(self.outbox, tasks),
                                       name=f"{process.name}-sender", daemon=True)
        self.sender.start()
        self.running: set[int] = set()  # tasks sent, not done
        self.busy: int | None = None  # the request whose reply (a value) is awaited
        self.ready = False  # it has started (imported what tasks need)
        self.prefetch = True  # worth keeping a second task queued (messages take time)

    def send(self, msg: tuple) -> None:
        # pickled here, so that an object that does not pickle fails the caller
        self.outbox.put(multiprocessing.reduction.ForkingPickler.dumps(msg))

    def receive(self) -> tuple:
        return self.conn.recv()

    def close(self) -> None:
        self.outbox.put(None)
        with contextlib.suppress(Exception):
            self.process.terminate()  # results are in, spill is the engine's: no clean exit

    def join(self) -> None:
        with contextlib.suppress(Exception):
            self.process.join(5)
            self.conn.close()
            self.sender.join(5)


class _Here:
    """The driver's own process as a worker: a thread that serves the same messages.

    A thread, so that the driver still answers the spawned workers at once while it counts (the
    counting releases the GIL in numpy's sorts and array passes). It wakes the driver through a
    pipe, one byte per reply.
    """

    name = "the driver's process"

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.replies: collections.deque[tuple] = collections.deque()
        self.conn, self._wake = multiprocessing.Pipe(duplex=False)
        self.thread = threading.Thread(target=self._loop, name="kexue-pool-here", daemon=True)
        self.thread.start()
        self.running: set[int] = set()
        self.busy: int | None = None
        self.ready = True
        self.prefetch = False

    def _loop(self) -> None:
        store: dict[Any, Any] = {}
        while (msg := self.inbox.get()) is not None:
            reply = _serve(store, msg)
            if reply is not None:
                self.replies.append(reply)
                self._wake.send_bytes(b"")

    def send(self, msg: tuple) -> None:
        self.inbox.put(msg)

    def receive(self) -> tuple:
        self.conn.recv_bytes()
        return self.replies.popleft()

    def close(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:  # what was not started will not be
                self.inbox.get_nowait()
        self.inbox.put(None)

    def join(self) -> None:
        self.thread.join()  # the task it is running, if any, ends first
        self.conn.close()
        self._wake.close()


class PoolDriver:
    """Tasks on ``processes`` processes for one run: this one and ``processes − 1`` spawned.

    The calling process is one of the workers (a thread of it runs tasks while the driver
    answers the others), which also lets the counting start while the spawned workers are still
    starting (a worker imports kexue, and with it torch, before it says it is ready for tasks).
    Every worker keeps the results of its own map tasks; ``reduce`` has each fold its own
    results as soon as it has run its last task of the map, and folds the ``processes``
    values, so a map output never crosses a process boundary and the merges run in parallel.
    A task goes to an idle worker (a spawned one gets a second, queued, while many remain, so
    that it does not wait for the message). The spill of a task is on this machine's disk,
    shared by all. Workers are spawned (not forked) and not daemonic (a task may start
    processes of its own); a worker that dies fails the run with an error instead of hanging
    it. Broadcasts are files (pickled once, loaded once per process). A context manager: the
    workers start on entry and are stopped on exit.

    Args:
        processes: worker processes including this one, ≥ 1 (1: everything here).
    """

    def __init__(self, processes: int) -> None:
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"processes must be an int >= 1, got {processes!r}")
        self.processes = processes
        self.parallelism = processes
        self._workers: list[Any] = []
        self._dir: str | None = None  # broadcasts and big replies, while the pool runs

    # -- lifecycle --

    def __enter__(self) -> PoolDriver:
        ctx = multiprocessing.get_context("spawn")
        self._queue: collections.deque[tuple[int, Callable[..., Any], Any, tuple]] = (
            collections.deque())
        self._done: dict[int, Any] = {}  # task -> the worker holding its result
        self._failed: dict[int, tuple[BaseException, str]] = {}
        self._replies: dict[int, Any] = {}
        self._next = 0
        self._into: dict[int, tuple[int, Callable[[Any, Any], Any]]] = {}  # task -> reduction
        self._dir = tempfile.mkdtemp(prefix="kexue-pool-")
        try:
            for i in range(1, self.processes):
                task_r, task_w = ctx.Pipe(duplex=False)
                reply_r, reply_w = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_pool_worker, args=(task_r, reply_w, self._dir),
                                   name=f"kexue-pool-{i}", daemon=False)
                proc.start()
                task_r.close()
                reply_w.close()
                self._workers.append(_Worker(proc, reply_r, task_w))
            self._workers.append(_Here())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            w.close()
        for w in workers:
            w.join()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- the message pump --

    def _id(self) -> int:
        self._next += 1
        return self._next

    def _dispatch(self) -> None:
        while self._queue:
            ready = [w for w in self._workers if w.ready and w.busy is None]
            idle = [w for w in ready if not w.running]
            if idle:
                w = idle[0]
            else:  # a second task for a spawned worker, while enough remain for the others
                ahead = [w for w in ready if w.prefetch and len(w.running) < 2]
                if not ahead or len(self._queue) <= len(self._workers):
                    return
                w = ahead[0]
            tid, fn, shard, args = self._queue.popleft()
            try:
                w.send(("run", tid, fn, shard, args, self._into.get(tid)))
            except Exception as exc:  # it does not pickle: the task fails, not the driver
                self._failed[tid] = _portable(exc)
                continue
            w.running.add(tid)

    def _pump(self) -> None:
        """Wait for replies (or a dead worker), handle them and hand out queued tasks."""
        if not self._workers:
            raise RuntimeError("the PoolDriver is not running: use it as a context manager")
        self._dispatch()
        if not any(w.running or w.busy is not None or not w.ready for w in self._workers):
            return  # nothing will arrive (the caller finds the failures)
        conns = {w.conn: w for w in self._workers}
        sentinels = {w.process.sentinel: w for w in self._workers if isinstance(w, _Worker)}
        for r in multiprocessing.connection.wait([*conns, *sentinels]):
            w = conns.get(r)  # type: ignore[call-overload]
            if w is None:
                w = sentinels[r]  # type: ignore[index]
                if w.conn.poll():
                    continue  # its last messages first
                self._died(w)
            try:
                kind, tid, payload = w.receive()
            except (EOFError, OSError):
                self._died(w)
            if kind == "ready":
                w.ready = True
            elif kind == "done":
                w.running.discard(tid)
                self._done[tid] = w
            elif kind == "error":
                w.running.discard(tid)
                if w.busy == tid:
                    w.busy = None
                self._failed[tid] = payload
            elif kind == "file":
                w.busy = None
                self._replies[tid] = _receive_value(*payload)
            else:
                w.busy = None
                self._replies[tid] = payload
        self._dispatch()

    def _died(self, w: _Worker) -> None:
        w.process.join(1)
        raise RuntimeError(
            f"pool worker {w.name} died (exit code {w.process.exitcode}) while counting; the "
            "run stops"
        )

    def _fail(self, tids: set[int]) -> None:
        """Raise the first error among ``tids`` once none of them runs any more."""
        errors = [self._failed[t] for t in sorted(tids) if t in self._failed]
        if not errors:
            return
        self._queue = collections.deque(t for t in self._queue if t[0] not in tids)
        while any(tids & w.running for w in self._workers):
            self._pump()
        for w in self._workers:  # the results of the tasks that did finish are not wanted
            held = [t for t in tids if self._done.get(t) is w]
            if held:
                w.send(("drop", 0, held))
        for t in tids:
            self._done.pop(t, None)
            self._failed.pop(t, None)
        exc, tb = errors[0]
        exc.add_note(f"raised in a kexue pool worker:\n{tb}")
        raise exc

    def _collect(self, refs: list[Any]) -> list[tuple[list[int], list[Any]]]:
        """``(tasks, results)`` of every worker holding some of ``refs``, once it has run all
        of its share."""
        tids = [r.task for r in refs]
        wanted = set(tids)
        asked: dict[int, tuple[Any, list[int]]] = {}  # request id -> (worker, its tasks)
        sent: set[int] = set()
        while True:
            self._fail(wanted)
            queued = any(t[0] in wanted for t in self._queue)
            for w in self._workers:
                if w.busy is not None or queued or wanted & w.running:
                    continue
                mine = [t for t in tids if t not in sent and self._done.get(t) is w]
                if mine:
                    rid = self._id()
                    w.busy = rid
                    asked[rid] = (w, mine)
                    sent.update(mine)
                    for t in mine:
                        del self._done[t]
                    w.send(("get", rid, mine))
            failed = [r for r in asked if r in self._failed]
            if failed:
                for r, (w, _) in asked.items():
                    while w.busy == r:
                        self._pump()
                    self._replies.pop(r, None)
                exc, tb = self._failed.pop(failed[0])
                exc.add_note(f"raised in a kexue pool worker:\n{tb}")
                raise exc
            if len(sent) == len(wanted) and all(r in self._replies for r in asked):
                return [(mine, self._replies.pop(r)) for r, (_, mine) in asked.items()]
            self._pump()

    # -- the Driver protocol --

    def map(self, fn: Callable[..., Any], shards: Sequence[Shard], *args: Any) -> list[Any]:
        refs = []
        for s in shards:
            tid = self._id()
            self._queue.append((tid, fn, s, args))
            refs.append(_Ref(tid))
        return refs  # they start when asked for (reduce, gather), so a reduce can say where

    def reduce(self, fn: Callable[[Any, Any], Any], handles: list[Any]) -> Any:
        """Each worker folds each of its results into its share as soon as the task is done
        (between its tasks), and returns the share once it has run its last task; the shares
        are folded here."""
        tids = [r.task for r in handles]
        handles.clear()
        if not tids:
            raise ValueError("handles must not be empty")
        wanted, waiting = set(tids), set(tids)  # waiting: not yet folded into a share
        key = self._id()
        queued = {t[0] for t in self._queue}
        for t in tids:  # not started yet: its worker folds its result at once
            if t in queued:
                self._into[t] = (key, fn)
        fed: set[Any] = set()  # workers holding a share
        asked: dict[int, Any] = {}  # request id -> worker
        try:
            while True:
                self._fail(wanted)  # a task failed
                failed = [r for r in (key, *asked) if r in self._failed]
                if failed:  # a fold failed in a worker
                    for r, w in asked.items():
                        while w.busy == r:
                            self._pump()
                        self._replies.pop(r, None)
                    exc, tb = self._failed.pop(failed[0])
                    exc.add_note(f"raised in a kexue pool worker:\n{tb}")
                    raise exc
                for t in [t for t in waiting if t in self._done]:
                    w = self._done.pop(t)
                    waiting.discard(t)
                    fed.add(w)
                    if self._into.pop(t, None) is None:
                        w.send(("acc", key, fn, t))
                queued = any(t[0] in wanted for t in self._queue)
                for w in fed - set(asked.values()):
                    if not queued and w.busy is None and not wanted & w.running:
                        rid = self._id()
                        w.busy = rid
                        asked[rid] = w
                        w.send(("fold", rid, key))
                if not waiting and len(asked) == len(fed) and all(r in self._replies
                                                                    for r in asked):
                    return _fold_split(fn, [self._replies.pop(r) for r in asked])
                self._pump()
        except BaseException:
            for w in self._workers:  # the shares of a failed reduction are not wanted
                with contextlib.suppress(Exception):
                    w.send(("drop", 0, [("fold", key)]))
            for t in tids:
                self._into.pop(t, None)
            raise

    def gather(self, handles: list[Any]) -> list[Any]:
        refs = list(handles)
        order = {r.task: i for i, r in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        for mine, values in self._collect(refs):
            for t, v in zip(mine, values, strict=True):
                out[order[t]] = v
        return out

    def broadcast(self, obj: Any) -> Any:
        if self._dir is None:
            raise RuntimeError("the PoolDriver is not running: use it as a context manager")
        token = uuid.uuid4().hex
        path = os.path.join(self._dir, token)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        shared = _Shared(path, token)
        shared.keep(obj)  # the tasks run here use it as it is
        return shared

    def release(self, handles: list[Any]) -> None:
        """Delete the files of broadcast handles (the run that made them is over)."""
        for h in handles:
            if isinstance(h, _Shared):
                with contextlib.suppress(OSError):
                    os.unlink(h.path)
                with _LOADED_LOCK:
                    _LOADED.pop(h.token, None)


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
