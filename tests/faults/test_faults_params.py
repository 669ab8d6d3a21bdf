"""Fault suite: bad params. Every rule of workflow/schemas/params.schema.yaml is broken once (a value of the wrong
type, below a minimum, outside an enum, an unknown key, a missing required key, ...), then the cross-field checks
and unknown names: each must stop with a message naming the key, before any job runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from workflow_utils import REPO, TINY_PARAMS

from cafe.errors import CafeError
from cafe.params import load_schema, validate_config

SCHEMA_PATH = REPO / "workflow" / "schemas" / "params.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
WRONG_TYPE = {"integer": "7x", "number": "fast", "boolean": "yes", "string": 5, "array": "x", "object": 3}


def resolve(node: dict) -> dict:
    """A schema node with its $ref followed."""
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].split("/")[-1]]
    return node


def a_valid_value(node: dict) -> Any:
    """Some value the node accepts (for uniqueItems: the item repeated)."""
    node = resolve(node)
    if "enum" in node:
        return node["enum"][0]
    minimum = node.get("minimum", node.get("exclusiveMinimum", 0))
    return {"integer": max(1, int(minimum) + 1), "number": 0.5}.get(node.get("type"), "x")


def bad_values(node: dict) -> list[tuple[str, Any]]:
    """(schema keyword, a value breaking exactly that keyword) for one property's schema."""
    node = resolve(node)
    out: list[tuple[str, Any]] = []
    kind = node.get("type")
    if isinstance(kind, str) and kind in WRONG_TYPE:
        out.append(("type", WRONG_TYPE[kind]))
    elif isinstance(kind, list):
        out.append(("type", 5 if "string" in kind else "x"))
    integer = kind == "integer"
    for key, shift in (("minimum", -1), ("exclusiveMinimum", 0), ("maximum", 1), ("exclusiveMaximum", 0)):
        if key in node:
            out.append((key, node[key] + shift if integer or shift == 0 else node[key] + 0.5 * shift))
    if "enum" in node:
        out.append(("enum", "no_such_name"))
    if "pattern" in node:
        out.append(("pattern", "no such device"))
    if "minLength" in node:
        out.append(("minLength", ""))
    if "minItems" in node:
        out.append(("minItems", []))
    if node.get("uniqueItems"):
        item = a_valid_value(node["items"])
        out.append(("uniqueItems", [item, item]))
    if "items" in node and kind == "array":
        out += [(f"items.{k}", [v]) for k, v in bad_values(node["items"]) if k != "type"]
    if "oneOf" in node:
        out.append(("oneOf", "neither"))
    return out


def schema_cases(node: dict | None = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, Any]]:
    """Every (key path, keyword, bad value) of the schema, objects recursed into."""
    node = resolve(node or SCHEMA)
    cases: list[tuple[tuple[str, ...], str, Any]] = []
    if node.get("type") == "object":
        if node.get("additionalProperties") is False:
            cases.append(((*path, "no_such_key"), "additionalProperties", 1))
        cases += [((*path, key), "required", None) for key in node.get("required", [])]
        for key, child in node.get("properties", {}).items():
            child = resolve(child)
            cases += schema_cases(child, (*path, key)) if child.get("type") == "object" else []
            cases += [((*path, key), kw, v) for kw, v in bad_values(child)]
    return cases


CASES = schema_cases()


def broken(path: tuple[str, ...], keyword: str, value: Any) -> dict:
    """TINY_PARAMS with one value replaced (or removed, for `required`)."""
    params = copy.deepcopy(TINY_PARAMS)
    section = params
    for key in path[:-1]:
        section = section.setdefault(key, {})
    if keyword == "required":
        section.pop(path[-1], None)
    else:
        section[path[-1]] = value
    return params


@pytest.mark.fault(
    "params.yaml breaks a rule of the schema (each rule once: type, minimum, enum, pattern, unknown key, required...)",
    "stopped when the DAG loads, with a message naming the key; nothing runs",
    generated=True,  # mutations of the schema, not faults met in the field: the table counts them apart
)
@pytest.mark.parametrize(("path", "keyword", "value"), CASES, ids=[f"{'.'.join(p)}:{k}" for p, k, _ in CASES])
def test_each_schema_rule_broken_once_is_named(path: tuple[str, ...], keyword: str, value: Any) -> None:
    with pytest.raises(CafeError) as err:
        validate_config(broken(path, keyword, value), SCHEMA_PATH)
    named = path[-1] if keyword in ("required", "additionalProperties") else ".".join(path)
    assert named in str(err.value), str(err.value)


def test_the_schema_walk_covers_every_keyword_the_schema_uses() -> None:
    used = {kw for _, kw, _ in CASES}
    assert {"type", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "enum", "pattern"} <= used
    assert {"minLength", "minItems", "uniqueItems", "additionalProperties", "required", "oneOf"} <= used
    assert len(CASES) > 80


CROSS_CASES = [
    ("layers", [1, 9], "layers [9] do not exist"),
    ("features.n_features", 10_000, "exceeds the SAE's"),
    ("annotation.n_features", 5, "annotation.n_features must not exceed features.n_features"),
    ("annotation.gallery_k", 3, "annotation.gallery_k must not exceed features.top_k"),
    ("data.images", "elsewhere", "demo.enabled is true, so data.images must be"),
    ("sae.groups", [0.5, 0.5, 1.0], "sae.groups has repeated prefixes"),
    ("backbone.model", "ViT-Nope-14", "ViT-Nope-14"),
]


@pytest.mark.fault(
    "params that pass the schema but not together (layer beyond the tower, more features than latents, ...) "
    "or an unknown model name",
    "stopped when the DAG loads, with the keys and values named",
)
@pytest.mark.parametrize(("key", "value", "message"), CROSS_CASES, ids=[c[0] for c in CROSS_CASES])
def test_cross_checks_and_unknown_names_are_named(key: str, value: Any, message: str) -> None:
    params = broken(tuple(key.split(".")), "set", value)
    with pytest.raises(CafeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_config(params, SCHEMA_PATH)


def test_the_tiny_params_themselves_are_valid() -> None:
    validate_config(copy.deepcopy(TINY_PARAMS), SCHEMA_PATH)
    assert Path(SCHEMA_PATH).is_file()
