"""AttnLRP through the reference library lxt, in a process of its own (lxt patches torch classes process-wide):
`python -m cafe.bench.lxt_worker '<spec JSON>'` prints one JSON line, the timing or why lxt could not run."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any


def import_lxt_patches() -> types.ModuleType:
    """lxt.efficient.patches without the package __init__, which imports transformers for its LLM patch maps."""
    import lxt

    package = types.ModuleType("lxt.efficient")
    package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
    sys.modules["lxt.efficient"] = package
    import lxt.efficient.patches as patches

    return patches


def patch_lxt() -> list[str]:
    """lxt's recipe for torch ViTs (its `cp_LRP` map: identity rule on nn.GELU, detached std in LayerNorm, CP-LRP
    in nn.MultiheadAttention), with OpenCLIP's LayerNorm subclass in place of nn.LayerNorm (its own forward would
    bypass a patch of the base class)."""
    from open_clip.transformer import LayerNorm
    from torch import nn

    patches = import_lxt_patches()
    patched = {
        nn.GELU: patches.patch_method(patches.non_linear_forward, nn.GELU, keep_original=True),
        LayerNorm: patches.patch_method(patches.layer_norm_forward, LayerNorm),
        nn.MultiheadAttention: patches.patch_method(
            patches.cp_multi_head_attention_forward, nn.MultiheadAttention, keep_original=True
        ),
    }
    return [f"{cls.__module__}.{cls.__name__}" for cls, ok in patched.items() if ok]


def gradient_x_input(target: Any, pixels: Any, tokens: Any, features: Any) -> Any:
    """Per-patch gradient x input of the targets: under lxt's patches, its LRP maps. Every block runs through its
    own (patched) modules, block L too (not the target's one-token block, which calls functional attention)."""
    import torch

    from cafe.erf.base import patch_sum

    x = pixels.detach().requires_grad_(True)
    rows = torch.arange(len(tokens))
    with torch.enable_grad():
        z = target.encode_at(target.residual(x)[rows, tokens], features)
        (grad,) = torch.autograd.grad(z.sum(), x)
    return patch_sum(x.detach() * grad, target.backbone.patch_size)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Time gradient x input under lxt's patches for `targets` targets at `layer`, set up like the main bench."""
    try:
        patched = patch_lxt()
    except Exception as exc:  # whatever lxt's imports raise, it cannot run here
        return {"error": f"lxt is not importable here ({type(exc).__name__}: {exc})"}
    import torch

    from cafe.bench.fixtures import load_tower, random_images, random_sae, random_targets
    from cafe.bench.harness import Harness
    from cafe.bench.measure import Timer
    from cafe.feature_target import FeatureTarget

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    backbone = load_tower(spec["model"], device)
    sae = random_sae(backbone.width, spec["expansion"], device)
    target = FeatureTarget(backbone, sae, spec["layer"])
    pixels = backbone.normalize(random_images(spec["targets"], backbone.image_size, device))
    tokens, features = random_targets(spec["targets"], backbone, sae.n_latents)

    harness = Harness()
    harness.admission = spec["admission"]  # the parent admitted the machine; this process is its child
    timing = Timer(harness, device, spec["repeats"], spec["warmup"]).measure(
        lambda: gradient_x_input(target, pixels, tokens, features)
    )
    return {"timing": asdict(timing), "patched": patched}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
