"""One side of the cafe-vs-lxt comparison in a process of its own: cafe's AttnLRP with CP-LRP in attention, or lxt's
patched ViT (lxt patches torch classes process-wide), on the targets in the inputs file cafe.bench.lxt writes.
`python -m cafe.bench.lxt_worker cafe|lxt INPUTS.pt` answers one JSON line on stdout per command line on stdin:
`run` (one call, its memory high-water) and `maps PATH` (the maps, saved to PATH); first it says it is ready, or
why it cannot run. Both sides run this way, so that both pay the same round trip."""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


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


def load_target(blob: dict[str, Any]) -> Any:
    """The tower and SAE of the inputs file, as the target z_k(I, t) at its layer."""
    import torch

    from cafe.bench.fixtures import load_tower
    from cafe.feature_target import FeatureTarget
    from cafe.sae.model import MatryoshkaSAE

    backbone = load_tower(blob["model"], torch.device(blob["device"]))
    backbone.visual.load_state_dict(blob["visual"])
    sae = MatryoshkaSAE(*blob["sae_shape"])
    sae.load_state_dict(blob["sae"])
    return FeatureTarget(backbone, sae.to(blob["device"]).eval().requires_grad_(False), blob["layer"])


def cafe_side(blob: dict[str, Any]) -> tuple[Callable[[], Any], list[str]]:
    """cafe's AttnLRP with the inputs' rules, one batched attribute() call; no class patched."""
    from cafe.erf.registry import make_method

    method = make_method("attnlrp", load_target(blob), blob["config"])
    return lambda: method.attribute(blob["images"], blob["tokens"], blob["features"]), []


def lxt_side(blob: dict[str, Any]) -> tuple[Callable[[], Any], list[str]]:
    """Gradient x input under lxt's global patches (patched before the tower is built)."""
    patched = patch_lxt()
    target = load_target(blob)
    pixels = target.backbone.normalize(blob["images"])
    return lambda: gradient_x_input(target, pixels, blob["tokens"], blob["features"]), patched


SIDES = {"cafe": cafe_side, "lxt": lxt_side}


def serve(side: str, inputs: str, commands: TextIO, reply: TextIO) -> None:
    """Set the side up, say so (or why it cannot run), then answer each command until stdin closes."""
    import torch

    from cafe.bench.harness import Harness
    from cafe.bench.measure import Timer

    def say(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")
        reply.flush()

    blob = torch.load(inputs, weights_only=False)
    torch.set_num_threads(blob["threads"])
    try:
        explain, patched = SIDES[side](blob)
    except Exception as exc:  # whatever lxt's imports raise, it cannot run here
        say({"error": f"{side} cannot run here ({type(exc).__name__}: {exc})"})
        return
    timer = Timer(Harness(), torch.device(blob["device"]))
    say({"patched": patched, "threads": torch.get_num_threads(), "start_memory_mb": timer.memory_now()})
    while line := commands.readline():
        command, *args = line.split()
        if command == "run":
            say({"peak_memory_mb": timer.tracked(explain)})
        elif command == "maps":
            torch.save(explain().cpu(), args[0])
            say({})


if __name__ == "__main__":
    replies = os.fdopen(os.dup(1), "w")  # the answers' own channel: whatever a library prints goes to stderr
    os.dup2(2, 1)
    serve(sys.argv[1], sys.argv[2], sys.stdin, replies)
