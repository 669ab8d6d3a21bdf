"""The Snakemake DAG as a user meets it: params validation at load time, and the paper's full DAG planned
on a machine without weights, ImageNet or a GPU."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from workflow_utils import REPO, TINY_PARAMS, make_workspace, run


def dry_run(root: Path, *extra: str):
    return run(["snakemake", "-n", "--cores", "1", *extra], root, check=False)


def with_change(path: str, value) -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    *parents, key = path.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[key] = value
    return params


GPU_RULES = {"activations", "sae", "features", "erf", "insertion", "greedy"}  # the steps that resolve `device`


def test_default_params_plan_every_rule_and_gpu_steps_declare_a_gpu(tmp_path):
    root = make_workspace(tmp_path)
    result = dry_run(root)
    assert result.returncode == 0, result.stderr
    for rule in (
        "demo_data",
        "demo_backbone",
        "activations",
        "sae",
        "features",
        "erf",
        "insertion",
        "fig3",
        "sheets",
        "fig5",
    ):
        assert re.search(rf"^{rule}\s+\d+", result.stdout, re.M), f"rule {rule} missing from the plan"
    # `resources: gpu=1` on exactly the GPU steps: `--resources gpu=N` caps them, SLURM gives each one GPU
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)*)", result.stdout, re.M)
    assert {rule for rule, block in jobs if re.search(r"resources: .*\bgpu=1\b", block)} == GPU_RULES
    assert {rule for rule, _ in jobs} > GPU_RULES


def test_slurm_profile_sets_resources_of_existing_rules_and_no_gres_in_slurm_extra():
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    rules = set(
        re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")), re.M)
    )
    assert set(profile["set-resources"]) <= rules
    assert set(profile["set-resources"]) >= GPU_RULES
    assert "slurm_extra" not in json.dumps(profile)
    assert profile["rerun-incomplete"] is True and profile["retries"] >= 1


def paper_params() -> dict:
    """The paper's parameters as a run sees them: defaults, then params.yaml, then paper.yaml."""
    from cafe.params import as_dict, merge, resolve

    files = [REPO / "params.yaml", REPO / "workflow/configs/paper.yaml"]
    config: dict = {}
    for path in files:
        config = merge(config, yaml.safe_load(path.read_text()))
    return as_dict(resolve(config))


def test_paper_config_plans_full_dag_without_weights_or_imagenet(tmp_path):
    root = make_workspace(tmp_path)
    result = dry_run(root, "--configfile", "workflow/configs/paper.yaml")
    assert result.returncode == 0, result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    paper = paper_params()
    layers, methods = len(paper["layers"]), len(paper["erf"]["methods"])
    assert counts["sae"] == str(layers) and counts["features"] == str(layers)
    rankings = methods + 2  # every ERF method, then the activation baseline and the random floor
    assert counts["erf"] == str(layers * methods) and counts["insertion"] == str(layers * rankings)
    assert "demo_data" not in counts and "demo_backbone" not in counts


def test_paper_config_uses_vit_l14_laion_weights():
    paper = paper_params()
    assert paper["backbone"] == {
        "model": "ViT-L-14",
        "pretrained": "laion2b_s32b_b82k",
        "seed": 0,
        "device": "auto",
        "family": "auto",
        "image_size": None,
    }
    assert paper["layers"] == list(range(1, 25))


BAD_PARAMS = [
    ("sae.lr", "fast", "lr"),
    ("sae.learning_rate", 0.1, "learning_rate"),
    ("layers", [1, 30], "30"),
    ("erf.methods", ["attnlrp", "occlusion"], "occlusion"),
    ("insertion.canvases", ["grey"], "grey"),
    ("features.n_features", 10_000, "features.n_features"),
    ("compute", {"precision": "fp16"}, "fp16"),
]


@pytest.mark.parametrize(("path", "value", "message"), [BAD_PARAMS[0], BAD_PARAMS[2]])  # schema; cross-field
def test_bad_params_stop_snakemake_with_a_message_naming_the_key(tmp_path, path, value, message):
    root = make_workspace(tmp_path, with_change(path, value))
    result = dry_run(root)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


@pytest.mark.parametrize(("path", "value", "message"), BAD_PARAMS)
def test_bad_params_are_refused_with_a_message_naming_the_key(path, value, message):
    """What the Snakefile runs at load (workflow/rules/common.smk), in process; the two cases above show that
    `snakemake` stops on either kind of error."""
    from cafe.errors import CafeError
    from cafe.params import validate_config

    with pytest.raises(CafeError, match=re.escape(message)):
        validate_config(with_change(path, value), REPO / "workflow/schemas/params.schema.yaml")


def test_cross_checks_compare_the_values_the_steps_will_use_defaults_included():
    """Without annotation.n_features the sheets take their default (100): more than the 4 features found."""
    from cafe.errors import CafeError
    from cafe.params import check_config

    params = copy.deepcopy(TINY_PARAMS)
    del params["annotation"]["n_features"]
    with pytest.raises(CafeError, match="annotation.n_features must not exceed features.n_features"):
        check_config(params)


def test_a_steps_precision_override_reaches_only_that_steps_jobs(tmp_path):
    root = make_workspace(tmp_path, with_change("compute", {"precision": "fp32", "steps": {"erf": "bf16"}}))
    result = dry_run(root, "--printshellcmds")
    assert result.returncode == 0, result.stderr
    modes: dict[str, set[str]] = {}
    for command in re.findall(r"^Shell command: cafe (\S+)(.*)$", result.stdout, re.M):
        modes.setdefault(command[0], set()).update(re.findall(r"--precision (\w+)", command[1]))
    assert modes["erf"] == {"bf16"}
    assert modes["activations"] == modes["sae"] == modes["insertion"] == modes["greedy"] == {"fp32"}
