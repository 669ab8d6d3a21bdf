"""`cafe bench --fidelity`: does a precision mode change what the paper measures? Each mode against fp32, on the
same targets, with gates stated before the run (GATES) and a verdict per step; plus the bf16/fp32 speed ratio of
AttnLRP, of plain forwards and of SAE training steps against that of a large matmul, measured in the same run.

Per model (random weights, nothing downloaded) and mode:
- ERF maps per method: per-target Spearman rank correlation with the fp32 map (median, 5th percentile) and top-k
  patch overlap (k = a tenth of the patches); AttnLRP: conservation error |sum(map) - sum(map_fp32)| / |z_fp32|;
- insertion AUC per method (mean canvas) with its bootstrap CI: each mode's AUC must stay inside fp32's CI and
  the method ranking must not change (Fig 3's conclusion);
- extraction: relative RMS error of the residual stream;
- SAE (demo only): the same SAE trained in fp32 and in the mode on the same tokens: explained variance, L0, dead
  fraction.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from cafe.backbone.tower import Backbone
from cafe.bench.fixtures import layer_file, load_tower, random_images, random_sae
from cafe.bench.harness import Harness
from cafe.bench.machine import describe
from cafe.bench.measure import Timer
from cafe.compute import PRECISIONS, precision_scope
from cafe.erf.config import ErfConfig
from cafe.erf.registry import make_method
from cafe.feature_target import FeatureTarget
from cafe.insertion.canvases import make_canvas
from cafe.insertion.curves import curves
from cafe.insertion.orders import rank_patches, step_counts
from cafe.io import write_json, write_text
from cafe.io.activations import LayerInfo, LayerWriter
from cafe.sae.config import SAEConfig
from cafe.sae.evaluate import input_stats
from cafe.sae.feed import TokenStream
from cafe.sae.resume import run_key
from cafe.sae.train import Trainer, train
from cafe.stats import bootstrap_ci, spearman, trapezoid_auc

log = logging.getLogger(__name__)

METHODS = ("attnlrp", "ig", "kernelshap", "gradient")
# Gates, fixed before measuring: a mode passes a step only if every gate of that step passes.
GATES = {
    "spearman_median": 0.95,  # per-target rank correlation of maps with fp32, median over targets, per method
    "spearman_p5": 0.80,  # ... and its 5th percentile: no target's ranking may fall apart
    "topk_overlap_median": 0.80,  # top tenth of the patches, median over targets
    "conservation_median": 0.01,  # AttnLRP: |sum map - sum map_fp32| / |z_fp32|, median
    "residual_rel_rms": 0.02,  # extraction: ||h - h_fp32|| / ||h_fp32||; 4e-4 of the variance, far below SAE loss
    "sae_explained_variance": 0.01,  # |EV - EV_fp32|
    "sae_l0_rel": 0.05,  # |L0 - L0_fp32| / L0_fp32
    "sae_dead_fraction": 0.02,  # |dead - dead_fp32|
}


@dataclass(frozen=True)
class Setting:
    """What one model's fidelity run computes (small counts for a CPU)."""

    model: str
    layer: int
    targets: int
    expansion: int
    ig_steps: int
    kernelshap_samples: int
    insertion_steps: int  # 0: no insertion test
    sae_images: int  # 0: no SAE training
    speed_targets: int  # 0: no throughput ratio
    sae_steps: int = 200  # 5e4 tokens: enough for EV, L0 and dead share to settle on the demo's width (128 -> 1024)
    speed_sae_steps: int = 4  # Adam steps per timed run of the SAE-training speed pair (the pipeline's sae: defaults)
    modes: tuple[str, ...] = PRECISIONS  # fp32 first
    methods: tuple[str, ...] = METHODS


SETTINGS = {
    "demo": Setting("cafe-demo-vit", 4, 32, 8, 8, 64, 16, 200, 0),
    # ViT-L/14 on a 2-core CPU: the one-backward methods only (IG and KernelSHAP take hours there), 2 targets
    "vitl": Setting("ViT-L-14", 6, 2, 2, 4, 24, 0, 0, 2, methods=("attnlrp", "gradient")),
}
CPU_MODES = ("fp32", "bf16")  # tf32 changes nothing on a CPU (its flags act on CUDA matmuls only)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Share of each row's k highest entries of `a` that are also among the k highest of `b`."""
    top_a = np.argsort(-a.reshape(len(a), -1), axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-b.reshape(len(b), -1), axis=1, kind="stable")[:, :k]
    return np.array([len(np.intersect1d(x, y)) / k for x, y in zip(top_a, top_b, strict=True)])


def spread(values: np.ndarray) -> dict[str, float]:
    """Median and 5th percentile (NaNs left out)."""
    return {"median": float(np.nanmedian(values)), "p5": float(np.nanpercentile(values, 5))}


def _targets(setting: Setting, backbone: Backbone, sae: torch.nn.Module):
    """Random images, a random patch token each, and the latent most active there (so every z > 0)."""
    images = random_images(setting.targets, backbone.image_size, backbone.device)
    first = backbone.layout.n_prefix
    tokens = torch.randint(first, backbone.n_tokens, (setting.targets,), generator=torch.Generator().manual_seed(1))
    target = FeatureTarget(backbone, sae, setting.layer)
    with torch.no_grad():
        latents = target.latents(backbone.normalize(images))[torch.arange(setting.targets), tokens]
    return target, images, tokens, latents.argmax(-1)


def erf_maps(setting: Setting, target, images, tokens, features, mode: str) -> dict[str, dict[str, np.ndarray]]:
    """Every method's maps, values and remainders in `mode`."""
    config = ErfConfig(batch_size=setting.targets)
    config = replace(
        config,
        ig=replace(config.ig, steps=setting.ig_steps),
        kernelshap=replace(config.kernelshap, samples=setting.kernelshap_samples),
    )
    out = {}
    for name in setting.methods:
        with precision_scope(mode, target.backbone.device):
            result = make_method(name, target, config).explain(images, tokens, features)
        out[name] = {k: getattr(result, k).float().cpu().numpy() for k in ("maps", "value", "absorbed")}
        log.info("%s %s: %s maps", setting.model, mode, name)
    return out


def map_fidelity(mode_maps: dict, ref_maps: dict) -> dict[str, dict[str, Any]]:
    """Per method: Spearman and top-k overlap against fp32; AttnLRP also its conservation error."""
    out = {}
    for name, ref in ref_maps.items():
        maps = mode_maps[name]["maps"]
        k = max(1, ref["maps"][0].size // 10)
        record = {
            "spearman": spread(spearman(maps.reshape(len(maps), -1), ref["maps"].reshape(len(maps), -1))),
            "topk_overlap": spread(topk_overlap(maps, ref["maps"], k)),
        }
        if name == "attnlrp":
            drift = np.abs(maps.sum((1, 2)) - ref["maps"].sum((1, 2))) / np.abs(ref["value"])
            record["conservation_error"] = spread(drift)
        out[name] = record
    return out


def insertion_aucs(setting: Setting, target, images, tokens, features, maps: dict, mode: str) -> dict[str, Any]:
    """Mean insertion AUC (recovery, mean canvas) per method and its bootstrap CI, curves measured in `mode`."""
    backbone, n = target.backbone, len(images)
    canvases = make_canvas("mean", images, backbone, 1.0)
    counts = step_counts(backbone.grid**2, setting.insertion_steps)
    fraction = counts / counts[-1]
    out = {}
    for name in (*setting.methods, "random"):
        scores = np.zeros((n, backbone.grid**2)) if name == "random" else maps[name]["maps"].reshape(n, -1)
        orders = np.stack([rank_patches(s, np.random.default_rng([0, i])) for i, s in enumerate(scores)])
        with precision_scope(mode, backbone.device):
            ins, _ = curves(
                target, images, canvases, orders, counts, np.arange(n), tokens.numpy(), features.numpy(), 256
            )
        recovery = (ins - ins[:, :1]) / (ins[:, -1:] - ins[:, :1])
        auc = trapezoid_auc(fraction, recovery)
        lo, hi = bootstrap_ci(auc, 1000)
        out[name] = {"auc": float(auc.mean()), "ci": [lo, hi]}
    return out


def insertion_gate(mode_auc: dict, ref_auc: dict) -> dict[str, Any]:
    """Each method's AUC inside fp32's CI, and the same method ranking."""
    inside = {m: ref_auc[m]["ci"][0] <= r["auc"] <= ref_auc[m]["ci"][1] for m, r in mode_auc.items()}
    ranking = [sorted(a, key=lambda m, a=a: -a[m]["auc"]) for a in (mode_auc, ref_auc)]
    return {"inside_fp32_ci": inside, "same_ranking": ranking[0] == ranking[1], "ranking": ranking[0]}


def residual_error(setting: Setting, backbone: Backbone, images: torch.Tensor, mode: str) -> float:
    """||h - h_fp32|| / ||h_fp32|| of the residual stream after block `layer` (what extraction stores)."""
    pixels = backbone.normalize(images)
    with torch.no_grad():
        ref = backbone.forward_to(pixels, setting.layer)
        with precision_scope(mode, backbone.device):
            h = backbone.forward_to(pixels, setting.layer)
    return float((h.float() - ref).norm() / ref.norm())


def sae_fidelity(setting: Setting, backbone: Backbone, workdir: Path) -> dict[str, dict[str, float]]:
    """The same SAE trained on the same demo-tower residuals in each mode: explained variance, L0, dead share."""
    n, t = setting.sae_images, backbone.n_tokens
    images = random_images(n + 32, backbone.image_size, backbone.device, seed=7)
    with torch.no_grad():
        resid = torch.cat([backbone.forward_to(backbone.normalize(c), setting.layer) for c in images.split(64)])
    resid = resid.cpu().numpy().astype(np.float16)
    path = workdir / "layer.h5"
    with h5py.File(path, "w") as handle:
        info = LayerInfo(backbone.name, backbone.tag, setting.layer, backbone.image_size, backbone.patch_size,
                         backbone.grid, t, backbone.width, "0" * 16, t, 0, int(backbone.layout.has_cls),
                         backbone.layout.n_registers)  # fmt: skip
        writer = LayerWriter(handle, info, n, 32)
        writer.add_train(np.arange(n), np.tile(np.arange(t), (n, 1)), resid[:n])
        writer.add_analysis(np.arange(n, n + 32), resid[n:])
        writer.finish()
    steps = setting.sae_steps
    config = SAEConfig(expansion=setting.expansion, steps=steps, batch_size=256, checkpoint_every=steps)
    out = {}
    for mode in setting.modes:
        metrics = train(path, workdir / f"{mode}.pt", workdir / f"{mode}.json", config, str(backbone.device), mode)
        out[mode] = {k: metrics[k] for k in ("explained_variance", "l0", "dead_fraction", "tokens_per_s")}
        log.info("SAE %s: %s", mode, out[mode])
    return out


def speed_ratios(setting: Setting, target, images, tokens, features, timer: Timer, workdir: Path) -> dict[str, Any]:
    """bf16/fp32 throughput of a large matmul, a truncated forward, AttnLRP at the deepest layer and SAE training
    steps at the tower's width, in one run."""
    device, depth = target.backbone.device, target.backbone.depth
    deep = FeatureTarget(target.backbone, target.sae, depth)
    method = make_method("attnlrp", deep, ErfConfig(batch_size=setting.speed_targets))
    n = setting.speed_targets
    args = (images[:n], tokens[:n], features[:n])
    pixels = target.backbone.normalize(images[:n])
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return target.backbone.forward_to(pixels, depth)

    jobs = {
        "matmul_4096": lambda: a @ b,
        f"forward_layer{depth}": forward,
        f"attnlrp_layer{depth}": lambda: method.attribute(*args),
    }
    pairs = {name: (_in_mode(job, "fp32", device), _in_mode(job, "bf16", device)) for name, job in jobs.items()}
    sae = sae_steps(target.backbone, setting.speed_sae_steps, workdir / "speed-sae")
    pairs[f"sae_train_{setting.speed_sae_steps}steps"] = (sae["fp32"], sae["bf16"])
    seconds, ratios = {}, {}
    for name, (fp32_job, bf16_job) in pairs.items():  # alternating pairs: the ratio of runs adjacent in time
        fp32, bf16, ratio = timer.pair(fp32_job, bf16_job)
        seconds[name] = {"fp32": asdict(fp32), "bf16": asdict(bf16)}
        ratios[name] = ratio
        log.info("%s bf16 over fp32: %s (void: %s)", name, _spread(ratio), ratio["void"])
    share = {name: ratios[name]["median"] / ratios["matmul_4096"]["median"] for name in pairs}
    return {
        "seconds": seconds,
        "bf16_over_fp32": {name: r["median"] for name, r in ratios.items()},
        "bf16_over_fp32_pairs": ratios,
        "share_of_matmul_ratio": share,
        "attnlrp_share_of_matmul_ratio": share[f"attnlrp_layer{depth}"],
        "forward_share_of_matmul_ratio": share[f"forward_layer{depth}"],
        "targets": n,
        "sae": {
            "width": target.backbone.width,
            "latents": SPEED_SAE.expansion * target.backbone.width,
            "batch_size": SPEED_SAE.batch_size,
            "steps": setting.speed_sae_steps,
        },
    }


SPEED_SAE = SAEConfig()  # the pipeline's SAE (params.yaml sae: defaults): expansion 8, batches of 1024 tokens


def sae_steps(backbone: Backbone, steps: int, folder: Path) -> dict[str, Callable[[], None]]:
    """Per mode (fp32, bf16): `steps` Adam steps (`Trainer.train_step`, the mode's autocast) of the same SAE at the
    tower's width on the same Gaussian batches, already on the device (the feed is not timed)."""
    config = replace(SPEED_SAE, steps=steps, checkpoint_every=steps)
    tokens = config.batch_size * steps
    path = layer_file(folder, backbone.width, backbone.layout, tokens, 1)
    stream = TokenStream(path, config.batch_size, config.seed)
    stats, key = input_stats(stream.sample(tokens)), run_key(config, "speed")
    batches = [h.to(backbone.device) for h in itertools.islice(stream.batches(), steps)]

    def train_in(mode: str) -> Callable[[], None]:
        trainer = Trainer(config, stream, stats, backbone.device, folder / f"{mode}.state", key, mode)

        def run() -> None:
            for h in batches:
                trainer.train_step(h)

        return run

    return {mode: train_in(mode) for mode in CPU_MODES}


def _spread(ratio: dict[str, Any]) -> str:
    """A ratio's median with its min and max over the pairs."""
    return f"{ratio['median']:.2f}x (min {ratio['min']:.2f}, max {ratio['max']:.2f}, {len(ratio['runs'])} pairs)"


def _in_mode(job, mode: str, device: torch.device):
    """`job` run under precision `mode`."""

    def run():
        with precision_scope(mode, device):
            return job()

    return run


def step_verdicts(record: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Per mode, whether each step passes its gates (missing measurements are left out)."""
    verdicts = {}
    for mode, m in record["modes"].items():
        v = {"activations": m["residual_rel_rms"] <= GATES["residual_rel_rms"]}
        v["erf"] = all(
            r["spearman"]["median"] >= GATES["spearman_median"]
            and r["spearman"]["p5"] >= GATES["spearman_p5"]
            and r["topk_overlap"]["median"] >= GATES["topk_overlap_median"]
            and r.get("conservation_error", {"median": 0})["median"] <= GATES["conservation_median"]
            for r in m["maps"].values()
        )
        v["erf_per_method"] = {
            name: r["spearman"]["median"] >= GATES["spearman_median"]
            and r["spearman"]["p5"] >= GATES["spearman_p5"]
            and r["topk_overlap"]["median"] >= GATES["topk_overlap_median"]
            and r.get("conservation_error", {"median": 0})["median"] <= GATES["conservation_median"]
            for name, r in m["maps"].items()
        }
        if "insertion" in m:
            gate = m["insertion"]
            v["insertion"] = gate["same_ranking"] and all(gate["inside_fp32_ci"].values())
        if "sae" in record:
            ref, got = record["sae"]["fp32"], record["sae"][mode]
            v["sae"] = (
                abs(got["explained_variance"] - ref["explained_variance"]) <= GATES["sae_explained_variance"]
                and abs(got["l0"] - ref["l0"]) <= GATES["sae_l0_rel"] * ref["l0"]
                and abs(got["dead_fraction"] - ref["dead_fraction"]) <= GATES["sae_dead_fraction"]
            )
        verdicts[mode] = v
    return verdicts


def fidelity_model(setting: Setting, device: torch.device, timer: Timer, workdir: Path) -> dict[str, Any]:
    """Every mode of `setting` against fp32 on its model (fp32 and bf16 only on a CPU)."""
    if device.type == "cpu":
        setting = replace(setting, modes=CPU_MODES)
    backbone = load_tower(setting.model, device)
    sae = random_sae(backbone.width, setting.expansion, device)
    target, images, tokens, features = _targets(setting, backbone, sae)
    maps = {mode: erf_maps(setting, target, images, tokens, features, mode) for mode in setting.modes}
    record: dict[str, Any] = {"setting": setting.__dict__, "modes": {}}
    aucs = {}
    if setting.insertion_steps:
        aucs = {m: insertion_aucs(setting, target, images, tokens, features, maps[m], m) for m in setting.modes}
        record["insertion_auc"] = aucs
    for mode in setting.modes:
        m = {"residual_rel_rms": residual_error(setting, backbone, images, mode)}
        m["maps"] = map_fidelity(maps[mode], maps["fp32"])
        if aucs:
            m["insertion"] = insertion_gate(aucs[mode], aucs["fp32"])
        record["modes"][mode] = m
    if setting.sae_images:
        record["sae"] = sae_fidelity(setting, backbone, workdir)
    if setting.speed_targets:
        record["speed"] = speed_ratios(setting, target, images, tokens, features, timer, workdir)
    record["verdicts"] = step_verdicts(record)
    return record


def markdown(results: dict[str, Any]) -> str:
    """The gates and verdicts as a short markdown report."""
    lines = [
        "# cafe bench --fidelity",
        "",
        f"Machine: {results['machine']['cpu']}, torch {results['machine']['torch']}",
    ]
    lines += ["", "Gates: " + ", ".join(f"{k} {v}" for k, v in GATES.items()), ""]
    for alias, record in results["models"].items():
        lines += [f"## {alias} ({record['setting']['model']}, layer {record['setting']['layer']})", ""]
        lines += ["| mode | method | Spearman median | Spearman p5 | top-k overlap median | conservation err |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for mode, m in record["modes"].items():
            for name, r in m["maps"].items():
                cons = r.get("conservation_error", {}).get("median")
                lines.append(
                    f"| {mode} | {name} | {r['spearman']['median']:.4f} | {r['spearman']['p5']:.4f} | "
                    f"{r['topk_overlap']['median']:.3f} | {'' if cons is None else f'{cons:.2e}'} |"
                )
        lines += [""]
        for mode, m in record["modes"].items():
            lines.append(
                f"- {mode}: residual rel. RMS error {m['residual_rel_rms']:.2e}; verdicts {record['verdicts'][mode]}"
            )
        if "insertion_auc" in record:
            lines += ["", "Insertion AUC (mean canvas), mean [95% CI]:", ""]
            for mode, aucs in record["insertion_auc"].items():
                cells = ", ".join(f"{k} {v['auc']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for k, v in aucs.items())
                lines.append(f"- {mode}: {cells}")
        if "sae" in record:
            lines += ["", "SAE: " + "; ".join(f"{k}: {v}" for k, v in record["sae"].items())]
        if "speed" in record:
            s = record["speed"]
            spreads = {k: _spread(r) for k, r in s["bf16_over_fp32_pairs"].items()}
            shares = ", ".join(f"{k} {v:.2f}" for k, v in s["share_of_matmul_ratio"].items() if k != "matmul_4096")
            lines += ["", f"Speed, bf16 over fp32 throughput: {spreads}; share of the matmul ratio: {shares}; "
                      f"SAE training: {s['sae']['steps']} steps of {s['sae']['width']} -> {s['sae']['latents']} "
                      f"latents, batch {s['sae']['batch_size']}; void: "
                      f"{ {k: r['void'] for k, r in s['bf16_over_fp32_pairs'].items()} }"]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def run_fidelity(models: list[str], out: Path, device: torch.device, harness: Harness) -> dict[str, Any]:
    """Measure every model on an admitted machine, write `out` (JSON) and its markdown twin; returns the results."""
    timer = Timer(harness, device, repeats=5, warmup=1)
    results: dict[str, Any] = {"machine": {**describe(device), "admission": harness.admit()}, "gates": GATES,
                               "models": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cafe-fidelity-") as tmp:
        for alias in models:
            results["models"][alias] = fidelity_model(SETTINGS[alias], device, timer, Path(tmp))
    write_json(out, results)
    write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return results
