"""What every format reader returns (`Imported`: the encoder and `TrainedAt`), its options, and the file readers
they share (JSON, safetensors, torch state dicts, and pickled configs read without the tool installed)."""

from __future__ import annotations

import json
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cafe.errors import CafeError
from cafe.tokens import POSITIONS

RESIDUAL = "residual"  # the only site cafe reads: the residual stream after a block


@dataclass(frozen=True)
class TrainedAt:
    """Where the SAE was trained, as its file says (None: the file does not say; the study's layer is assumed)."""

    block: int | None  # 0-based index of the block whose output it read (negative: from the end, as in Python)
    site: str  # RESIDUAL, or the tool's name of another site (an MLP output...), which cafe refuses
    positions: str  # tokens it was trained on: all | patches | cls
    backbone: str | None  # the backbone, as the tool names it
    hook: str  # the tool's own words for the hook, for messages

    def layer(self, depth: int) -> int | None:
        """cafe's layer (residual after block L, 1-based) in a tower of `depth` blocks."""
        if self.block is None:
            return None
        return (self.block if self.block >= 0 else depth + self.block) + 1


@dataclass
class Imported:
    """An SAE read from another tool's file."""

    encoder: nn.Module
    trained_at: TrainedAt
    details: dict[str, Any]  # what was read (architecture, normalisation...), recorded in cafe's checkpoint
    needs_input_scaling: bool = False  # saev: its input mean and scale are estimated from the analysis tokens


class Options:
    """A format's options (params `sae.source.options`); unknown keys are errors listing the known ones."""

    def __init__(self, format: str, values: dict[str, Any], known: dict[str, str]):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise CafeError(
                f"sae.source.options: {unknown} not options of the {format} format; known: "
                + ("; ".join(f"{k} ({v})" for k, v in known.items()) or "none")
            )
        self.format, self.values = format, values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def positions(self, default: str = "all") -> str:
        """The trained token positions given in the options (for formats whose files do not record them)."""
        value = self.values.get("positions", default)
        if value not in POSITIONS:
            raise CafeError(f"sae.source.options.positions must be one of {POSITIONS}, not {value!r}")
        return value


POSITIONS_OPTION = {"positions": "tokens it was trained on when the file does not say: all | patches | cls"}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file, or a CafeError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CafeError(f"{path}: not a readable JSON file ({exc})") from exc


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or a CafeError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types and OSError
        raise CafeError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_state(path: Path) -> Any:
    """A torch file of tensors, dicts and plain values (no pickled classes), or a CafeError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CafeError(f"{path}: not a readable torch state dict ({exc})") from exc


class _Stub:
    """Stands in for a tool's pickled config class: keeps its fields as a dict, runs none of its code."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.__dict__["fields"] = dict(kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["fields"] = dict(state[1] if isinstance(state, tuple) else state or {})

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__["fields"][key] = value


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"__module__": module})


def read_pickled_config(path: Path, tool_modules: tuple[str, ...]) -> Any:
    """A torch file whose config is a pickled class of the tool (`tool_modules`: its module prefixes), read without
    importing the tool: those classes become plain field holders and nothing else outside torch's allow-list loads."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] in tool_modules or module in ("pathlib", "dataclasses"):
                return _stub_class(module, name)
            if _tensor_global(module, name):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an SAE checkpoint")

    module = types.ModuleType("cafe_restricted_pickle")  # what torch.load needs of a pickle module
    module.Unpickler, module.load = Unpickler, pickle.load
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except Exception as exc:
        raise CafeError(f"{path}: not a readable {tool_modules[0]} checkpoint ({exc})") from exc


def _tensor_global(module: str, name: str) -> bool:
    """The globals a pickled state dict needs: tensor and storage rebuilders, dtypes, OrderedDict, sets."""
    if module == "torch._utils":
        return name.startswith("_rebuild")
    if module == "torch":
        dtype = isinstance(getattr(torch, name, None), torch.dtype)
        return name.endswith("Storage") or name in ("Size", "device") or dtype
    return (module, name) in {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


def fields(config: Any) -> dict[str, Any]:
    """A config read from a file as a dict: JSON dicts as they are, pickled tool classes by their fields."""
    return config.__dict__["fields"] if isinstance(config, _Stub) else dict(config)


def tensor(state: dict[str, torch.Tensor], key: str, path: Path, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """state[key] as float32 (of `shape` if given), or a CafeError naming the file and the keys it has."""
    if key not in state:
        raise CafeError(f"{path}: no tensor {key!r} (has {sorted(state)}); not this format's file?")
    value = state[key].detach().float()
    if shape is not None and tuple(value.shape) != shape:
        raise CafeError(f"{path}: {key} has shape {tuple(value.shape)}, expected {shape}")
    return value


HOOK = re.compile(r"blocks\.(-?\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|[\w.]+)$")


def transformer_lens_hook(name: str, positions: str, backbone: str | None) -> TrainedAt:
    """TrainedAt of a TransformerLens-style hook name (`blocks.L.hook_resid_post`, SAELens and ViT-Prisma)."""
    match = HOOK.match(name or "")
    if match is None:
        return TrainedAt(None, name or "unknown", positions, backbone, name or "unknown")
    block, kind = int(match.group(1)), match.group(2)
    if kind == "hook_resid_post":
        return TrainedAt(block, RESIDUAL, positions, backbone, name)
    if kind == "hook_resid_pre":  # the input of block L is the output of block L-1
        return TrainedAt(block - 1, RESIDUAL if block > 0 else "embeddings", positions, backbone, name)
    return TrainedAt(block, kind, positions, backbone, name)
