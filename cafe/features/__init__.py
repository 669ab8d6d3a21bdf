"""The features step: its params (`cafe.features.config`, torch-free) and `cafe features`, the top activations of
the first N SAE features (`cafe.features.find`). The names below load their module when first asked for."""

from __future__ import annotations

from cafe.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "FeaturesConfig": "cafe.features.config",
        **dict.fromkeys(["TopImages", "find_features", "register", "run_features"], "cafe.features.find"),
    },
)
