"""The reference AttnLRP library lxt on the same targets as cafe's AttnLRP, run in a subprocess because its
patches change torch classes for the whole process; where it cannot run, the reason is recorded instead."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

import torch

from cafe.bench.context import Context
from cafe.bench.measure import Timing

TIMEOUT_S = 600


def lxt_attnlrp(ctx: Context) -> dict[str, dict[str, Any] | str]:
    """Record `erf.attnlrp.lxt`, or in its place why lxt did not run (nothing where the profile skips it)."""
    return {"erf.attnlrp.lxt": _run_worker(ctx)} if ctx.profile.lxt else {}


def _run_worker(ctx: Context) -> dict[str, Any] | str:
    if importlib.util.find_spec("lxt") is None:
        return "lxt is not installed in this environment (pip install lxt zennit beside cafe to compare)"
    p = ctx.profile
    layer = ctx.layer(p.erf_layer)
    spec = {
        "model": p.model,
        "layer": layer,
        "targets": p.erf_targets,
        "expansion": p.sae_expansion,
        "device": str(ctx.timer.device),
        "threads": torch.get_num_threads(),
        "repeats": ctx.timer.repeats,
        "warmup": ctx.timer.warmup,
        "admission": ctx.timer.harness.admission,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cafe.bench.lxt_worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        return f"the lxt worker failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in result:
        return result["error"]
    flops = p.erf_targets * ctx.arch.forward_backward(layer, cp=True)
    return ctx.record(
        "lxt: gradient x input under lxt's global ViT patches (CP-LRP in attention), subprocess",
        "targets",
        p.erf_targets,
        Timing(**result["timing"]),
        flops,
        {"layer": layer, "targets": p.erf_targets, "patched": result["patched"]},
    )
