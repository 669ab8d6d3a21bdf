"""ERF methods by name: `make_method(name, target, config)` builds one; all share `explain(images01, tokens,
features)`. A method's module loads only when it is built, so params validation and `cafe --help` read the
names without importing captum. Adding a method is its own file, one line here, and its test."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cafe.erf.config import METHODS
from cafe.errors import CafeError

if TYPE_CHECKING:
    from cafe.erf.base import ErfMethod
    from cafe.erf.config import ErfConfig
    from cafe.feature_target import FeatureTarget


def method_class(name: str) -> type[ErfMethod]:
    """The class of the method called `name`, or an error listing the known names."""
    if name not in METHODS:
        raise CafeError(f"erf: unknown method {name!r}; known: {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_method(name: str, target: FeatureTarget, config: ErfConfig | None = None) -> ErfMethod:
    """The method called `name` on `target`."""
    return method_class(name)(target, config)
