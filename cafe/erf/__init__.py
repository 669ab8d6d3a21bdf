"""Effective receptive fields: attribute one SAE latent z_k(I, t) of layer L to the image patches.

Every method has the same shape (captum-like): `make_method(name, target, config).explain(images01, tokens,
features)` -> `Attribution` (maps (B, grid, grid)), on a `FeatureTarget` (backbone + SAE + layer); only blocks
1..L run. Methods are registered by name in `registry`.
`attnlrp` (the paper's method; `rules` + `lrp`), `ig`, `kernelshap`, `gradient` and the `activation` baseline
(`methods`); `command` is `cafe erf`, which writes the ERF contract (`cafe.io.erf_maps`). The params (`config`)
are torch-free; the names below load their module when first asked for.
"""

from __future__ import annotations

from cafe.lazy import lazy_names

__all__ = ["METHODS", "Attribution", "ErfConfig", "ErfMethod", "make_method"]
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "Attribution": "cafe.erf.base",
        "ErfConfig": "cafe.erf.config",
        "ErfMethod": "cafe.erf.base",
        "METHODS": "cafe.erf.registry",
        "make_method": "cafe.erf.registry",
    },
)
