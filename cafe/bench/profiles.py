"""How much work each stage does per model: a default run of a few minutes on 2 CPU cores, a larger one on a GPU
(the CPU sizes would time kernel launches there, not throughput), and a quick smoke run.

Method settings are params.yaml's (ErfConfig/InsertionConfig defaults) on the demo tower; on ViT-L/14 the
sampling methods take fewer steps so that a run stays in minutes (the records carry the settings used).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cafe.errors import CafeError

MODELS = {"demo": "cafe-demo-vit", "vitl": "ViT-L-14"}


@dataclass(frozen=True)
class Profile:
    """Sizes of every stage for one model."""

    model: str
    repeats: int  # timed runs per stage at most (best kept; a long stage runs once)
    extract_images: tuple[int, int]  # train, analysis images written to HDF5
    extract_layers: tuple[int, ...]  # layers extracted (empty: all)
    sae_tokens: tuple[int, ...]  # train tokens of each activation file (peak memory must not grow with it)
    sae_steps: int
    sae_batch: int
    sae_expansion: int
    erf_layer: int  # 0: the last block
    erf_targets: int
    baseline_targets: int  # targets of the one-target-per-call baselines (their cost per target is flat)
    ig_steps: int  # 0: params.yaml's
    kernelshap_samples: int  # 0: params.yaml's
    depth_layers: tuple[int, ...]
    depth_targets: int
    reference_images: int  # plain autograd forward + backward of the whole tower (the utilisation yardstick)
    target_layer: int  # truncated forward vs a hooked full-tower forward
    target_images: int
    insertion_layer: int
    insertion_curves: int
    insertion_steps: int  # 0: params.yaml's
    captum: bool  # captum defaults, one target at a time, beside the batched methods
    lxt: bool  # cafe's AttnLRP against the reference library lxt, each in a worker process, in alternating pairs
    erf_batch: int = 0  # targets per batched forward/backward; 0: params.yaml's erf.batch_size


DEMO = Profile(
    model=MODELS["demo"],
    repeats=3,
    extract_images=(256, 64),
    extract_layers=(),
    sae_tokens=(1 << 18, 1 << 20),
    sae_steps=200,
    sae_batch=1024,
    sae_expansion=8,
    erf_layer=0,
    erf_targets=16,
    baseline_targets=4,
    ig_steps=0,
    kernelshap_samples=0,
    depth_layers=(1, 2, 3, 4, 5, 6),
    depth_targets=16,
    reference_images=4,
    target_layer=3,
    target_images=64,
    insertion_layer=6,
    insertion_curves=16,
    insertion_steps=0,
    captum=True,
    lxt=True,
)

VITL = Profile(
    model=MODELS["vitl"],
    repeats=3,
    extract_images=(2, 1),
    extract_layers=(6, 12, 18, 24),
    sae_tokens=(1 << 14,),
    sae_steps=8,
    sae_batch=1024,
    sae_expansion=8,
    erf_layer=24,
    erf_targets=4,
    baseline_targets=1,
    ig_steps=2,
    kernelshap_samples=8,
    depth_layers=(1, 6, 12, 18, 24),
    depth_targets=2,
    reference_images=4,
    target_layer=12,
    target_images=2,
    insertion_layer=12,
    insertion_curves=1,
    insertion_steps=4,
    captum=False,
    lxt=False,
)

GPU = {
    "demo": replace(
        DEMO,
        extract_images=(2048, 512),
        sae_batch=4096,
        erf_targets=256,
        erf_batch=128,
        baseline_targets=8,
        depth_targets=256,
        reference_images=64,
        target_images=512,
        insertion_curves=64,
    ),
    "vitl": replace(
        VITL,
        extract_images=(64, 16),
        sae_tokens=(1 << 18,),
        sae_steps=50,
        sae_batch=4096,
        erf_targets=32,
        erf_batch=32,
        baseline_targets=4,
        ig_steps=8,
        kernelshap_samples=32,
        depth_targets=32,
        reference_images=32,
        target_images=64,
        insertion_curves=16,
        captum=True,
    ),
}

QUICK = {
    "demo": replace(
        DEMO,
        repeats=1,
        extract_images=(16, 8),
        sae_tokens=(1 << 12, 1 << 14),
        sae_steps=10,
        sae_batch=256,
        erf_targets=4,
        baseline_targets=2,
        ig_steps=4,
        kernelshap_samples=16,
        depth_layers=(1, 3, 6),
        depth_targets=4,
        target_images=8,
        insertion_curves=4,
        insertion_steps=4,
    ),
    "vitl": replace(
        VITL,
        extract_images=(1, 1),
        extract_layers=(1, 2),
        sae_tokens=(1 << 12,),
        sae_steps=2,
        erf_layer=2,
        erf_targets=1,
        ig_steps=1,
        kernelshap_samples=2,
        depth_layers=(1, 2),
        depth_targets=1,
        reference_images=1,
        target_layer=1,
        target_images=1,
        insertion_layer=1,
        insertion_steps=2,
    ),
}


def profile(name: str, quick: bool, gpu: bool = False) -> Profile:
    """The profile of a model alias (demo, vitl): quick, else the GPU's or the CPU's sizes."""
    if name not in MODELS:
        raise CafeError(f"bench: unknown model {name!r}; known: {sorted(MODELS)}")
    return QUICK[name] if quick else (GPU if gpu else {"demo": DEMO, "vitl": VITL})[name]
