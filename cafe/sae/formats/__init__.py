"""SAE file formats by name (params `sae.source.format`): `read_sae(format, path, options)` turns another tool's
checkpoint into one encoder with the interface the steps use (cafe/sae/encoder.py) and says where it was trained
(`TrainedAt`). A format's module loads only when it is read. Adding one is its own file, one line here, and its
test (tests/test_sae_formats.py)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cafe.errors import CafeError
from cafe.sae.formats.base import Imported, Options, TrainedAt

FORMATS: dict[str, str] = {  # name -> module with `read(path, options) -> Imported` and OPTIONS
    "cafe": "cafe.sae.formats.cafe_own",
    "saelens": "cafe.sae.formats.saelens",
    "saev": "cafe.sae.formats.saev",
    "prisma": "cafe.sae.formats.prisma",
    "dictionary_learning": "cafe.sae.formats.dictionary_learning",
    "sparsify": "cafe.sae.formats.sparsify",
    "patchsae": "cafe.sae.formats.patchsae",
    "overcomplete": "cafe.sae.formats.overcomplete",
}


def read_sae(format: str, path: str | Path, options: dict[str, Any] | None = None) -> Imported:
    """The encoder of the SAE at `path` in `format`, and where it was trained."""
    if format not in FORMATS:
        raise CafeError(f"sae.source.format: unknown format {format!r}; known: {sorted(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise CafeError(f"{path}: no {format} SAE there (sae.source.path)")
    module = importlib.import_module(FORMATS[format])
    opts = Options(format, dict(options or {}), module.OPTIONS)
    return module.read(path, opts)


__all__ = ["FORMATS", "Imported", "TrainedAt", "read_sae"]
