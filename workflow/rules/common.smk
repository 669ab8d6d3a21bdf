# Shared values and input functions. Every value a job uses reaches it through its rule's `params:`,
# so Snakemake reruns exactly the jobs whose values changed.

import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from cafe.annotation.ingest import human_files
from cafe.errors import CafeError
from cafe.config import DEMO_BACKBONE, DEMO_IMAGES
from cafe.params import validate_config

try:  # every value with its default filled in, so a rule's params change when a default does
    config.update(validate_config(config, workflow.source_path("../schemas/params.schema.yaml")))
except CafeError as error:
    raise WorkflowError(str(error)) from None

LAYERS = sorted(config["layers"])
DEMO = config["demo"]["enabled"]
ERF_METHODS = config["erf"]["methods"]
MAIN_METHOD = "attnlrp" if "attnlrp" in ERF_METHODS else ERF_METHODS[0]
INSERTION_METHODS = ERF_METHODS + ["activation", "random"]
IMAGES = config["data"]["images"]

wildcard_constraints:
    layer=r"\d+",
    method=r"[a-z]+",


def as_json(value):
    """A params value as canonical JSON for the `cafe` CLI (`--params`)."""
    return json.dumps(value, sort_keys=True)


def backbone_checkpoint():
    """The backbone checkpoint as an input when it is a file (the demo's, or a user's); tags need none."""
    pretrained = config["backbone"].get("pretrained") or ""
    return [pretrained] if pretrained == DEMO_BACKBONE or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors") else []


def image_inputs():
    """The demo's images come from a rule; a user's folder (ImageNet) is read through params, so that
    `snakemake -n` plans the whole DAG on machines that do not hold it."""
    return [DEMO_IMAGES] if DEMO else []


def erf_params(method):
    """Only the values one ERF method depends on: changing IG steps does not rerun AttnLRP."""
    section = config["erf"]
    return as_json({"batch_size": section["batch_size"], method: section.get(method, {})})


def annotation_params(*keys):
    """Only the annotation values a job depends on: a Fig 4 setting does not redraw every gallery."""
    return as_json({key: config["annotation"][key] for key in keys})
