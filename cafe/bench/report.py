"""The bench results for people: a plain-text table for the terminal and a markdown summary, both from the JSON."""

from __future__ import annotations

from typing import Any

STAGE_HEADER = ["model", "stage", "throughput", "median s (min-max)", "GFLOP/s", "util", "peak MB", "holds"]
COMPARISON_HEADER = ["model", "comparison", "speed-up (min-max)", "FLOP ratio", "holds"]


def _fmt(x: float) -> str:
    """Three significant figures, without scientific notation for everyday sizes."""
    return f"{x:.3g}" if abs(x) < 1e5 else f"{x:,.0f}"


def holds(void: str | None) -> str:
    """'yes', or 'VOID: why' for a figure the harness does not vouch for."""
    return "yes" if void is None else f"VOID: {void}"


def stage_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per measured stage of every model."""
    return [
        [
            model,
            name,
            f"{_fmt(r['throughput'])} {r['unit']}/s",
            f"{_fmt(r['seconds'])} ({_fmt(r['min_seconds'])}-{_fmt(r['max_seconds'])})",
            _fmt(r["flop_per_s"] / 1e9),
            f"{r['utilisation']:.2f}",
            f"{r['peak_memory_mb']:.0f}",
            holds(r["void"]),
        ]
        for model, m in results["models"].items()
        for name, r in m["stages"].items()
    ]


def comparison_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per side-by-side comparison: how many times faster our stage is than the baseline."""
    return [
        [
            model,
            c["what"],
            f"{c['speedup']:.2f}x ({c['speedup_min']:.2f}-{c['speedup_max']:.2f})",
            f"{c['flop_ratio']:.2f}x",
            holds(c["void"]),
        ]
        for model, m in results["models"].items()
        for c in m["comparisons"]
    ]


def depth_rows(results: dict[str, Any]) -> list[list[str]]:
    """AttnLRP seconds per target over the depth L, with the linear fit."""
    rows = []
    for model, m in results["models"].items():
        d = m["erf_depth"]
        if not d["points"]:  # not measured this run (--stages)
            continue
        curve = ", ".join(f"L{p['layer']}: {_fmt(p['seconds'] / d['targets'])}" for p in d["points"])
        fit = d["fit"]
        rows.append(
            [
                model,
                curve,
                f"{_fmt(fit['seconds_per_target_at_0'])} + {_fmt(fit['seconds_per_target_per_block'])}"
                f" L (r2 {fit['r2']:.3f})",
            ]
        )
    return rows


def _text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *rows])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _header(results: dict[str, Any]) -> str:
    m, peak = results["machine"], results["peak"]
    return (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), device {m['device']}; "
        f"matmul peak {_fmt(peak['flop_per_s'] / 1e9)} GFLOP/s (float32); load {m['load_average_1min']:.1f} at "
        f"start, {m['load_average_1min_end']:.1f} at end; {results['seconds']:.0f} s"
        + (f"; {m['admission']['override']}" if m.get("admission", {}).get("override") else "")
        + (" (quick)" if results["quick"] else "")
    )


def table(results: dict[str, Any]) -> str:
    """The terminal summary: stages, comparisons, the depth curve and anything skipped."""
    skipped = [
        f"{model}: {name} skipped: {why}"
        for model, m in results["models"].items()
        for name, why in m["skipped"].items()
    ]
    parts = [
        _header(results),
        _text(STAGE_HEADER, stage_rows(results)),
        _text(COMPARISON_HEADER, comparison_rows(results)),
        _text(["model", "AttnLRP s/target over L", "fit"], depth_rows(results)),
        *skipped,
    ]
    return "\n\n".join(parts)


def goals(results: dict[str, Any]) -> list[str]:
    """The headline figures: AttnLRP utilisation against the autograd reference, SAE speed and memory per feed and
    file size."""
    lines = []
    for model, m in results["models"].items():
        s = m["stages"]
        if {"erf.attnlrp", "reference.autograd", "insertion", "extraction"} <= set(s):
            lrp, ref = s["erf.attnlrp"], s["reference.autograd"]
            lines.append(
                f"- **{model}**: AttnLRP at layer {lrp['params']['layer']}, {lrp['count']} batched targets: "
                f"utilisation **{lrp['utilisation']:.2f}** (plain autograd forward + backward of the tower: "
                f"{ref['utilisation']:.2f}); insertion {_fmt(s['insertion']['throughput'])} curves/s; "
                f"extraction {s['extraction']['utilisation']:.2f}"
            )
        if "extraction.forward" in s:
            lines.append(
                f"  - extraction feed (JPEG decode + resize), images/s: PIL "
                f"{_fmt(s['extraction.feed.cpu']['throughput'])}, on the device "
                f"{_fmt(s['extraction.feed.device']['throughput'])}; the forward alone "
                f"{_fmt(s['extraction.forward']['throughput'])}"
            )
        sae = [r for name, r in s.items() if name.startswith("sae.train")]
        if sae:
            lines.append(
                f"  - {model} SAE training: " + "; ".join(sae_goal(r, results["peak"]["flop_per_s"]) for r in sae)
            )
    return lines


def sae_goal(record: dict[str, Any], peak: float) -> str:
    """One SAE training record: train() as a whole and its training loop alone, each against the matmul peak."""
    p = record["params"]
    return (
        f"{p['file_tokens']:,} tokens on disk, {p['feed']}: {_fmt(record['throughput'])} tokens/s "
        f"(utilisation {record['utilisation']:.2f}), training loop {_fmt(p['loop_tokens_per_s'])} tokens/s "
        f"(utilisation {p['loop_flop_per_s'] / peak:.2f}), peak memory {record['peak_memory_mb']:.0f} MB"
    )


def markdown(results: dict[str, Any]) -> str:
    """The markdown summary kept beside the JSON (benchmarks/results/latest.md)."""
    skipped = [
        f"- {model}: `{name}` skipped: {why}"
        for model, m in results["models"].items()
        for name, why in m["skipped"].items()
    ]
    return (
        "\n\n".join(
            [
                "# cafe bench: latest run",
                _header(results),
                "## Goals",
                "\n".join(goals(results)),
                "## Stages",
                _markdown(STAGE_HEADER, stage_rows(results)),
                "## Side by side (speed-up = our throughput / baseline throughput)",
                _markdown(COMPARISON_HEADER, comparison_rows(results)),
                "## ERF cost over depth L (AttnLRP)",
                _markdown(["model", "s/target over L", "fit"], depth_rows(results)),
                *(["## Not measured", "\n".join(skipped)] if skipped else []),
                f"FLOP model: {results['flop_model']}",
            ]
        )
        + "\n"
    )
