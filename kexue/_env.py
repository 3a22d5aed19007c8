"""Provenance recorded beside every measured number: versions, device and git commit."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["environment", "git_sha"]


@functools.cache
def git_sha() -> str:
    """The commit of the kexue checkout, with ``-dirty`` when it has local changes.

    Returns ``"unknown"`` when kexue is not running from a git checkout.
    """
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        # kexue installed into some other repository's tree is not a kexue checkout.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return "unknown"
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def device_name(device: torch.device | str | None = None) -> str:
    """A human-readable name of ``device`` (default: CUDA if available, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_model()}"


@functools.cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str | None = None) -> dict[str, str | int]:
    """Versions, device, thread count and git commit, for recording beside results."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }
