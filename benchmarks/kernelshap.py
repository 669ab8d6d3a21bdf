"""KernelSHAP: cafe's batched solver against captum's KernelShap at equal samples and targets, in one process, in
alternating pairs through the harness (cafe/bench/harness.py), at each thread count asked for.

    python benchmarks/kernelshap.py --models demo --threads 1 2      # ratio per thread count, 5 pairs each
    python benchmarks/kernelshap.py --models vitl --layer 6 --pairs 3
    python benchmarks/kernelshap.py --models demo --threads 1 --profile   # where the time goes, by op

Both solvers get the same targets, the same number of coalitions per target and the same tower (random weights,
nothing downloaded); captum evaluates `erf.batch_size` perturbations per forward, as `cafe erf` does with
`erf.kernelshap.solver: captum`. Each record carries the forwards and sequences each solver ran (counted, not
estimated). `--profile` adds torch.profiler's top ops by self CPU time of one call of each solver. Writes
benchmarks/results/kernelshap.json; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from cafe.backbone import resolve_device
from cafe.bench.fixtures import load_tower, random_images, random_sae, random_targets
from cafe.bench.harness import add_arguments, from_arguments, summary
from cafe.bench.machine import describe
from cafe.bench.measure import Timer
from cafe.erf.config import ErfConfig
from cafe.erf.registry import make_method
from cafe.feature_target import FeatureTarget
from cafe.io import write_json

# model alias: (OpenCLIP name, layer, targets, coalitions per target, SAE expansion)
SETTINGS = {
    "demo": ("cafe-demo-vit", 6, 16, 256, 8),
    "vitl": ("ViT-L-14", 24, 2, 16, 2),
}
OUT = Path("benchmarks/results/kernelshap.json")
SOLVERS = ("batched", "captum")


def forwards_of(target: FeatureTarget, fn) -> dict[str, int]:
    """Forwards of the tower (runs from block 1) and the sequences they carried during one call of `fn`."""
    backbone, counts = target.backbone, {"forwards": 0, "sequences": 0}
    run_blocks = backbone.run_blocks

    def counted(tokens, start, stop):
        if start == 0:
            counts["forwards"] += 1
            counts["sequences"] += len(tokens)
        return run_blocks(tokens, start, stop)

    backbone.run_blocks = counted
    try:
        fn()
    finally:
        del backbone.run_blocks
    return counts


def op_profile(fn, top: int = 15) -> list[dict[str, Any]]:
    """torch.profiler's top ops by self CPU time over one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events]


def compare(alias: str, device: torch.device, timer: Timer, layer: int | None, with_profile: bool) -> dict:
    """Both solvers on the same targets in alternating pairs: seconds, speed-up per pair, forwards counted."""
    model, default_layer, n, samples, expansion = SETTINGS[alias]
    layer = layer or default_layer
    backbone = load_tower(model, device)
    sae = random_sae(backbone.width, expansion, device)
    target = FeatureTarget(backbone, sae, layer)
    tokens, features = random_targets(n, backbone, sae.n_latents)
    images = random_images(n, backbone.image_size, device)
    config = ErfConfig()
    calls = {}
    for solver in SOLVERS:
        method = make_method(
            "kernelshap", target, replace(config, kernelshap=replace(config.kernelshap, samples=samples, solver=solver))
        )
        calls[solver] = lambda m=method: m.attribute(images, tokens, features)
    forwards = {solver: forwards_of(target, call) for solver, call in calls.items()}  # also the untimed warm-up
    batched, captum, ratio = timer.pair(calls["batched"], calls["captum"])
    logging.info(
        "%s: captum / batched seconds %.2f (median of %d pairs)", alias, 1 / ratio["median"], len(ratio["runs"])
    )
    record = {
        "model": model,
        "layer": layer,
        "targets": n,
        "samples": samples,
        "batch_size": config.batch_size,
        "forward_batch": config.kernelshap.forward_batch,
        "threads": torch.get_num_threads(),
        "seconds": {"batched": asdict(batched), "captum": asdict(captum)},
        "speedup": summary(1 / r for r in ratio["runs"]),  # captum's seconds over the batched solver's, per pair
        "order": ratio["order"],
        "void": ratio["void"],
        "forwards": forwards,
    }
    if with_profile:
        record["profile"] = {solver: op_profile(call) for solver, call in calls.items()}
    return record


def main() -> None:
    """Run the comparison for the chosen models and thread counts and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--layer", type=int, help="override each model's layer (a cheaper check)")
    parser.add_argument("--threads", type=int, nargs="+", help="torch thread counts, each measured (default: torch's)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating batched/captum pairs (default 5)")
    parser.add_argument("--profile", action="store_true", help="add each solver's top ops (torch.profiler)")
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, harness = resolve_device(args.device), from_arguments(args)
    admission = harness.admit()
    timer = Timer(harness, device, repeats=args.pairs, warmup=0)  # the forward count is each solver's warm-up
    runs = {}
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for alias in args.models:
            runs[f"{alias}@{threads}"] = compare(alias, device, timer, args.layer, args.profile)
    results = {"machine": {**describe(device), "admission": admission}, "runs": runs}
    write_json(args.out, results)
    for key, r in runs.items():  # captum's seconds over the batched solver's, per alternating pair
        up, secs = r["speedup"], {s: r["seconds"][s]["seconds"] for s in SOLVERS}
        print(
            f"{key}: batched {up['median']:.2f}x captum's speed (min {up['min']:.2f}, max {up['max']:.2f}, "
            f"{len(up['runs'])} pairs); median s {secs}; forwards {r['forwards']}; void: {r['void']}"
        )


if __name__ == "__main__":
    main()
