"""Lazy names of a package (PEP 562, as in Scientific Python's SPEC 1): `from cafe.sae import MatryoshkaSAE`
keeps working, but importing the package (for its torch-free config module, as `cafe.params` does) loads none of
its heavy modules until one of their names is asked for."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__`: `names` maps each name to the module that defines it."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
