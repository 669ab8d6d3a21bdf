"""One home per default and per allowed value: the config dataclasses hold the defaults, the registries hold
the names, and the schema, params.yaml and paper.yaml cannot drift from them."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_utils import REPO, TINY_PARAMS

from cafe.backbone.registry import AUTO, FAMILIES
from cafe.erf.config import ATTENTION_RULES, ATTRIBUTION_METHODS, METHODS
from cafe.erf.registry import method_class
from cafe.errors import CafeError
from cafe.images import DECODERS
from cafe.insertion.canvases import CANVASES
from cafe.params import Params, defaults, load_schema, merge, resolve, validate_config
from cafe.sae.config import RESIDENT_MODES
from cafe.sae.nonlinearity import ACTIVATIONS

SCHEMA_PATH = REPO / "workflow/schemas/params.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)


def schema_node(path: str) -> dict[str, Any]:
    """The schema of a dotted params key (`erf.attnlrp.attention`), references followed."""
    node = SCHEMA
    for name in path.split("."):
        node = node["properties"][name]
    return node


def enum_of(path: str) -> list[str]:
    node = schema_node(path)
    node = node.get("items", node)
    return SCHEMA["$defs"][node["$ref"].split("/")[-1]]["enum"]


@pytest.mark.parametrize(
    ("path", "registry"),
    [
        ("erf.methods", ATTRIBUTION_METHODS),
        ("insertion.canvases", tuple(CANVASES)),
        ("sae.activation", tuple(ACTIVATIONS)),
        ("sae.resident", RESIDENT_MODES),
        ("erf.attnlrp.attention", ATTENTION_RULES),
        ("activations.decode", DECODERS),
        ("backbone.family", (AUTO, *FAMILIES)),
    ],
)
def test_schema_enums_equal_the_registries(path, registry):
    assert sorted(enum_of(path)) == sorted(registry)


def test_every_registered_erf_method_is_the_class_its_name_says():
    for name in METHODS:
        assert method_class(name).name == name


def dataclass_fields(cls: type, prefix: str = "") -> set[str]:
    """Every leaf field of a config dataclass tree, by dotted path."""
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out |= dataclass_fields(hints[f.name], f"{path}.") if dataclasses.is_dataclass(hints[f.name]) else {path}
    return out


def schema_leaves(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every leaf key of the schema, by dotted path (a key that may be a number or a section counts as a leaf)."""
    out: dict[str, dict[str, Any]] = {}
    for name, child in node.get("properties", {}).items():
        if child.get("type") == "object" and "properties" in child:
            out.update(schema_leaves(child, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = child
    return out


def test_schema_and_dataclasses_name_the_same_keys():
    fields = set(dataclass_fields(Params))
    leaves = set(schema_leaves(SCHEMA))
    gamma = {"erf.attnlrp.gamma.attention", "erf.attnlrp.gamma.mlp"}  # a number or a section: one leaf
    assert fields - gamma | {"erf.attnlrp.gamma"} == leaves


def keys_named(node: Any, name: str, path: str = "") -> list[str]:
    """Where a key called `name` appears anywhere in a YAML tree."""
    if isinstance(node, dict):
        here = [path] if name in node else []
        return here + [p for k, v in node.items() for p in keys_named(v, name, f"{path}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in keys_named(v, name, f"{path}/{i}")]
    return []


def test_schema_file_holds_no_default_and_no_list_of_names_of_its_own():
    """A `default:` or an `enum:` in the schema file would be a second home; dataclasses and registries are the
    only ones."""
    text = yaml.safe_load(SCHEMA_PATH.read_text())
    assert keys_named(text, "default") == [] and keys_named(text, "enum") == []


def test_every_parameter_but_layers_has_a_default_and_the_defaults_pass_validation():
    params = resolve({"layers": [2, 4, 6]})
    assert params == Params(layers=(2, 4, 6))
    no_default = dataclasses.MISSING
    missing = [
        f.name for f in dataclasses.fields(Params) if f.default is no_default and f.default_factory is no_default
    ]
    assert missing == ["layers"]


def restated_defaults(config: dict[str, Any], base: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of `config` whose value equals the default in `base` (an override file should state none)."""
    out = []
    for key, value in config.items():
        default = base.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            out += restated_defaults(value, default, f"{prefix}{key}.")
        elif default is not None and value == default:
            out.append(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("name", ["params.yaml", "workflow/configs/paper.yaml"])
def test_params_files_state_only_what_differs_from_the_defaults(name):
    config = yaml.safe_load((REPO / name).read_text())
    assert restated_defaults(config, defaults()) == []


@pytest.mark.parametrize("name", ["params.yaml", "the tiny demo's (tests)"])
def test_params_files_keep_every_section_that_dvc_tracks(name):
    """DVC tracks params by section and fails on a section absent from params.yaml."""
    config = yaml.safe_load((REPO / "params.yaml").read_text()) if name == "params.yaml" else TINY_PARAMS
    tracked = {
        p
        for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
        for p in stage.get("params", [])
    }
    assert tracked <= set(config)


def test_overrides_merge_key_by_key_into_the_defaults():
    params = resolve(merge({"layers": [1]}, {"sae": {"l1": 0.5}, "erf": {"ig": {"steps": 3}}}))
    assert params.sae.l1 == 0.5 and params.sae.lr == defaults()["sae"]["lr"]
    assert params.erf.ig.steps == 3 and params.erf.kernelshap == Params(layers=(1,)).erf.kernelshap


@pytest.mark.parametrize(
    ("section", "value", "known"),
    [
        ({"insertion": {"canvases": ["grey"]}}, "grey", sorted(CANVASES)),
        ({"sae": {"activation": "topk"}}, "topk", sorted(ACTIVATIONS)),
        ({"sae": {"resident": "gpu"}}, "gpu", sorted(RESIDENT_MODES)),
        ({"erf": {"methods": ["occlusion"]}}, "occlusion", sorted(ATTRIBUTION_METHODS)),
        ({"activations": {"decode": "gpu"}}, "gpu", sorted(DECODERS)),
    ],
)
def test_unknown_names_are_rejected_at_validation_with_the_known_names(section, value, known):
    config = {"layers": [2], **section}
    with pytest.raises(CafeError) as schema_error:
        validate_config(config, SCHEMA_PATH)
    with pytest.raises(CafeError) as dataclass_error:  # the same without the schema (a step's own --params)
        resolve(config)
    for message in (str(schema_error.value), str(dataclass_error.value)):
        assert value in message and all(name in message for name in known), message


def test_a_demo_tower_without_the_demo_is_refused():
    with pytest.raises(CafeError, match="demo.enabled is false"):
        validate_config({"layers": [2], "demo": {"enabled": False}}, SCHEMA_PATH)


def test_cafe_params_prints_every_value_a_run_uses(tmp_path: Path, capsys):
    from cafe.cli import main

    (tmp_path / "params.yaml").write_text("layers: [1]\nsae: {l1: 0.5}\n")
    assert main(["params", "--params", str(tmp_path / "params.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sae"]["l1"] == 0.5 and printed["layers"] == [1]
    assert printed["insertion"] == defaults()["insertion"]
