"""The token layout every step shares (`TokenLayout`): where a ViT's token sequence holds its class token (if
any), its register tokens (if any) and its patch grid, row-major.

Every supported family puts its prefix tokens first: [CLS] [registers] patches (OpenCLIP and HF CLIP: CLS then
patches; DINOv2 with registers: CLS, 4 registers, patches; SigLIP: patches only). A token index anywhere in cafe
(activation files, features, ERF targets, insertion) is a position in that sequence. Registers stay in the
residual stream (every block reads them) but are never SAE training rows, features' argmax tokens or insertion
targets. Kept free of heavy imports, so that steps that only read files (sheets, Fig 5, ground truth) do not
load torch or any model library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from cafe.errors import CafeError

Array = TypeVar("Array")  # a numpy array or a torch tensor: only slicing and reshape are used


POSITIONS = ("all", "patches", "cls")  # which tokens an SAE was trained on (TokenLayout.mask names)


@dataclass(frozen=True)
class TokenLayout:
    """A sequence of `has_cls` class tokens, then `n_registers` register tokens, then grid x grid patches."""

    grid: int
    has_cls: bool = True
    n_registers: int = 0

    def __post_init__(self) -> None:
        if self.grid < 1 or self.n_registers < 0:
            raise CafeError(f"token layout: grid {self.grid} and {self.n_registers} registers are not a layout")

    @property
    def n_prefix(self) -> int:
        """Tokens before the first patch (CLS and registers)."""
        return int(self.has_cls) + self.n_registers

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def cls(self) -> int | None:
        """Position of the class token, None where the model has none (SigLIP)."""
        return 0 if self.has_cls else None

    @property
    def registers(self) -> range:
        return range(int(self.has_cls), self.n_prefix)

    @property
    def patches(self) -> slice:
        """The patch positions, row-major, as a slice of the token axis."""
        return slice(self.n_prefix, self.n_tokens)

    def readable(self) -> list[int]:
        """Positions a feature may be read at (SAE rows, argmax tokens, targets): CLS and patches, no registers."""
        return ([0] if self.has_cls else []) + list(range(self.n_prefix, self.n_tokens))

    def mask(self, which: str) -> list[bool]:
        """Per token, whether it is one of `which`: `all` (every token, registers too), `readable` (CLS and
        patches), `patches` or `cls` (e.g. the tokens an imported SAE was trained on)."""
        chosen = {
            "all": range(self.n_tokens),
            "readable": self.readable(),
            "patches": range(self.n_prefix, self.n_tokens),
            "cls": [] if self.cls is None else [self.cls],
        }
        if which not in chosen:
            raise CafeError(f"token layout: positions must be one of {sorted(chosen)}, not {which!r}")
        keep = set(chosen[which])
        return [token in keep for token in range(self.n_tokens)]

    def patch_token(self, row: int, col: int) -> int:
        return self.n_prefix + row * self.grid + col

    def label(self, token: int) -> str:
        """Where a token sits: CLS, reg i, or its patch as (row, col)."""
        if token == self.cls:
            return "CLS"
        if token in self.registers:
            return f"reg {token - int(self.has_cls)}"
        return "({},{})".format(*divmod(token - self.n_prefix, self.grid))

    def token_grid(self, per_token: Array) -> Array:
        """Values over tokens (..., n_tokens) -> the patch grid (..., grid, grid), prefix tokens dropped."""
        return per_token[..., self.n_prefix :].reshape(*per_token.shape[:-1], self.grid, self.grid)

    def attrs(self) -> dict[str, int]:
        """The layout as HDF5 attributes (with `grid` and `n_tokens`, which older files also carry)."""
        return {
            "grid": self.grid,
            "n_tokens": self.n_tokens,
            "has_cls": int(self.has_cls),
            "n_registers": self.n_registers,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str = "") -> TokenLayout:
        """The layout recorded in a file's attributes; files from before layouts were recorded are CLS + grid."""
        layout = cls(int(attrs["grid"]), bool(attrs.get("has_cls", True)), int(attrs.get("n_registers", 0)))
        if "n_tokens" in attrs and int(attrs["n_tokens"]) != layout.n_tokens:
            raise CafeError(f"{where}: n_tokens {attrs['n_tokens']} does not match the token layout {layout}")
        return layout
