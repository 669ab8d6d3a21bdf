"""ERF methods by name: `METHODS[name](target, config)` builds one; all share
`attribute(images01, tokens, features)`."""

from __future__ import annotations

from cafe.erf.attnlrp import AttnLRP
from cafe.erf.base import ErfMethod
from cafe.erf.config import ErfConfig
from cafe.erf.methods import Activation, Gradient, IntegratedGradients, KernelShap
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget

METHODS: dict[str, type[ErfMethod]] = {
    cls.name: cls for cls in (AttnLRP, IntegratedGradients, KernelShap, Gradient, Activation)
}


def make_method(name: str, target: FeatureTarget, config: ErfConfig | None = None) -> ErfMethod:
    """The method called `name` on `target`, or an error listing the known names."""
    if name not in METHODS:
        raise CafeError(f"erf: unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](target, config)
