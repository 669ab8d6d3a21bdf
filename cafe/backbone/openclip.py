"""OpenCLIP's VisionTransformer (`open_clip.create_model(name, pretrained=tag or path)`): CLS then patches,
positional embedding on all tokens, ln_pre; blocks are ResidualAttentionBlocks with a packed nn.MultiheadAttention.
OpenCLIP towers with a timm trunk (SigLIP's `ViT-*-SigLIP*`, ...) load through OpenCLIP (its weights, its
preprocessing) and are read as the timm VisionTransformer they hold (`cafe.backbone.timm_vit`). cafe's demo
architectures (cafe/models/*.json) register here by name. open_clip and torch are imported when a tower is built,
not before: a model's shape comes from its JSON config, so validating params (cafe.params) costs no torch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cafe.backbone.family import Family, Preprocess, TowerShape, fixed_size, hub_cached, hub_reachable, plain_norm
from cafe.backbone.registry import get_family
from cafe.config import is_local_checkpoint
from cafe.errors import CafeError
from cafe.tokens import TokenLayout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cafe.backbone.family import Norm
    from cafe.blocks import BlockView

MODEL_CONFIG_DIR = Path(__file__).parent.parent / "models"
CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # what makes a JSON file an OpenCLIP model config (as in it)
SCHEMES = ("hf-hub:", "local-dir:")  # model names whose config OpenCLIP fetches itself


def library(model: str | None = None) -> ModuleType:
    """open_clip, with cafe's demo architectures registered by name (patches nothing), imported on first use only:
    a tower's shape needs none of it. Its import pulls in Hugging Face transformers where installed (3 s: CoCa's
    text generation, HF text towers), which cafe's vision towers never run; so it is imported without it unless
    `model` (or an unnamed first use) has an HF text tower (open_clip makes transformers optional)."""
    if "open_clip" not in sys.modules:
        hide = model is not None and not needs_transformers(model) and "transformers" not in sys.modules
        with _unimportable("transformers") if hide else contextlib.nullcontext():
            import open_clip
    import open_clip

    if model is not None and needs_transformers(model) and open_clip.hf_model.transformers is None:
        raise CafeError(
            f"backbone: {model} has a Hugging Face text tower, but open_clip was imported without transformers in "
            "this process (for a tower that needs none): load it in a process of its own"
        )
    _register(open_clip)
    return open_clip


@functools.cache
def _register(open_clip: ModuleType) -> None:
    open_clip.add_model_config(MODEL_CONFIG_DIR)


@contextlib.contextmanager
def _unimportable(name: str) -> Iterator[None]:
    """`import name` raises ImportError inside the block (Python's rule for a None entry in sys.modules)."""
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules[name]


def needs_transformers(model: str) -> bool:
    """Whether building `model` with open_clip runs Hugging Face transformers (an HF text tower); names whose config
    OpenCLIP fetches itself are assumed to."""
    config = None if model.startswith(SCHEMES) else _json_configs().get(model)
    return config is None or "hf_model_name" in config.get("text_cfg", {})


@functools.cache
def _json_configs() -> dict[str, dict[str, Any]]:
    """OpenCLIP's architecture configs by name, read from its files as OpenCLIP reads them (its model_configs/, then
    cafe/models/, the later winning) without importing it."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(spec.submodule_search_locations[0]) / "model_configs"] if spec else []
    configs = {}
    for folder in [*folders, MODEL_CONFIG_DIR]:
        for path in folder.glob("*.json"):
            config = json.loads(path.read_text())
            if all(key in config for key in CONFIG_KEYS):
                configs[path.stem] = config
    return configs


def model_config(model: str) -> dict[str, Any] | None:
    """The architecture config of an OpenCLIP model name (None: unknown). From its JSON file while open_clip is not
    imported (the DAG's parse stays torch-free); from open_clip once it is (configs it was given at run time count)
    or for names it fetches (hf-hub:, local-dir:)."""
    if "open_clip" in sys.modules or model.startswith(SCHEMES):
        return library(model).get_model_config(model)
    config = _json_configs().get(model)
    return copy.deepcopy(config) if config is not None else None


def _size(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _layer_scale(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "gamma", None)


def _weights_cached(model: str, tag: str) -> bool:
    """True if the Hugging Face cache already holds the weights of an OpenCLIP (model, tag)."""
    hub = library(model).get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        return False
    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    names += [n.rsplit(".", 1)[0] + ".safetensors" for n in names if n.endswith((".bin", ".pth"))]
    return hub_cached(repo, names)


def _offline_message(model: str, tag: str, why: str) -> str:
    return (
        f"backbone: cannot get OpenCLIP weights {model}/{tag} ({why}). On a machine with network run "
        f'`python -c "import open_clip; open_clip.create_model({model!r}, pretrained={tag!r})"` to fill the '
        f"Hugging Face cache (copy ~/.cache/huggingface over), or save the checkpoint file and set "
        f"backbone.pretrained to its local path."
    )


class OpenClip(Family):
    name = "openclip"

    def shape(self, model: str, image_size: int | None = None) -> TowerShape:
        cfg = model_config(model)
        if cfg is None:
            known = ", ".join(sorted(_json_configs())[:12])
            raise CafeError(f"backbone.model: unknown OpenCLIP model {model!r} (known include: {known}, ...)")
        vision = cfg["vision_cfg"]
        if vision.get("timm_model_name"):  # the trunk at its own size (OpenCLIP builds it so)
            shape = get_family("timm").shape(vision["timm_model_name"])
            fixed_size(self.name, model, shape.image_size, image_size)
            return shape
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        fixed_size(self.name, model, size, image_size)
        return TowerShape(int(vision["layers"]), int(vision["width"]), size, patch, TokenLayout(size // patch))

    def create(
        self, model: str, pretrained: str | None, seed: int, image_size: int | None = None
    ) -> tuple[nn.Module, Preprocess]:
        self.shape(model, image_size)  # a clear error for unknown names before any download
        if pretrained and is_local_checkpoint(pretrained) and not Path(pretrained).is_file():
            raise CafeError(f"backbone.pretrained: checkpoint file {pretrained!r} not found")
        if pretrained and not is_local_checkpoint(pretrained):
            tags = library(model).list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise CafeError(
                    f"backbone.pretrained: {pretrained!r} is not a tag of {model} (tags: {tags}) nor a file"
                )
            if not _weights_cached(model, pretrained) and not hub_reachable():
                raise CafeError(_offline_message(model, pretrained, "no network and no cached copy"))
        import torch

        torch.manual_seed(seed)
        try:
            clip = library(model).create_model(model, pretrained=pretrained or None, device="cpu")
        except RuntimeError as exc:
            if pretrained and not is_local_checkpoint(pretrained):
                raise CafeError(_offline_message(model, pretrained, str(exc))) from exc
            raise CafeError(f"backbone: could not load {model} from {pretrained!r}: {exc}") from exc
        return getattr(clip.visual, "trunk", clip.visual), self.preprocess(clip)

    def tower_family(self, visual: nn.Module) -> Family:
        return self if hasattr(visual, "transformer") else get_family("timm")

    @staticmethod
    def preprocess(clip: nn.Module) -> Preprocess:
        """The normalisation and size of an OpenCLIP model (its eval transform: shorter side, center crop)."""
        pp = library().get_model_preprocess_cfg(clip)
        return Preprocess(_size(pp["size"]), tuple(pp["mean"]), tuple(pp["std"]))

    def describe(self, visual: nn.Module) -> TowerShape:
        size, patch = _size(visual.image_size), _size(visual.patch_size)
        layout = TokenLayout(size // patch)
        return TowerShape(len(visual.transformer.resblocks), visual.transformer.width, size, patch, layout)

    def embed(self, visual: nn.Module, pixels: torch.Tensor, norm: Norm = plain_norm) -> torch.Tensor:
        import torch

        x = visual.conv1(pixels.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return norm(visual.ln_pre, x)

    def blocks(self, visual: nn.Module) -> nn.ModuleList:
        return visual.transformer.resblocks

    def view(self, block: nn.Module) -> BlockView:
        from open_clip.transformer import ResidualAttentionBlock
        from torch import nn

        from cafe.blocks import AttentionView, BlockView, MlpView

        attn = getattr(block, "attn", None)
        plain = (
            isinstance(block, ResidualAttentionBlock)
            and not hasattr(block, "ln_1_kv")
            and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first
            and attn._qkv_same_embed_dim
            and attn.bias_k is None
            and isinstance(getattr(block.attn, "ln_inner", nn.Identity()), nn.Identity)
            and isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity)
        )
        if not plain:
            raise CafeError(
                f"backbone: block {type(block).__name__} is not a standard OpenCLIP ResidualAttentionBlock with "
                f"batch-first packed nn.MultiheadAttention"
            )
        mlp = block.mlp
        return BlockView(
            block.ln_1,
            AttentionView(
                attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias
            ),
            _layer_scale(block.ls_1),
            block.ln_2,
            MlpView(mlp.c_fc.weight, mlp.c_fc.bias, mlp.gelu, mlp.c_proj.weight, mlp.c_proj.bias),
            _layer_scale(block.ls_2),
        )

    def patch_weight(self, visual: nn.Module) -> torch.Tensor:
        return visual.conv1.weight
