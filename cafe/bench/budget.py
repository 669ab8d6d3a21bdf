"""`cafe bench --budget FILE`: the README's paper-scale time budget, recomputed from measured rates, per precision.

FILE is a `cafe bench` result (one precision: its `compute` mode, fp32 by default) or a GPU check
(benchmarks/gpu_check.sh: `precisions` -> mode -> the same stage records). Each step's time is the paper's work over
the measured rate, each rate scaled from the bench's setting to the paper's by the quantity its cost is
proportional to (IG steps, KernelSHAP samples, insertion steps, SAE latents, ERF depth).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cafe.errors import CafeError

MODEL = "ViT-L-14"
LAYERS = 24
PAPER = {
    "images": 1_210_000,  # extraction: every train + analysis image, all layers in one pass
    "sae_tokens": 5e8,  # per layer
    "sae_latents": 16_384,
    "erf_targets": 1600,  # per layer
    "ig_steps": 32,
    "kernelshap_samples": 512,
    "insertion_steps": 32,
    "insertion_curves": 1600 * 6 * 2,  # per layer: targets x ranking methods x canvases (tie seeds, greedy left out)
}
MEAN_DEPTH_SHARE = 0.5  # ERF rates are measured at layer 24; a layer's cost grows with its depth, about half on average


def _stage(stages: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in stages:
        raise CafeError(f"bench --budget: the results have no '{name}' record for {MODEL}; run the GPU check")
    return stages[name]


def _sae_rate(stages: dict[str, Any]) -> tuple[float, str]:
    """Tokens/s of the fastest SAE feed measured, scaled to the paper's latents (cost grows with the latents)."""
    runs = [r for name, r in stages.items() if name.startswith("sae.train")]
    if not runs:
        raise CafeError(f"bench --budget: the results have no SAE training record for {MODEL}")
    best = max(runs, key=lambda r: r["throughput"])
    latents = best["params"]["latents"]
    text = f"{best['throughput']:.3g} tokens/s at {latents} latents ({best['params'].get('feed', 'stream')})"
    return best["throughput"] * latents / PAPER["sae_latents"], text


def _erf_seconds(stages: dict[str, Any]) -> tuple[float, str]:
    """Seconds per layer of every ERF method on the paper's targets, steps and samples."""
    scale = {"ig": ("steps", PAPER["ig_steps"]), "kernelshap": ("samples", PAPER["kernelshap_samples"])}
    total, parts = 0.0, []
    for method in ("attnlrp", "ig", "kernelshap", "gradient"):
        record = _stage(stages, f"erf.{method}")
        rate = record["throughput"]
        if method in scale:
            key, paper = scale[method]
            rate *= record["params"][key] / paper
        total += PAPER["erf_targets"] / rate * MEAN_DEPTH_SHARE
        parts.append(f"{method} {record['throughput']:.3g}")
    return total, ", ".join(parts) + " targets/s at layer 24"


def budget_rows(stages: dict[str, Any]) -> list[list[str]]:
    """(step, measured rate, paper setting, hours) for extraction, SAE training, ERF and insertion, and the total."""
    feed = [stages[n]["throughput"] for n in ("extraction.feed.device", "extraction.feed.cpu") if n in stages]
    if feed and "extraction.forward" in stages:  # the feed and the forward overlap: the slower one sets the pace
        extraction_rate = min(stages["extraction.forward"]["throughput"], max(feed))
    else:  # an older result: extract() as a whole
        extraction_rate = _stage(stages, "extraction")["throughput"]
    sae_rate, sae_text = _sae_rate(stages)
    erf_s, erf_text = _erf_seconds(stages)
    insertion = _stage(stages, "insertion")
    curve_rate = insertion["throughput"] * insertion["params"]["steps"] / PAPER["insertion_steps"]
    hours = {
        "extraction": PAPER["images"] / extraction_rate / 3600,
        "SAE training": LAYERS * PAPER["sae_tokens"] / sae_rate / 3600,
        "ERF": LAYERS * erf_s / 3600,
        "insertion": LAYERS * PAPER["insertion_curves"] / curve_rate / 3600,
    }
    rows = [
        ["extraction", f"{extraction_rate:.3g} images/s", "1.21 M images, 24 layers in one pass"],
        ["SAE training", sae_text, "5e8 tokens x 24 layers, 16384 latents"],
        ["ERF", erf_text, "1600 targets x 24 layers; IG 32 steps, KernelSHAP 512 samples"],
        ["insertion", f"{insertion['throughput']:.3g} curves/s at {insertion['params']['steps']} steps",
         "1600 targets x 6 methods x 2 canvases x 24 layers, 32 steps"],
    ]  # fmt: skip
    rows = [[*row, f"{hours[row[0]]:.2f}"] for row in rows]
    return [*rows, ["total", "", "", f"{sum(hours.values()):.1f}"]]


def precisions(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mode -> ViT-L/14 stage records (or those of the one model a dry run measured), from a GPU check or a single
    `cafe bench` result."""
    by_mode = results.get("precisions") or {results.get("compute", "fp32"): results}
    out = {}
    for mode, run in by_mode.items():
        models = run.get("models", {})
        model = MODEL if MODEL in models else next(iter(models)) if len(models) == 1 else None
        if model is None:
            raise CafeError(f"bench --budget: no {MODEL} results for {mode} (models: {sorted(models)})")
        out[mode] = models[model]["stages"]
    return out


def budget_table(path: Path) -> str:
    """The budget as markdown, one table per precision, with the machine the rates came from."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CafeError(f"bench --budget: cannot read {path}: {exc}") from exc
    machine = results.get("machine", {})
    where = machine.get("gpu") or machine.get("cpu", "unknown machine")
    parts = []
    for mode, stages in precisions(results).items():
        lines = [
            f"#### {mode} ({where}; rates from {path.name})",
            "",
            "| step | measured rate | paper setting | hours |",
        ]
        lines += ["| --- | --- | --- | --- |", *("| " + " | ".join(row) + " |" for row in budget_rows(stages))]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
