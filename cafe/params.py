"""Every parameter of a study in one tree (`Params`), and its validation as the DAG loads.

Each default has one home: the config dataclass of the step that uses it (documented there), and the defaults
are the embedded demo. `Params` composes those dataclasses; params.yaml and any `--configfile` only override,
merged key by key in that order (as Snakemake merges config files). Validation runs the JSON schema (types,
ranges, the registries' names), builds `Params` (each step's own checks), then checks across fields and steps
(e.g. layer 30 of a 24-block tower). This module sits above every step; no step imports it. It reads only the
steps' torch-free config modules, so the DAG loads (Snakefile, `cafe sync`) without torch or any model library:
tests/test_startup.py checks it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from cafe.activations.config import ActivationsConfig
from cafe.annotation.config import AnnotationConfig
from cafe.backbone import BackboneConfig, tower_shape
from cafe.backbone.registry import AUTO, FAMILIES
from cafe.compute import PRECISIONS, ComputeConfig
from cafe.config import DEMO_BACKBONE, DEMO_IMAGES, as_dict, parse_section
from cafe.demo.config import DemoBackboneConfig, DemoConfig
from cafe.erf.config import ATTENTION_RULES, ATTRIBUTION_METHODS, KERNELSHAP_SOLVERS, ErfConfig
from cafe.errors import CafeError
from cafe.features.config import FeaturesConfig
from cafe.ground_truth.config import GroundTruthConfig
from cafe.images import DECODERS
from cafe.insertion.canvases import CANVASES
from cafe.insertion.config import InsertionConfig
from cafe.manifest.config import BAD_IMAGES, DataConfig
from cafe.sae.config import RESIDENT_MODES, SAEConfig
from cafe.sae.formats import FORMATS
from cafe.sae.nonlinearity import ACTIVATIONS


@dataclass(frozen=True)
class DemoParams(DemoConfig):
    """params.yaml `demo:`: the demo world (DemoConfig), whether it is used, and the training of its tower."""

    enabled: bool = True  # make the scenes and train the demo tower; data.images and backbone point at them
    backbone: DemoBackboneConfig = field(default_factory=DemoBackboneConfig)


def _demo_backbone() -> BackboneConfig:
    return BackboneConfig(model="cafe-demo-vit", pretrained=DEMO_BACKBONE)


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml, defaults included. `layers` has none: which blocks a study looks at is its
    subject, stated in params.yaml (the demo: 2, 4, 6; the paper: all 24)."""

    layers: tuple[int, ...]  # blocks (1-based) whose residual stream is studied
    demo: DemoParams = field(default_factory=DemoParams)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=_demo_backbone)  # the demo tower the pipeline trains
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    erf: ErfConfig = field(default_factory=ErfConfig)
    insertion: InsertionConfig = field(default_factory=InsertionConfig)
    ground_truth: GroundTruthConfig = field(default_factory=GroundTruthConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)


def defaults() -> dict[str, Any]:
    """The default of every section as plain data (what an empty section of params.yaml means)."""
    return {f.name: as_dict(f.default_factory()) for f in fields(Params) if f.default_factory is not MISSING}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base` key by key (nested sections too); lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both_sections else value
    return merged


def resolve(config: dict[str, Any]) -> Params:
    """The parameters a study runs with: the defaults, overridden by `config` (unknown keys are errors)."""
    values = merge(defaults(), config)
    return parse_section(Params, values, "")


def load_schema(path: str | Path) -> dict[str, Any]:
    """The params schema with the registries' names added as enums (`$defs`): a name is written once, in its
    registry."""
    import yaml

    schema = yaml.safe_load(Path(path).read_text())
    schema.setdefault("$defs", {}).update(
        {
            "erf_method": {"enum": list(ATTRIBUTION_METHODS)},
            "backbone_family": {"enum": [AUTO, *FAMILIES]},
            "attention_rule": {"enum": list(ATTENTION_RULES)},
            "canvas": {"enum": list(CANVASES)},
            "sae_activation": {"enum": list(ACTIVATIONS)},
            "sae_resident": {"enum": list(RESIDENT_MODES)},
            "sae_format": {"enum": list(FORMATS)},
            "precision": {"enum": list(PRECISIONS)},
            "kernelshap_solver": {"enum": list(KERNELSHAP_SOLVERS)},
            "bad_images": {"enum": list(BAD_IMAGES)},
            "image_decode": {"enum": list(DECODERS)},
        }
    )
    return schema


def validate_config(config: dict[str, Any], schema_path: str | Path) -> dict[str, Any]:
    """Check params against the JSON schema, build them with their defaults, check across fields; every error
    names its key. Returns every parameter as plain data (defaults filled in), what the rules pass on."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise CafeError("params: invalid values\n" + "\n".join(lines))
    params = resolve(config)
    check_params(params)
    return as_dict(params)


def check_config(config: dict[str, Any]) -> None:
    """Cross-field checks of a params dict (defaults filled in first)."""
    check_params(resolve(config))


def check_params(params: Params) -> None:
    """Cross-field checks the schema cannot express (e.g. layer 30 of a 24-block tower); names the key."""
    shape = tower_shape(params.backbone)
    bad = [layer for layer in params.layers if layer > shape.depth]
    if bad:
        raise CafeError(f"params: layers {bad} do not exist: {params.backbone.model} has blocks 1..{shape.depth}")
    if params.sae.source is not None:
        _check_source(params)
    elif params.features.n_features > (n_latents := params.sae.expansion * shape.width):
        raise CafeError(
            f"params: features.n_features = {params.features.n_features} exceeds the SAE's {n_latents} latents"
        )
    if params.annotation.n_features > params.features.n_features:
        raise CafeError(
            "params: annotation.n_features must not exceed features.n_features (sheets need those features)"
        )
    if params.annotation.gallery_k > params.features.top_k:
        raise CafeError("params: annotation.gallery_k must not exceed features.top_k")
    if params.demo.enabled and params.data.images != DEMO_IMAGES:
        raise CafeError(
            f"params: demo.enabled is true, so data.images must be {DEMO_IMAGES!r} (or set demo.enabled: false)"
        )
    if not params.demo.enabled and (params.data.images == DEMO_IMAGES or params.backbone.pretrained == DEMO_BACKBONE):
        raise CafeError(
            "params: demo.enabled is false, so the demo's tower and scenes are not made: set backbone.pretrained "
            "(a tag, hub revision or checkpoint path) and data.images (an ImageFolder)"
        )


def _check_source(params: Params) -> None:
    """Imported SAEs need no train tokens, and a path for every layer."""
    if params.data.n_train != 0:
        raise CafeError(
            f"params: sae.source imports the SAEs, so no train tokens are extracted: set data.n_train: 0 "
            f"(it is {params.data.n_train})"
        )
    for layer in params.layers:
        params.sae.source.path_for(layer)


def run_params(args: argparse.Namespace) -> None:
    """CLI: print every parameter a study runs with (defaults, then params.yaml, then --configfile)."""
    import yaml

    config: dict[str, Any] = {}
    for path in [args.params, *args.configfile]:
        try:
            config = merge(config, yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise CafeError(f"{path}: cannot read params ({exc})") from exc
    resolved = as_dict(resolve(config)) if args.resolved else defaults()
    print(yaml.safe_dump(resolved, sort_keys=False), end="")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe params`."""
    parser = subparsers.add_parser("params", help="print every parameter with its value (defaults filled in)")
    parser.add_argument("--params", default="params.yaml", help="the params file to read (default params.yaml)")
    parser.add_argument("--configfile", nargs="*", default=[], help="further files merged on top, in order")
    parser.add_argument(
        "--defaults", dest="resolved", action="store_false", help="print the defaults only (an empty params.yaml)"
    )
    parser.set_defaults(func=run_params)
