"""OpenCLIP's VisionTransformer (`open_clip.create_model(name, pretrained=tag or path)`): CLS then patches,
positional embedding on all tokens, ln_pre; blocks are ResidualAttentionBlocks with a packed nn.MultiheadAttention.
OpenCLIP towers with a timm trunk (SigLIP's `ViT-*-SigLIP*`, ...) load through OpenCLIP (its weights, its
preprocessing) and are read as the timm VisionTransformer they hold (`cafe.backbone.timm_vit`). cafe's demo
architectures (cafe/models/*.json) register here by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from cafe.backbone.family import Family, Norm, Preprocess, TowerShape, fixed_size, hub_cached, hub_reachable, plain_norm
from cafe.backbone.registry import get_family
from cafe.blocks import AttentionView, BlockView, MlpView
from cafe.config import is_local_checkpoint
from cafe.errors import CafeError
from cafe.tokens import TokenLayout

MODEL_CONFIG_DIR = Path(__file__).parent.parent / "models"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers cafe's demo architectures by name; patches nothing


def _size(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _layer_scale(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "gamma", None)


def _weights_cached(model: str, tag: str) -> bool:
    """True if the Hugging Face cache already holds the weights of an OpenCLIP (model, tag)."""
    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
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
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            known = ", ".join(sorted(open_clip.list_models())[:12])
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
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise CafeError(
                    f"backbone.pretrained: {pretrained!r} is not a tag of {model} (tags: {tags}) nor a file"
                )
            if not _weights_cached(model, pretrained) and not hub_reachable():
                raise CafeError(_offline_message(model, pretrained, "no network and no cached copy"))
        torch.manual_seed(seed)
        try:
            clip = open_clip.create_model(model, pretrained=pretrained or None, device="cpu")
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
        pp = open_clip.get_model_preprocess_cfg(clip)
        return Preprocess(_size(pp["size"]), tuple(pp["mean"]), tuple(pp["std"]))

    def describe(self, visual: nn.Module) -> TowerShape:
        size, patch = _size(visual.image_size), _size(visual.patch_size)
        layout = TokenLayout(size // patch)
        return TowerShape(len(visual.transformer.resblocks), visual.transformer.width, size, patch, layout)

    def embed(self, visual: nn.Module, pixels: torch.Tensor, norm: Norm = plain_norm) -> torch.Tensor:
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return norm(visual.ln_pre, x)

    def blocks(self, visual: nn.Module) -> nn.ModuleList:
        return visual.transformer.resblocks

    def view(self, block: nn.Module) -> BlockView:
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
