"""The manifest step: its params (`cafe.manifest.config`, without pandas) and `cafe manifest`, the seeded
train/analysis draw of an ImageFolder (`cafe.manifest.draw`). The names below load their module when first asked
for."""

from __future__ import annotations

from cafe.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "BAD_IMAGES": "cafe.manifest.config",
        "DataConfig": "cafe.manifest.config",
        **dict.fromkeys(["make_manifest", "register", "run_manifest", "screen_manifest"], "cafe.manifest.draw"),
    },
)
