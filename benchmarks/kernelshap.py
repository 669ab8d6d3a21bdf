"""KernelSHAP: cafe's batched solver against captum's KernelShap at equal samples and targets, in one run.

    python benchmarks/kernelshap.py                      # demo tower + ViT-L-14 (random weights), CPU
    python benchmarks/kernelshap.py --models demo --device cuda

Both solvers get the same targets, the same number of coalitions per target and the same tower (random weights,
nothing downloaded); captum evaluates `erf.batch_size` perturbations per forward, as `cafe erf` does with
`erf.kernelshap.solver: captum`. Writes benchmarks/results/kernelshap.json: seconds and targets/s per solver and
the speed-up (a ratio measured in one run, on one machine; nothing here is asserted).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from cafe.backbone import resolve_device
from cafe.bench.fixtures import load_tower, random_images, random_sae, random_targets
from cafe.bench.machine import describe
from cafe.bench.measure import Timer
from cafe.erf import ErfConfig, make_method
from cafe.feature_target import FeatureTarget
from cafe.io import write_json

# model alias: (OpenCLIP name, layer, targets, coalitions per target, SAE expansion)
SETTINGS = {
    "demo": ("cafe-demo-vit", 6, 16, 256, 8),
    "vitl": ("ViT-L-14", 24, 2, 16, 2),
}
OUT = Path("benchmarks/results/kernelshap.json")


def compare(alias: str, device: torch.device, timer: Timer, layer: int | None = None) -> dict:
    """Seconds of both solvers on the same targets (at `layer` if given); the batched solver's speed-up."""
    model, default_layer, n, samples, expansion = SETTINGS[alias]
    layer = layer or default_layer
    backbone = load_tower(model, device)
    sae = random_sae(backbone.width, expansion, device)
    target = FeatureTarget(backbone, sae, layer)
    tokens, features = random_targets(n, backbone, sae.n_latents)
    images = random_images(n, backbone.image_size, device)
    with torch.no_grad():  # the allocator's first touch, outside the timings
        target(backbone.normalize(images), tokens, features)
    config = ErfConfig()
    config = replace(config, kernelshap=replace(config.kernelshap, samples=samples))
    seconds = {}
    for solver in ("batched", "captum"):
        method = make_method(
            "kernelshap", target, replace(config, kernelshap=replace(config.kernelshap, solver=solver))
        )
        seconds[solver] = timer.best(lambda m=method: m.attribute(images, tokens, features)).seconds
        logging.info("%s %s: %.2f s for %d targets", alias, solver, seconds[solver], n)
    return {
        "model": model,
        "layer": layer,
        "targets": n,
        "samples": samples,
        "batch_size": config.batch_size,
        "forward_batch": config.kernelshap.forward_batch,
        "seconds": seconds,
        "targets_per_s": {solver: n / s for solver, s in seconds.items()},
        "speedup": seconds["captum"] / seconds["batched"],
    }


def main() -> None:
    """Run the comparison for the chosen models and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--layer", type=int, help="override each model's layer (a cheaper check)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = resolve_device(args.device)
    timer = Timer(device, repeats=2, warmup=0, budget_s=10.0)
    results = {"machine": describe(device), "models": {a: compare(a, device, timer, args.layer) for a in args.models}}
    write_json(args.out, results)
    print(json.dumps({a: r["speedup"] for a, r in results["models"].items()}, indent=1))


if __name__ == "__main__":
    main()
