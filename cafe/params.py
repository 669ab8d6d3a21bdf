"""Params validation as the DAG loads: the JSON schema, then checks across fields and steps (e.g. layer 30 of a
24-block tower). It sits above every step (it reads their configs, with their defaults); no step imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cafe.config import DEMO_IMAGES, parse_section
from cafe.errors import CafeError


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
