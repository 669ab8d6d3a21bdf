"""Residual-stream activations of every requested layer: the params (`cafe.activations.config`, torch-free), one
forward pass per batch (`cafe.activations.extract`), and the `cafe activations` command
(`cafe.activations.command`). The names below load their module when first asked for (`extract` is the module
once imported: `from cafe.activations.extract import extract`)."""

from __future__ import annotations

from cafe.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "ActivationsConfig": "cafe.activations.config",
        "register": "cafe.activations.command",
        "run_activations": "cafe.activations.command",
    },
)
