"""The whole bench: the machine and its matmul peak, then every stage of each model, the side-by-side ratios and
the ERF depth curve, written as JSON (+ a markdown summary) and printed as a table."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cafe.bench.context import Context
from cafe.bench.erf import erf_depth, erf_methods
from cafe.bench.extraction import extraction
from cafe.bench.fixtures import load_tower, random_sae
from cafe.bench.flops import FLOP_MODEL
from cafe.bench.harness import Harness
from cafe.bench.insertion import insertion
from cafe.bench.lxt import lxt_attnlrp
from cafe.bench.machine import describe, matmul_peak
from cafe.bench.measure import Timer, cpu_memory_kind
from cafe.bench.profiles import profile
from cafe.bench.reference import autograd_reference, truncated_vs_hooked
from cafe.bench.report import markdown, table
from cafe.bench.sae_training import sae_training
from cafe.devices import resolve_device
from cafe.erf.config import ATTRIBUTION_METHODS
from cafe.io import write_json, write_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# each stage returns {record name: record, or why it could not be measured}
STAGES: dict[str, Callable[[Context], dict[str, dict[str, Any] | str]]] = {
    "extraction": extraction,
    "sae": sae_training,
    "target": truncated_vs_hooked,  # the one-token last block vs a full tower with a hook
    "erf": erf_methods,
    "lxt": lxt_attnlrp,
    "insertion": insertion,
    "reference": autograd_reference,
    "depth": lambda ctx: {},  # the ERF depth curve, measured after the stages (its own record)
}
# (what is compared, our stage, what a user would otherwise write)
COMPARISONS = [
    ("extraction: one pass for all layers vs one pass per layer", "extraction", "extraction.per_layer"),
    ("z at layer L: truncated forward vs full tower + forward hook", "target.truncated", "target.hooked"),
    ("insertion: batched steps vs one forward per step", "insertion", "insertion.per_step"),
    # attnlrp, gradient: targets batched; ig: steps of several targets per forward; kernelshap: perturbations
    *[
        (f"{m}: cafe's batching vs one target per call with captum's defaults", f"erf.{m}", f"erf.{m}.one_at_a_time")
        for m in ATTRIBUTION_METHODS
    ],
    (
        "kernelshap: cafe's batched solver vs captum's KernelShap, equal samples and targets",
        "erf.kernelshap",
        "erf.kernelshap.captum",
    ),
    ("CP-LRP (lxt's ViT recipe): cafe's rules vs lxt's global patches", "erf.attnlrp.cp", "erf.attnlrp.lxt"),
]


def comparisons(stages: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up of each of our stages over its baseline (throughput ratio per alternating pair: median, min, max),
    with the ratio FLOPs alone predict."""
    titles = {(ours, base): what for what, ours, base in COMPARISONS}
    rows = []
    for base, record in stages.items():
        if "versus" not in record:
            continue
        versus, ours = record["versus"], record["versus"]["ours"]
        rows.append(
            {
                "what": titles.get((ours, base), f"{ours} vs {base}"),
                "ours": ours,
                "baseline": base,
                "speedup": versus["speedup"]["median"],
                "speedup_min": versus["speedup"]["min"],
                "speedup_max": versus["speedup"]["max"],
                "void": versus["void"],
                "flop_ratio": (stages[base]["flops"] / stages[base]["count"])
                / (stages[ours]["flops"] / stages[ours]["count"]),
            }
        )
    return rows


def run_model(
    name: str, quick: bool, harness: Harness, device: torch.device, workdir: Path, only: list[str] | None = None
) -> dict[str, Any]:
    """The stages `only` names (default: every stage) of one model alias (demo, vitl)."""
    p = profile(name, quick, device.type == "cuda")
    # One untimed run first, on every device: the steady state a pipeline job reaches after its first batch
    # (CUDA context and kernels; on the CPU, the allocator's first touch of GBs of activations, which made a
    # single cold run of AttnLRP on ViT-L/14 1.6x slower than every later one).
    timer = Timer(harness, device, p.repeats, warmup=0 if quick else 1, pairs=1 if quick else None)
    backbone = load_tower(p.model, device)
    ctx = Context(p, backbone, random_sae(backbone.width, p.sae_expansion, device), timer, workdir)
    results: dict[str, dict[str, Any] | str] = {}
    chosen = only or list(STAGES)
    for title in tqdm(chosen, desc=p.model, unit="stage"):
        began = time.perf_counter()
        results.update(STAGES[title](ctx))
        log.info("%s: %s done in %.1f s", p.model, title, time.perf_counter() - began)
    stages = {name: r for name, r in results.items() if isinstance(r, dict)}
    skipped = {name: r for name, r in results.items() if isinstance(r, str)}
    depth = erf_depth(ctx) if "depth" in chosen else {"points": []}
    return {
        "alias": name,
        "depth": backbone.depth,
        "width": backbone.width,
        "tokens": backbone.n_tokens,
        "stages": stages,
        "comparisons": comparisons(stages),
        "erf_depth": depth,
        "skipped": skipped,
    }


def add_utilisation(results: dict[str, Any]) -> None:
    """Utilisation of every record: its achieved FLOP/s over the run's matmul peak."""
    peak = results["peak"]["flop_per_s"]
    for model in results["models"].values():
        for record in [*model["stages"].values(), *model["erf_depth"]["points"]]:
            record["utilisation"] = record["flop_per_s"] / peak


def run_suite(
    models: list[str],
    quick: bool,
    out: Path,
    harness: Harness,
    device: str = "auto",
    threads: int | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Benchmark `models` on an admitted machine, write `out` (JSON) and its markdown twin, print the table."""
    if threads:
        torch.set_num_threads(threads)
    timer = Timer(harness, resolve_device(device), repeats=3, warmup=1)
    machine = {
        **describe(timer.device),
        "admission": harness.admit(),
        "memory": cpu_memory_kind()
        if timer.device.type == "cpu"
        else "torch.cuda.max_memory_allocated during the stage",
    }
    started, first_peak = time.perf_counter(), matmul_peak(timer, quick)
    log.info("matmul peak %.1f GFLOP/s on %s", first_peak["flop_per_s"] / 1e9, timer.device)
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "stages": only or list(STAGES),
        "machine": machine,
        "flop_model": FLOP_MODEL,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="cafe-bench-") as tmp:
        for name in models:
            results["models"][profile(name, quick).model] = run_model(
                name, quick, harness, timer.device, Path(tmp) / name, only
            )
    last_peak = matmul_peak(timer, quick)  # measured again at the end: a busy start must not flatter the ratios
    results["peak"] = {
        **max(first_peak, last_peak, key=lambda peak: peak["flop_per_s"]),
        "start_flop_per_s": first_peak["flop_per_s"],
        "end_flop_per_s": last_peak["flop_per_s"],
    }
    add_utilisation(results)
    machine["load_average_1min_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - started
    write_json(out, results)
    write_text(out.with_suffix(".md"), markdown(results))
    print(table(results))
    return results
