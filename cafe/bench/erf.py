"""ERF cost (targets/s): every method on a batch of targets in one `attribute` call, beside one target per call
with captum's default batching (what a user of captum would write), and AttnLRP's cost over the depth L."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cafe.bench.context import Context, Stage
from cafe.bench.fixtures import random_images, random_targets
from cafe.bench.flops import Architecture
from cafe.bench.profiles import Profile
from cafe.erf.base import ErfMethod
from cafe.erf.config import ATTRIBUTION_METHODS, ErfConfig
from cafe.erf.registry import make_method
from cafe.feature_target import FeatureTarget


def erf_config(profile: Profile) -> ErfConfig:
    """The default ERF settings (as in params.yaml), with the profile's batch size, fewer IG steps / KernelSHAP
    samples where it sets them. Costs are counted for these rules (epsilon rule, AttnLRP inside attention)."""
    config = ErfConfig()
    return replace(
        config,
        batch_size=profile.erf_batch or config.batch_size,
        ig=replace(config.ig, steps=profile.ig_steps or config.ig.steps),
        kernelshap=replace(config.kernelshap, samples=profile.kernelshap_samples or config.kernelshap.samples),
    )


def captum_default_batch(name: str, config: ErfConfig) -> int:
    """The ERF batch size that reproduces captum's defaults for one target: IG runs all its steps in one batch
    (internal_batch_size=None), KernelSHAP one perturbation per forward (perturbations_per_eval=1)."""
    return {"ig": config.ig.steps, "kernelshap": 1}.get(name, config.batch_size)


def captum_config(name: str, config: ErfConfig, batch_size: int) -> ErfConfig:
    """`config` with captum doing the work: KernelSHAP through captum's solver, `batch_size` per forward."""
    if name == "kernelshap":
        config = replace(config, kernelshap=replace(config.kernelshap, solver="captum"))
    return replace(config, batch_size=batch_size)


def target_flops(arch: Architecture, layer: int, name: str, config: ErfConfig) -> float:
    """FLOPs of one target: forwards and forward+backward passes through blocks 1..layer (the canvas methods
    also evaluate z at the image and at the canvas)."""
    forwards, both = {
        "attnlrp": (0, 1),
        "gradient": (0, 1),
        "ig": (2, config.ig.steps),
        "kernelshap": (2 + config.kernelshap.samples, 0),
    }[name]
    return forwards * arch.forward(layer) + both * arch.forward_backward(layer)


def method_params(name: str, config: ErfConfig) -> dict[str, Any]:
    """The settings of one method that its cost depends on."""
    return {
        "ig": {"steps": config.ig.steps},
        "kernelshap": {"samples": config.kernelshap.samples, "forward_batch": config.kernelshap.forward_batch},
    }.get(name, {})


def erf_inputs(ctx: Context, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, target tokens and features of `n` seeded targets."""
    tokens, features = random_targets(n, ctx.backbone, ctx.sae.n_latents)
    return random_images(n, ctx.backbone.image_size, ctx.timer.device), tokens, features


def _batched(method: ErfMethod, inputs: tuple[torch.Tensor, ...]):
    return lambda: method.attribute(*inputs)


def _one_at_a_time(method: ErfMethod, inputs: tuple[torch.Tensor, ...]):
    return lambda: [method.attribute(*(x[i : i + 1] for x in inputs)) for i in range(len(inputs[0]))]


def erf_methods(ctx: Context) -> dict[str, dict[str, Any]]:
    """`erf.<method>` per method, and `erf.<method>.one_at_a_time` where the profile asks for the captum baseline."""
    p, config = ctx.profile, erf_config(ctx.profile)
    layer, n = ctx.layer(p.erf_layer), p.erf_targets
    target, inputs = FeatureTarget(ctx.backbone, ctx.sae, layer), erf_inputs(ctx, n)
    records: dict[str, dict[str, Any]] = {}
    stages: dict[str, Stage] = {}
    for name in ATTRIBUTION_METHODS:
        flops = n * target_flops(ctx.arch, layer, name, config)
        params = {"layer": layer, "targets": n, "batch_size": config.batch_size, **method_params(name, config)}
        ours = Stage(
            f"{name}: {n} targets in one batched attribute() call",
            "targets",
            n,
            _batched(make_method(name, target, config), inputs),
            flops,
            params,
        )
        stages[name] = ours
        if not p.captum:
            records[f"erf.{name}"] = ctx.measure(ours.what, ours.unit, ours.count, ours.fn, ours.flops, ours.params)
            continue
        single, k = captum_config(name, config, captum_default_batch(name, config)), p.baseline_targets
        baseline = Stage(
            f"baseline: {name} one target per call, captum's default batching",
            "targets",
            k,
            _one_at_a_time(make_method(name, target, single), [x[:k] for x in inputs]),
            flops * k / n,
            {**params, "targets": k, "batch_size": single.batch_size},
        )
        records.update(ctx.compare(f"erf.{name}", ours, f"erf.{name}.one_at_a_time", baseline))
    reference = captum_config("kernelshap", config, config.batch_size)  # captum's KernelShap, same work
    ours = stages["kernelshap"]
    pair = ctx.compare(
        "erf.kernelshap",
        ours,
        "erf.kernelshap.captum",
        Stage(
            f"reference: captum's KernelShap, {n} targets, {config.batch_size} perturbations per forward",
            "targets",
            n,
            _batched(make_method("kernelshap", target, reference), inputs),
            ours.flops,
            ours.params,
        ),
    )
    records.setdefault("erf.kernelshap", pair["erf.kernelshap"])
    records["erf.kernelshap.captum"] = pair["erf.kernelshap.captum"]
    return records


def erf_depth(ctx: Context) -> dict[str, Any]:
    """AttnLRP seconds per target at each depth L of the profile (only blocks 1..L run), and its linear fit."""
    p, config = ctx.profile, erf_config(ctx.profile)
    n, inputs = p.depth_targets, erf_inputs(ctx, p.depth_targets)
    points = []
    for layer in p.depth_layers:
        method = make_method("attnlrp", FeatureTarget(ctx.backbone, ctx.sae, layer), config)
        record = ctx.measure(
            f"attnlrp at layer {layer}: {n} targets",
            "targets",
            n,
            _batched(method, inputs),
            n * target_flops(ctx.arch, layer, "attnlrp", config),
            {"layer": layer, "targets": n},
        )
        points.append({"layer": layer, **record})
    layers = np.array(p.depth_layers, dtype=float)
    per_target = np.array([point["seconds"] / n for point in points])
    slope, intercept = np.polyfit(layers, per_target, 1)
    residual = per_target - (slope * layers + intercept)
    spread = ((per_target - per_target.mean()) ** 2).sum()
    return {
        "method": "attnlrp",
        "targets": n,
        "points": points,
        "fit": {
            "seconds_per_target_per_block": float(slope),
            "seconds_per_target_at_0": float(intercept),
            "r2": float(1 - (residual**2).sum() / spread) if spread > 0 else 1.0,
        },
    }
