"""Turn a params section (a dict from params.yaml, passed by a rule as JSON) into a frozen config dataclass.

Unknown keys are errors that name the key, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
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
            f"params: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; known: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = parse_section(hint, value, f"{section}.{name}")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CafeError(f"params: {section}: {exc}") from exc


def as_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able data (for checkpoints and HDF5 attributes)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


DEMO_IMAGES = "results/demo/images"
DEMO_BACKBONE = "results/backbone/demo.pt"


def validate_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Check params against the JSON schema, then across fields; every error names its key."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise CafeError("params: invalid values\n" + "\n".join(lines))
    check_config(config)


def check_config(config: dict[str, Any]) -> None:
    """Cross-field checks the schema cannot express (e.g. layer 30 of a 24-block tower); names the key."""
    from cafe.annotation.config import AnnotationConfig
    from cafe.backbone import tower_shape
    from cafe.compute import ComputeConfig
    from cafe.features import FeaturesConfig
    from cafe.sae.model import SAEConfig

    shape = tower_shape(config["backbone"]["model"])
    bad = [layer for layer in config["layers"] if layer > shape.depth]
    if bad:
        raise CafeError(f"params: layers {bad} do not exist: {config['backbone']['model']} has blocks 1..{shape.depth}")
    # the values the steps will use, defaults included
    sae = parse_section(SAEConfig, config["sae"], "sae")
    features = parse_section(FeaturesConfig, config["features"], "features")
    annotation = parse_section(AnnotationConfig, config["annotation"], "annotation")
    parse_section(ComputeConfig, config.get("compute"), "compute")
    n_latents = sae.expansion * shape.width
    if features.n_features > n_latents:
        raise CafeError(f"params: features.n_features = {features.n_features} exceeds the SAE's {n_latents} latents")
    if annotation.n_features > features.n_features:
        raise CafeError(
            "params: annotation.n_features must not exceed features.n_features (sheets need those features)"
        )
    if annotation.gallery_k > features.top_k:
        raise CafeError("params: annotation.gallery_k must not exceed features.top_k")
    if config["demo"]["enabled"] and config["data"]["images"] != DEMO_IMAGES:
        raise CafeError(
            f"params: demo.enabled is true, so data.images must be {DEMO_IMAGES!r} (or set demo.enabled: false)"
        )
