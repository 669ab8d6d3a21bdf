"""SAE file formats by name (params `sae.source.format`): `read_sae(format, path, options)` turns another tool's
checkpoint into one encoder with the interface the steps use (cafe/sae/encoder.py) and says where it was trained
(`TrainedAt`). A format's module loads only when it is read. Adding one is its own file, one line here, and its
test (tests/test_sae_formats.py)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cafe.errors import CafeError

if TYPE_CHECKING:  # a format's reading code (and torch) loads when an SAE is read, not when params name one
    from cafe.sae.formats.base import Imported

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


@dataclass(frozen=True)
class SAESource:
    """params `sae.source`: import each layer's SAE from another tool's file instead of training it."""

    format: str
    path: str | dict[str, str]  # a path, a pattern with {layer} (1-based) or {block} (0-based), or layer -> path
    options: dict[str, Any] = field(default_factory=dict)  # the format's own (its module's OPTIONS)
    download: str | None = None  # the command that fetches the weights, said when they are missing

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise CafeError(f"params: sae.source.format must be one of {sorted(FORMATS)}, not {self.format!r}")

    def path_for(self, layer: int) -> str:
        """The SAE file (or folder) of one layer."""
        if isinstance(self.path, dict):
            found = self.path.get(str(layer), self.path.get(layer))  # type: ignore[call-overload]
            if found is None:
                raise CafeError(f"params: sae.source.path names no SAE for layer {layer} (has {sorted(self.path)})")
            return found
        return _fill(self.path, layer)

    def absent(self, layers: list[int]) -> str | None:
        """None if every layer's SAE is on disk, else what is missing and how to fetch it."""
        paths = {layer: self.path_for(layer) for layer in layers}
        missing = [f"  layer {layer}: {path}" for layer, path in paths.items() if not Path(path).exists()]
        if not missing:
            return None
        if not self.download:
            return f"sae.source: the {self.format} SAEs are not on disk:\n" + "\n".join(missing)
        commands = sorted({_fill(self.download, layer) for layer in layers})
        return (
            f"sae.source: the {self.format} SAEs are not on disk:\n"
            + "\n".join(missing)
            + "\nfetch them with:\n  "
            + "\n  ".join(commands)
        )


def _fill(pattern: str, layer: int) -> str:
    """A path or command of one layer: {layer} is cafe's layer, {block} the 0-based index of its block."""
    return pattern.replace("{layer}", str(layer)).replace("{block}", str(layer - 1))


def read_sae(format: str, path: str | Path, options: dict[str, Any] | None = None) -> Imported:
    """The encoder of the SAE at `path` in `format`, and where it was trained."""
    if format not in FORMATS:
        raise CafeError(f"sae.source.format: unknown format {format!r}; known: {sorted(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise CafeError(f"{path}: no {format} SAE there (sae.source.path)")
    from cafe.sae.formats.base import Options

    module = importlib.import_module(FORMATS[format])
    opts = Options(format, dict(options or {}), module.OPTIONS)
    return module.read(path, opts)


__all__ = ["FORMATS", "SAESource", "read_sae"]
