"""The experiment contract: a frozen :class:`Experiment` that turns a config and a
:class:`Context` into a :class:`Result`, and :func:`run_experiment`, which adds a
:class:`Provenance` record kept apart from the result (no metric can overwrite the seed).

Every claim stands beside its published number: :class:`Anchor` gives that number with its
source and the data it was measured on, or says plainly that none exists, and why.

A thresholded claim (``threshold`` set) carries a training-free ``control``: the same scorer
on data or a model that must fail the claim (blurred, shuffled or class-dropped data, an
untrained model). The fast tests run every control and assert that it fails; a claim that its
own control passes cannot fail and is a defect.

Device and precision, one rule for every experiment:

- An experiment declares the device types it can use (``Experiment.devices``, default CPU
  only) and the precisions it honours (``Experiment.precisions``, default fp32 only). Asked
  for another, it runs on the CPU, or in fp32, and the provenance records what it ran on
  (:meth:`Experiment.context`). Pure CPU work (text mining, scipy integration, float64
  statistics, CPU wall-clock claims) declares CPU only and says why beside ``devices``.
- On its device an experiment builds its models on the CPU (from the seed), moves them and
  its data there (:meth:`Context.place`, :meth:`Context.put`) and draws every random number
  on a CPU generator (:meth:`Context.stream` or a seeded ``torch.Generator``), moving what it
  draws, so a seed gives the same draws, batches and initial weights on every device.
- Precision ``"bf16"`` runs the training and evaluation forward passes under bfloat16
  autocast (:meth:`Context.autocast`); identities checked to float precision, float64 work
  and the verdict's arithmetic stay outside it.
- Metrics are CPU Python numbers (``.item()``, ``float``); figures get CPU tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from kexue._seeds import stream

__all__ = ["DEVICE_TYPES", "PRECISIONS", "Anchor", "Context", "Experiment", "Provenance",
           "Result", "Table", "config_dict", "kexue_version", "provenance", "run_experiment"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)

MAX_METRICS = 12
Scalar = float | int | str | bool
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
"""Precision name -> autocast dtype (None: no autocast, full precision)."""
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Table:
    """A method × setting table for the page (text a figure cannot hold)."""

    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Scalar, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        rows = []
        for i, row in enumerate(self.rows):
            row = tuple(_cell(self.caption, i, v) for v in row)
            if len(row) != len(self.columns):
                raise ValueError(f"Table {self.caption!r}: row {i} has {len(row)} cells, "
                                 f"expected {len(self.columns)} ({', '.join(self.columns)})")
            rows.append(row)
        object.__setattr__(self, "rows", tuple(rows))

    def to_dict(self) -> dict[str, Any]:
        """The table as JSON-ready lists."""
        return {"caption": self.caption, "columns": list(self.columns),
                "rows": [list(r) for r in self.rows]}


@dataclass(frozen=True)
class Anchor:
    """The published number a claim is read against.

    Attributes:
        number: the published figure with its unit (``"78.01 nats"``), or ``None`` when no
            published number exists for this claim.
        source: where it is published (paper and table or figure, with its URL, or the note's
            URL); for ``number=None``, why no number exists.
        data: the data the published number was measured on (``""`` when ``number`` is None).
        differs: how kexue's data or setting differ from the published one (``""``: the same).
    """

    number: str | None
    source: str
    data: str = ""
    differs: str = ""

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("Anchor.source must say where the number is published, or why "
                             "none exists")
        if self.number is not None and not self.data.strip():
            raise ValueError(f"Anchor {self.number!r}: data must name what it was measured on")

    def describe(self) -> str:
        """One line: the number, its data and source, or why there is none."""
        if self.number is None:
            return f"no published number ({self.source})"
        text = f"{self.number} on {self.data} ({self.source})"
        return text + (f"; kexue's data differ: {self.differs}" if self.differs else "")


@dataclass(frozen=True)
class Context:
    """What a run may depend on beside its config: the seed, the device and the precision.

    Attributes:
        seed: The run's seed; named streams derive from it (:meth:`stream`).
        device: Where models and data live (a ``torch.device``; a string is converted).
        precision: ``"fp32"`` or ``"bf16"`` (bfloat16 autocast of the forward passes that
            :meth:`autocast` wraps), a key of :data:`PRECISIONS`.

    Raises:
        ValueError: For an unknown precision or a string torch cannot read as a device.
    """

    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "device", torch.device(self.device))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be a torch.device or its name, got "
                             f"{self.device!r}") from error
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                             f"got {self.precision!r}")

    def stream(self, *names: str) -> torch.Generator:
        """A CPU generator for the named stream of ``seed`` (:func:`kexue._seeds.stream`)."""
        return stream(self.seed, *names)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device (``x`` itself when it is there already)."""
        return x.to(self.device)

    def place(self, module: ModuleT) -> ModuleT:
        """``module`` moved to the device, in place; returned for chaining."""
        return module.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast region of forward passes: bfloat16 autocast on the device for
        ``"bf16"``, a no-op for ``"fp32"``."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def autocast_name(self) -> str | None:
        """The precision as the generative trainers' ``autocast`` argument takes it (None for
        full precision)."""
        return None if PRECISIONS[self.precision] is None else self.precision


@dataclass(frozen=True)
class Result:
    """What one run measured.

    Attributes:
        metrics: at most 12 flat scalar rows; larger grids go into ``tables``.
        holds: the verdict on the claim.
        summary: one line a reader sees in the overview.
        figures: name -> matplotlib figure.
        tables: method × setting tables.
    """

    metrics: Mapping[str, Scalar]
    holds: bool
    summary: str
    figures: Mapping[str, Any] = field(default_factory=dict)
    tables: tuple[Table, ...] = ()

    def __post_init__(self) -> None:
        if len(self.metrics) > MAX_METRICS:
            raise ValueError(f"Result.metrics has {len(self.metrics)} rows, at most "
                             f"{MAX_METRICS}: put a grid into a Table")
        metrics = {}
        for key, value in self.metrics.items():
            value = _unwrap(value)
            if not isinstance(value, Scalar):
                raise TypeError(f"Result.metrics[{key!r}] is {type(value).__name__}, expected "
                                "a float, int, str or bool")
            metrics[str(key)] = _plain(value)
        object.__setattr__(self, "holds", bool(self.holds))
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "tables", tuple(self.tables))


def _unwrap(value: Any) -> Any:
    """A numpy or 0-d torch scalar as the Python number it holds; anything else as it is."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _cell(caption: str, row: int, value: Any) -> Scalar:
    """A table cell as a JSON scalar: numpy and 0-d torch scalars unwrapped, inf/nan as text."""
    value = _unwrap(value)
    if value is None:
        return ""
    if not isinstance(value, Scalar):
        raise TypeError(f"Table {caption!r}: row {row} holds a {type(value).__name__}, expected "
                        "a float, int, str or bool")
    return _plain(value)


def _plain(value: Scalar) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan
    return value


@dataclass(frozen=True)
class Experiment:
    """One reproducible claim of a note.

    Attributes:
        name: registry key (``snake_case``).
        title: a heading for the page.
        note: the kexue.fm URL of the note.
        claim: the claim in words.
        threshold: the pass line in words (``"cFD ≤ 5"``), or ``None`` for a claim that is not
            a threshold on a measured number (an identity checked to float precision, say).
        anchor: the published number beside kexue's.
        quick: the fast config (a frozen dataclass); ``full``: the full-size one.
        run: ``run(config, context) -> Result``.
        control: for a thresholded claim, a training-free negative control with the same
            signature whose result must not hold.
        timed: the claim is about wall-clock time (shared cores make it flaky).
        devices: the device types (of :data:`DEVICE_TYPES`) ``run`` and ``control`` use;
            ``"cpu"`` always among them. Another is run on the CPU (see the module's rule).
        precisions: the precisions (keys of :data:`PRECISIONS`) they honour; ``"fp32"``
            always among them. Another is run in fp32.
    """

    name: str
    title: str
    note: str
    claim: str
    threshold: str | None
    anchor: Anchor
    quick: Any
    full: Any
    run: Callable[[Any, Context], Result]
    control: Callable[[Any, Context], Result] | None = None
    timed: bool = False
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        for mode in ("quick", "full"):
            config = getattr(self, mode)
            if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
                raise TypeError(f"Experiment {self.name!r}: {mode} must be a dataclass "
                                f"instance, got {type(config).__name__}")
        if not self.note.startswith("https://kexue.fm/archives/"):
            raise ValueError(f"Experiment {self.name!r}: note must be a kexue.fm archive URL, "
                             f"got {self.note!r}")
        if self.threshold is not None and self.control is None:
            raise ValueError(f"Experiment {self.name!r} has a threshold but no negative control")
        for attr, known, base in (("devices", DEVICE_TYPES, "cpu"),
                                  ("precisions", tuple(PRECISIONS), "fp32")):
            values = tuple(getattr(self, attr))
            if base not in values or not set(values) <= set(known):
                raise ValueError(f"Experiment {self.name!r}: {attr} must include {base!r} and "
                                 f"name only {', '.join(map(repr, known))}, got {values!r}")
            object.__setattr__(self, attr, values)

    def config(self, full: bool = False) -> Any:
        """The full or the quick config."""
        return self.full if full else self.quick

    def context(self, seed: int = 0, device: torch.device | str = "cpu",
                precision: str = "fp32") -> Context:
        """The context this experiment runs in when ``device`` and ``precision`` are asked
        for: a device type outside :attr:`devices` becomes the CPU, a precision outside
        :attr:`precisions` becomes ``"fp32"``.

        Raises:
            ValueError: For an unknown precision or device name.
        """
        asked = Context(seed=seed, device=device, precision=precision)
        return Context(
            seed=seed,
            device=asked.device if asked.device.type in self.devices else torch.device("cpu"),
            precision=precision if precision in self.precisions else "fp32")


@dataclass(frozen=True)
class Provenance:
    """Where and how a result was measured; recorded apart from the result's metrics."""

    mode: str
    seed: int
    config: Mapping[str, Any]
    torch: str
    python: str
    device: str
    precision: str
    threads: int
    git_sha: str
    kexue_version: str
    date: str
    seconds: float


def kexue_version() -> str:
    """The installed distribution's version (a wheel or an editable install alike)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kexue")
    except PackageNotFoundError:
        from kexue import __version__

        return __version__


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def run_experiment(experiment: Experiment | str, *, full: bool = False, seed: int = 0,
                   device: torch.device | str = "cpu",
                   precision: str = "fp32") -> tuple[Result, Provenance]:
    """Run ``experiment`` (or the registry's experiment of that name) in quick (default) or
    full mode; return its result and provenance.

    Args:
        experiment: The experiment or its registry name.
        full: Full-size config instead of the quick one.
        seed: The run's seed.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when available) or a torch.device;
            an experiment that cannot use it runs on the CPU (:meth:`Experiment.context`).
        precision: ``"fp32"`` or ``"bf16"``; an experiment that does not honour it runs in
            fp32. The provenance records the device and precision actually used.

    Raises:
        ValueError: For an unknown name, precision or device, or CUDA asked for where there
            is none.
        TypeError: When the experiment's run returns something other than a Result.
    """
    from kexue.generative.common import resolve_device

    if isinstance(experiment, str):
        from kexue.experiments import EXPERIMENTS

        if experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {experiment!r}; known: "
                             f"{', '.join(EXPERIMENTS)}")
        experiment = EXPERIMENTS[experiment]
    ctx = experiment.context(seed, resolve_device(device), precision)
    start = time.perf_counter()
    result = experiment.run(experiment.config(full), ctx)
    if not isinstance(result, Result):
        raise TypeError(f"experiment {experiment.name!r} returned {type(result).__name__}, "
                        "expected a Result")
    return result, provenance(experiment, full=full, seed=seed, device=ctx.device,
                              precision=ctx.precision, seconds=time.perf_counter() - start)


def provenance(experiment: Experiment, *, full: bool, seed: int,
               device: torch.device | str, seconds: float,
               precision: str = "fp32") -> Provenance:
    """The record of where and how ``experiment`` ran (also for a run that raised)."""
    from kexue._env import environment

    env = environment(device)
    return Provenance(
        mode="full" if full else "quick", seed=seed, config=config_dict(experiment.config(full)),
        torch=str(env["torch"]), python=str(env["python"]), device=str(env["device"]),
        precision=precision, threads=int(env["threads"]), git_sha=str(env["git_sha"]),
        kexue_version=kexue_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        seconds=seconds)
