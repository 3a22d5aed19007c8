"""Pieces every generative trainer shares: power iteration, seeded initialisation, BatchNorm
recalibration, and the epoch loop that owns the device and autocast.

Each is written once here; GAN, GLANN and NVAE compose them (``tests/test_generative_house.py``
checks that they do).

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    https://kexue.fm/archives/7574 (强大的NVAE:以后再也不能说VAE生成的图像模糊了)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kexue._checks import check_int, check_real

__all__ = [
    "INIT_SCHEMES",
    "EpochLoop",
    "InitScheme",
    "init_children",
    "init_module",
    "power_iteration",
    "raw_weight",
    "recalibrated_batchnorm",
    "reestimate_batchnorm",
    "resolve_device",
]

# -- power iteration -------------------------------------------------------------------------


@torch.no_grad()
def power_iteration(matrix: Tensor, u: Tensor, iterations: int = 1,
                    eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Power iteration for the top singular pair of ``matrix`` (out, in), from the unit ``u``.

        v ← Wᵀu / ‖Wᵀu‖,   u ← W v / ‖W v‖        (``iterations`` times)

    σ_max ≈ uᵀ W v; the caller forms it outside ``no_grad`` so that ∂σ/∂W = u vᵀ (u and v are
    constants for autograd, Miyato et al.'s gradient). While W v = 0 (a weight that is exactly
    zero, as NVAE's heads at initialisation) u is kept, so the iteration resumes once W moves.

    Args:
        matrix: W as a 2-D tensor (a conv weight reshaped to (C_out, C_in·k·k)).
        u: (out,) current left vector.
        iterations: Number of iterations, ≥ 1.
        eps: Floor of the norms, > 0.

    Returns:
        (u, v): (out,) and (in,) unit vectors (v = 0 when Wᵀu = 0), detached.

    References:
        https://kexue.fm/archives/6549; Miyato et al., "Spectral Normalization for Generative
        Adversarial Networks", 2018; Yoshida & Miyato, 2017.
    """
    check_int("iterations", iterations, low=1)
    eps = check_real("eps", eps, low=0, low_open=True)
    if matrix.ndim != 2 or u.shape != matrix.shape[:1]:
        raise ValueError(f"matrix must be (out, in) and u (out,), got {tuple(matrix.shape)} and "
                         f"{tuple(u.shape)}")
    w = matrix.detach()
    u = u.to(w.dtype)
    v = w.new_zeros(w.shape[1])
    for _ in range(iterations):
        v = F.normalize(w.T @ u, dim=0, eps=eps)
        wv = w @ v
        norm = wv.norm()
        u = torch.where(norm > 0, wv / norm.clamp_min(eps), u)
    return u, v


# -- seeded initialisation -------------------------------------------------------------------

InitScheme = Callable[[Tensor, torch.Generator], None]
"""Fills one weight tensor in place from a generator."""


def _fan_in(w: Tensor) -> int:
    return w.shape[1] * math.prod(w.shape[2:]) if w.ndim > 1 else w.shape[0]


def _uniform(bound: Callable[[Tensor], float]) -> InitScheme:
    def fill(w: Tensor, generator: torch.Generator) -> None:
        b = bound(w)
        w.uniform_(-b, b, generator=generator)
    return fill


INIT_SCHEMES: dict[str, InitScheme] = {
    # torch's layer defaults: kaiming_uniform_(a=√5), i.e. U(±1/√fan_in)
    "torch": _uniform(lambda w: 1.0 / math.sqrt(_fan_in(w))),
    # LeCun uniform, Var = 1/fan_in (NVAE)
    "lecun": _uniform(lambda w: math.sqrt(3.0 / _fan_in(w))),
    # DCGAN: N(0, 0.02²)
    "normal": lambda w, g: nn.init.normal_(w, 0.0, 0.02, generator=g),
    # SNGAN, SAGAN
    "xavier": lambda w, g: nn.init.xavier_uniform_(w, generator=g),
    # BigGAN
    "orthogonal": lambda w, g: nn.init.orthogonal_(w, generator=g),
}

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
             nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def raw_weight(layer: nn.Module) -> Tensor:
    """The trained tensor behind ``layer.weight``: the original under spectral norm, the
    direction v under weight norm, else the weight itself."""
    if parametrize.is_parametrized(layer, "weight"):
        weight = layer.parametrizations.weight
        return weight.original1 if hasattr(weight, "original1") else weight.original
    return layer.weight


@torch.no_grad()
def _init_layer(m: nn.Module, generator: torch.Generator, fill: InitScheme,
                scheme: str) -> None:
    if isinstance(m, _WEIGHTED):
        w = raw_weight(m)
        fill(w, generator)
        if parametrize.is_parametrized(m, "weight") and \
                hasattr(m.parametrizations.weight, "original1"):  # weight norm: g = ‖v‖
            g = m.parametrizations.weight.original0
            g.copy_(w.flatten(1).norm(dim=1).view_as(g))
        if m.bias is not None:
            if scheme == "torch":  # torch's default bias: U(±1/√fan_in)
                b = 1.0 / math.sqrt(_fan_in(w))
                m.bias.uniform_(-b, b, generator=generator)
            else:
                m.bias.zero_()
    elif isinstance(m, nn.Embedding):
        if scheme == "torch":
            m.weight.normal_(generator=generator)
        else:
            fill(m.weight, generator)
    elif isinstance(m, _NORMS):
        m.reset_parameters()


def init_module(module: nn.Module, generator: torch.Generator,
                scheme: str = "torch") -> nn.Module:
    """Initialise every parameter of ``module`` in place, all randomness from ``generator``.

    Linear, conv and embedding weights follow ``scheme`` (a key of :data:`INIT_SCHEMES`; the
    raw weight under spectral norm, the direction v under weight norm with the gain set to
    g = ‖v‖); biases are 0 (torch's U(±1/√fan_in) under ``"torch"``); norm layers are reset.
    A module that needs more (a gain that starts at 0, a bias that starts at 1) defines

        def init_parameters(self, generator: torch.Generator, scheme: str) -> None

    which is called instead of visiting its subtree (it may call :func:`init_module` on its
    children). Build networks under ``torch.device("meta")`` and ``to_empty`` them first, so
    that construction draws nothing from the global RNG.

    Args:
        module: The module, its tensors materialised (possibly uninitialised).
        generator: Source of randomness.
        scheme: Weight initialisation, a key of :data:`INIT_SCHEMES`.

    Returns:
        ``module``.

    Raises:
        ValueError: For an unknown scheme.
        TypeError: For a module that owns parameters of a kind this function does not know
            and has no ``init_parameters`` hook.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(INIT_SCHEMES)}, got {scheme!r}")
    hook = getattr(module, "init_parameters", None)
    if callable(hook):
        hook(generator, scheme)
        return module
    known = isinstance(module, (*_WEIGHTED, nn.Embedding, *_NORMS))
    if known:
        _init_layer(module, generator, INIT_SCHEMES[scheme], scheme)
    elif any(True for _ in module.parameters(recurse=False)) and not \
            parametrize.is_parametrized(module):
        raise TypeError(f"init_module does not know how to initialise "
                        f"{type(module).__name__}: give it an init_parameters(generator, "
                        f"scheme) method")
    init_children(module, generator, scheme)
    return module


def init_children(module: nn.Module, generator: torch.Generator, scheme: str = "torch") -> None:
    """:func:`init_module` on each child of ``module`` (for ``init_parameters`` hooks that
    initialise their own tensors and leave the rest to the defaults)."""
    for name, child in module.named_children():
        if name != "parametrizations":  # the raw weight is reached through its layer
            init_module(child, generator, scheme)


# -- BatchNorm recalibration -----------------------------------------------------------------


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, forward: Callable[[], Any], steps: int) -> None:
    """Recompute the running statistics of every BatchNorm in ``module`` from ``steps`` passes
    of ``forward()`` (in place; momenta and train/eval modes are restored afterwards).

    During the passes each BN has momentum None, so its statistics become the plain average
    over passes of the batch mean and of the unbiased batch variance, not an exponential
    average dominated by the last batches: BigGAN's "standing statistics" for the EMA weights,
    NVAE's re-estimation from prior samples before generating.

    Args:
        module: Module whose BatchNorm layers are re-estimated.
        forward: Zero-argument callable that runs one forward pass through them.
        steps: Number of passes, ≥ 1.

    Raises:
        ValueError: If ``steps`` < 1.
    """
    check_int("steps", steps, low=1)
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in module.modules()}
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    try:
        for _ in range(steps):
            forward()
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


def recalibrated_batchnorm(module: nn.Module, forward: Callable[[], Any],
                           steps: int) -> contextlib.AbstractContextManager[None]:
    """:func:`reestimate_batchnorm` for the duration of a ``with`` block: the statistics
    gathered before are put back on exit (sampling leaves a trainer unchanged).

    Raises:
        ValueError: If ``steps`` is not an int ≥ 1 (at the call, before the ``with``).
    """
    check_int("steps", steps, low=1)
    return _recalibrated(module, forward, steps)


@contextlib.contextmanager
def _recalibrated(module: nn.Module, forward: Callable[[], Any], steps: int) -> Iterator[None]:
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    try:
        reestimate_batchnorm(module, forward, steps)
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


# -- device, autocast and the epoch loop -----------------------------------------------------

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"cpu"`` → CPU; ``"auto"`` → CUDA when available, else CPU; else as given.

    Raises:
        ValueError: For a string torch cannot parse, or CUDA asked for where there is none.
    """
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'auto' or a torch.device, got "
                         f"{device!r}") from error
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    return out


class EpochLoop:
    """The loop the generative trainers compose: where tensors live, autocast, one epoch.

    ``run`` shuffles ``range(n)`` with the trainer's generator, splits it into batches of
    ``batch_size`` (dropping a last batch smaller than ``min_batch``), calls ``step(index)``
    per batch and returns the mean of each value ``step`` reported (over the batches that
    reported it). Randomness is drawn on the generator's device (CPU) and moved, so a seed
    gives the same batches and noise on every device.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch.device (see :func:`resolve_device`).
        autocast: ``None`` (full precision), ``"bf16"`` or ``"fp16"`` (CUDA only): the
            dtype of :meth:`autocast` regions.

    Raises:
        ValueError: For an unknown device or autocast, or fp16 autocast on CPU.
    """

    def __init__(self, device: str | torch.device | None = None,
                 autocast: str | None = None) -> None:
        self.device = resolve_device(device)
        if autocast is not None and autocast not in _AUTOCAST:
            raise ValueError(f"autocast must be None or one of {sorted(_AUTOCAST)}, got "
                             f"{autocast!r}")
        if autocast == "fp16" and self.device.type == "cpu":
            raise ValueError("autocast='fp16' needs a CUDA device; use 'bf16' on CPU")
        self.autocast_dtype = _AUTOCAST.get(autocast) if autocast else None

    def place(self, *modules: nn.Module) -> None:
        """Move ``modules`` to the device (in place)."""
        for m in modules:
            m.to(self.device)

    def put(self, x: Tensor) -> Tensor:
        """``x`` on the device."""
        return x.to(self.device, non_blocking=True)

    def randn(self, *shape: int, generator: torch.Generator,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """N(0, I) of ``shape`` drawn from ``generator`` on its device, then moved here."""
        return self.put(torch.randn(shape, generator=generator, dtype=dtype,
                                    device=generator.device))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast region for forward passes (a no-op in full precision)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def run(self, n: int, batch_size: int, generator: torch.Generator,
            step: Callable[[Tensor], Mapping[str, float]],
            on_batch: Callable[[int, int], None] | None = None,
            min_batch: int = 1) -> dict[str, float]:
        """One epoch over ``range(n)`` in shuffled batches; the mean of each reported value.

        Args:
            n: Number of examples.
            batch_size: Examples per batch.
            generator: Draws the order (the trainer's own stream).
            step: ``step(index) -> {name: value}`` for the (B,) CPU int64 ``index`` of a batch.
            on_batch: ``on_batch(done, total)`` after each batch.
            min_batch: A last batch smaller than this is dropped (``batch_size``: full batches
                only; 2 when BatchNorm needs two samples).

        Raises:
            ValueError: If no batch of at least ``min_batch`` examples can be formed.
        """
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
        batches = [b for b in order.split(batch_size) if len(b) >= min_batch]
        if not batches:
            raise ValueError(f"no batch of at least {min_batch} examples from n={n}, "
                             f"batch_size={batch_size}")
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i, index in enumerate(batches):
            for key, value in step(index).items():
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
            if on_batch is not None:
                on_batch(i + 1, len(batches))
        return {k: sums[k] / counts[k] for k in sums}
