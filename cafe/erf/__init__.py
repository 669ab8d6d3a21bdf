"""Effective receptive fields: attribute one SAE latent z_k(I, t) of layer L to the image patches.

Every method has the same shape (captum-like): `make_method(name, target, config).explain(images01, tokens,
features)` -> `Attribution` (maps (B, grid, grid)), on a `FeatureTarget` (backbone + SAE + layer); only blocks
1..L run. Methods are registered by name in `registry`.
`attnlrp` (the paper's method; `rules` + `lrp`), `ig`, `kernelshap`, `gradient` and the `activation` baseline
(`methods`); `command` is `cafe erf`, which writes the ERF contract (`cafe.io.erf_maps`).
"""

from cafe.erf.base import Attribution, ErfMethod
from cafe.erf.config import ErfConfig
from cafe.erf.registry import METHODS, make_method

__all__ = ["METHODS", "Attribution", "ErfConfig", "ErfMethod", "make_method"]
