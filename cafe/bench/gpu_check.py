"""The prepared GPU check (benchmarks/gpu_check.sh): on one GPU, in minutes, what a CPU cannot tell.

- Fidelity: the gates of `cafe bench --fidelity` (every ERF method, insertion AUC, SAE training) for bf16 and tf32
  against fp32 on ViT-L/14 with random weights.
- Rates per precision, through the harness: extraction (the feed decoding JPEGs on the device vs by PIL; the feed
  vs the forward), SAE training (resident vs streamed), ERF per method, insertion.

benchmarks/gpu_check.sh adds the demo DAG's timing (benchmarks/dag_timing.py, `--resources gpu=1`) under "dag".
Writes one JSON that `cafe bench --budget FILE` turns into the paper-scale budget per precision.

    python -m cafe.bench.gpu_check --out benchmarks/results/gpu-h100.json
    python -m cafe.bench.gpu_check --dry --out /tmp/gpu-dry.json --allow-busy   # CPU, tiny tower: the plumbing
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cafe.backbone import resolve_device
from cafe.bench.context import Context
from cafe.bench.erf import erf_methods
from cafe.bench.extraction import extraction
from cafe.bench.fidelity import Setting, fidelity_model
from cafe.bench.fixtures import load_tower, random_sae
from cafe.bench.harness import Harness, add_arguments, from_arguments
from cafe.bench.insertion import insertion
from cafe.bench.machine import describe, matmul_peak
from cafe.bench.measure import Timer
from cafe.bench.profiles import GPU, QUICK, Profile
from cafe.bench.sae_training import sae_training
from cafe.compute import PRECISIONS, precision_scope
from cafe.errors import CafeError
from cafe.io import write_json

log = logging.getLogger(__name__)

RATE_STAGES = {"extraction": extraction, "SAE training": sae_training, "ERF": erf_methods, "insertion": insertion}
# ViT-L/14, all methods, at the layer the paper's costs are quoted for; sized for a few minutes on an H100
FIDELITY = Setting("ViT-L-14", 24, 16, 8, 16, 64, 16, 64, 16)
RATES = replace(GPU["vitl"], repeats=3, captum=False)
# --dry: the tiny tower on the CPU, every step at its smallest (what the test runs)
DRY_FIDELITY = Setting("cafe-tiny-vit", 2, 6, 4, 2, 8, 4, 16, 0, sae_steps=10)
DRY_RATES = replace(
    QUICK["demo"],
    model="cafe-tiny-vit",
    extract_images=(4, 2),
    sae_tokens=(1 << 10,),
    sae_steps=2,
    sae_batch=64,
    sae_expansion=2,
    erf_layer=0,
    erf_targets=2,
    ig_steps=2,
    kernelshap_samples=4,
    insertion_layer=2,
    insertion_curves=2,
    insertion_steps=2,
    captum=False,
    lxt=False,
)


def rates(
    profile: Profile, mode: str, harness: Harness, device: torch.device, workdir: Path, dry: bool
) -> dict[str, Any]:
    """The rate stages of `profile` with everything in precision `mode` (a dry run: one pair per ratio)."""
    timer = Timer(harness, device, profile.repeats, warmup=1, pairs=1 if dry else None)
    backbone = load_tower(profile.model, device)
    ctx = Context(profile, backbone, random_sae(backbone.width, profile.sae_expansion, device), timer, workdir, mode)
    stages: dict[str, Any] = {}
    with precision_scope(mode, device):
        for title, stage in RATE_STAGES.items():
            began = time.perf_counter()
            stages.update(stage(ctx))
            log.info("%s %s: %s in %.1f s", profile.model, mode, title, time.perf_counter() - began)
    return {"models": {profile.model: {"stages": stages}}}


def run_gpu_check(out: Path, device: torch.device, harness: Harness, dry: bool) -> dict[str, Any]:
    """Fidelity, then rates per precision; `out` is rewritten as each part ends (a cut-short run keeps its parts)."""
    if device.type != "cuda" and not dry:
        raise CafeError("gpu_check: no GPU here (pass --dry for the CPU run of the plumbing)")
    fidelity_setting, profile = (DRY_FIDELITY, DRY_RATES) if dry else (FIDELITY, RATES)
    modes = PRECISIONS if device.type == "cuda" else ("fp32", "bf16")
    timer = Timer(harness, device, repeats=3, warmup=1, pairs=1 if dry else None)
    results: dict[str, Any] = {
        "machine": {**describe(device), "admission": harness.admit()},
        "dry": dry,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peak": matmul_peak(timer, quick=dry),
    }
    with tempfile.TemporaryDirectory(prefix="cafe-gpu-check-") as tmp:
        results["fidelity"] = fidelity_model(replace(fidelity_setting, modes=modes), device, timer, Path(tmp))
        write_json(out, results)
        results["precisions"] = {}
        for mode in modes:
            results["precisions"][mode] = rates(profile, mode, harness, device, Path(tmp) / mode, dry)
            write_json(out, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI of the check (benchmarks/gpu_check.sh calls it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dry", action="store_true", help="the tiny tower on the CPU: every step, smallest sizes")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = torch.device("cpu") if args.dry else resolve_device(args.device)
    try:
        run_gpu_check(args.out, device, from_arguments(args), args.dry)
    except CafeError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
