"""Turn a params section (a dict from params.yaml, passed by a rule as JSON) into a frozen config dataclass.

Unknown keys are errors that name the key, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, TypeVar

from cafe.errors import CafeError

T = TypeVar("T")


def parse_section(cls: type[T], raw: dict[str, Any] | str | None, section: str) -> T:
    """Build `cls` from a dict (or JSON text); nested dataclass fields are parsed recursively."""
    values = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CafeError(
            f"params: unknown key(s) {', '.join(_key(section, k) for k in unknown)}; known: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = _unless_none(hints[name])
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = parse_section(hint, value, _key(section, name))
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CafeError(f"params: {section or 'top level'}: {exc}") from exc


def _unless_none(hint: Any) -> Any:
    """X of an `X | None` hint (an optional nested section), else the hint itself."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint


def _key(section: str, name: str) -> str:
    """The dotted name of a key in a section ("" is the top level)."""
    return f"{section}.{name}" if section else name


def as_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data (for checkpoints and HDF5 attributes)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


DEMO_IMAGES = "results/demo/images"
DEMO_BACKBONE = "results/backbone/demo.pt"

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_local_checkpoint(pretrained: str | None) -> bool:
    """Whether backbone.pretrained names a local file or folder (a path) rather than a tag or hub revision: the
    one test that `cafe.backbone` and the workflow (a checkpoint is a rule input) both use."""
    text = pretrained or ""
    return "/" in text or os.sep in text or text.endswith(CHECKPOINT_SUFFIXES)
