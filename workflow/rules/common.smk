# Shared values and input functions. Every value a job uses reaches it through its rule's `params:`,
# so Snakemake reruns exactly the jobs whose values changed.
# Rules whose step runs on a GPU (device auto) declare `resources: gpu=1`: `--resources gpu=N` caps how many run at
# once on a node (without it the resource is not limited), and the SLURM executor asks for one GPU per such job.

import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from cafe.compute import ComputeConfig
from cafe.annotation.files import human_files
from cafe.errors import CafeError
from cafe.config import DEMO_BACKBONE, DEMO_IMAGES, is_local_checkpoint, parse_section
from cafe.io.hashes import HASH_CACHE
from cafe.params import validate_config
from cafe.provenance import report_labels
from cafe.sae.formats import SAESource

try:  # every value with its default filled in, so a rule's params change when a default does
    config.update(validate_config(config, workflow.source_path("../schemas/params.schema.yaml")))
except CafeError as error:
    raise WorkflowError(str(error)) from None


LAYERS = sorted(config["layers"])
# Imported SAEs (params sae.source): `snakemake -n` plans the whole DAG without their files; a run stops before
# its first job when one is absent, saying where it goes and how to fetch it (onstart runs in real runs only).
SAE_SOURCE = SAESource(**config["sae"]["source"]) if config["sae"]["source"] else None


onstart:
    if SAE_SOURCE is not None and (absent := SAE_SOURCE.absent(LAYERS)):
        raise WorkflowError(absent)
DEMO = config["demo"]["enabled"]
ERF_METHODS = config["erf"]["methods"]
MAIN_METHOD = "attnlrp" if "attnlrp" in ERF_METHODS else ERF_METHODS[0]
INSERTION_METHODS = ERF_METHODS + ["activation", "random"]
IMAGES = config["data"]["images"]
# Threads of the jobs that use the whole machine (torch takes every core anyway). A number fixed when the DAG
# loads, not `workflow.cores`: that needs --cores at parse time, so `snakemake --unlock`, `-n`, `--report` and
# `--touch` would fail without it. Snakemake lowers it to --cores (and --max-threads) when jobs are scheduled.
ALL_CORES = os.cpu_count() or 1

wildcard_constraints:
    layer=r"\d+",
    method=r"[a-z]+",


def reported(product, caption, category):
    """An output in the HTML report, labelled with its provenance record (`<product>.prov.json`, the file
    `cafe verify` reads; docs/provenance.md), read when the report is made."""
    return report(product, caption=caption, category=category, labels=lambda wildcards: report_labels(product))


def as_json(value):
    """A params value as canonical JSON for the `cafe` CLI (`--params`)."""
    return json.dumps(value, sort_keys=True)


def backbone_checkpoint():
    """The backbone checkpoint as an input when it is a local path (the demo's, or a user's); tags need none."""
    pretrained = config["backbone"].get("pretrained") or ""
    return [pretrained] if is_local_checkpoint(pretrained) else []


def sae_source_input(wildcards):
    """The imported SAE file (or folder) of a layer, as an input when it is on disk (absent only in a dry run)."""
    path = SAE_SOURCE.path_for(int(wildcards.layer))
    return [path] if Path(path).exists() else []


def image_inputs():
    """The demo's images come from a rule; a user's folder (ImageNet) is read through params, so that
    `snakemake -n` plans the whole DAG on machines that do not hold it."""
    return [DEMO_IMAGES] if DEMO else []


def precision_for(step):
    """The precision of one step (compute.precision, or its compute.steps override): each rule gets only its own,
    so changing one step's precision reruns only that step's jobs."""
    return parse_section(ComputeConfig, config["compute"], "compute").for_step(step)


def erf_params(method):
    """Only the values one ERF method depends on: changing IG steps does not rerun AttnLRP."""
    section = config["erf"]
    return as_json({"batch_size": section["batch_size"], method: section.get(method, {})})


def ground_truth_params(*keys):
    """Only the ground_truth values one rule depends on (defaults filled in): a new Shapley threshold does not
    rescore the maps against the planted masks."""
    return as_json({key: config["ground_truth"][key] for key in keys})


def annotation_params(*keys):
    """Only the annotation values a job depends on: a Fig 4 setting does not redraw every gallery."""
    return as_json({key: config["annotation"][key] for key in keys})
