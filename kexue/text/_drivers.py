"""Drivers: where the map and reduce tasks of exact n-gram counting run.

CONTRACT STUB (issue 17): the two protocols below are fixed; the local drivers (in this process,
a process pool, any ``concurrent.futures.Executor``) are filled in here by the owner of the
counting engine, the Dask driver lives in :mod:`kexue.text._dask` (imported lazily).

The counting engine (:mod:`kexue.text._ngram_engine`) is written against :class:`Driver` only, so
another engine (Spark, Ray) is one file implementing these four methods.

* A **shard** is a picklable description of a piece of input that a worker reads itself
  (a byte range of a text file split at line boundaries, one ``.gz`` file, a list of in-memory
  texts). Only its description travels to the worker; the text never passes through the
  scheduler unless the shard holds it.
* ``map(fn, shards, *args)`` runs ``fn(shard, *args)`` once per shard and returns handles, in
  shard order. ``args`` may hold handles returned by :meth:`Driver.broadcast`. A driver may use
  ``shard.key`` to place the task of a shard where that shard's earlier tasks ran (locality of
  the spill a worker keeps between levels); correctness never depends on placement.
* ``reduce(fn, handles)`` folds the handles with an associative, commutative ``fn(a, b)`` as a
  balanced tree (exact: integer counts) and returns the VALUE on the driver.
* ``broadcast(obj)`` makes ``obj`` available to every task (e.g. the survivors of a level).
* ``gather(handles)`` returns the values of handles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable


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
