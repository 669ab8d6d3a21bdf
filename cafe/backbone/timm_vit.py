"""timm's VisionTransformer (`timm.create_model(name)`): DINOv2 (`*_dinov2`, `*_reg4_dinov2`: CLS, 4 registers,
patches; LayerScale; SwiGLU in the giant), SigLIP (`*_siglip_*`: no CLS, patch embedding with bias), CLIP
(`*_clip_*`: pre-norm, QuickGELU where named), AugReg. Sizes, mean/std and crop come from timm's own data config.
cafe's tiny DINOv2-with-registers test tower registers here by name (as the OpenCLIP demo towers do there).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import GluMlp, LayerScale, Mlp
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from cafe.backbone.family import Family, Preprocess, TowerShape, hub_reachable, plain_norm
from cafe.blocks import AttentionView, BlockView, MlpView
from cafe.config import is_local_checkpoint
from cafe.errors import CafeError
from cafe.tokens import TokenLayout

if TYPE_CHECKING:
    from cafe.backbone.family import Norm

log = logging.getLogger(__name__)
TINY = "vit_cafe_tiny_patch8_reg4_dinov2"
default_cfgs = {  # timm's registry reads this module's `default_cfgs` (no weights: random towers only)
    TINY: {"input_size": (3, 32, 32), "crop_pct": 1.0, "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}
}


@register_model
def vit_cafe_tiny_patch8_reg4_dinov2(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A DINOv2-with-registers tower at test size: 32 px, 8 px patches (4x4 grid), width 32, 3 blocks, 4 heads,
    4 registers, LayerScale (initialised at 1 so that random blocks matter), positions on the patches only."""
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, init_values=1.0)
    args |= dict(reg_tokens=4, no_embed_class=True, num_classes=0)
    return build_model_with_cfg(
        VisionTransformer, TINY, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **(args | kwargs)
    )


def _identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _layer_scale(module: nn.Module) -> torch.Tensor | None:
    return module.gamma if isinstance(module, LayerScale) else None


def _size(image_size: int | None) -> dict[str, int]:
    return {} if image_size is None else {"img_size": image_size}


def _offline_message(model: str, tag: str, why: str) -> str:
    return (
        f"backbone: cannot get timm weights {model}.{tag} ({why}). On a machine with network run "
        f'`python -c "import timm; timm.create_model({model + "." + tag!r}, pretrained=True)"` to fill the '
        f"Hugging Face cache (copy ~/.cache/huggingface over), or save the checkpoint file and set "
        f"backbone.pretrained to its local path."
    )


class TimmVit(Family):
    name = "timm"

    def _build(self, model: str, **kwargs) -> nn.Module:
        try:
            visual = timm.create_model(model, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
                raise CafeError(f"backbone.model: {exc}") from None
            raise
        if not isinstance(visual, VisionTransformer):
            raise CafeError(f"backbone.model: timm {model!r} is a {type(visual).__name__}, not a VisionTransformer")
        return visual

    def shape(self, model: str, image_size: int | None = None) -> TowerShape:
        with torch.device("meta"):
            return self.describe(self._build(model, **_size(image_size), pretrained=False))

    def create(
        self, model: str, pretrained: str | None, seed: int, image_size: int | None = None
    ) -> tuple[nn.Module, Preprocess]:
        torch.manual_seed(seed)
        size = _size(image_size)  # timm resamples a checkpoint's positional embedding to it
        if not pretrained:
            visual = self._build(model, pretrained=False, **size)
        elif is_local_checkpoint(pretrained):
            if not Path(pretrained).is_file():
                raise CafeError(f"backbone.pretrained: checkpoint file {pretrained!r} not found")
            # timm's own checkpoint filter converts original (e.g. DINOv2, OpenCLIP) key names
            visual = self._build(model, pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)}, **size)
        else:
            name = f"{model}.{pretrained}"
            if not hub_reachable() and not self._cached(name):
                raise CafeError(_offline_message(model, pretrained, "no network and no cached copy"))
            try:
                visual = self._build(name, pretrained=True, **size)
            except (OSError, RuntimeError) as exc:
                raise CafeError(_offline_message(model, pretrained, str(exc))) from exc
        return visual, self.preprocess(visual)

    @staticmethod
    def _cached(name: str) -> bool:
        from cafe.backbone.family import hub_cached

        cfg = timm.models.get_pretrained_cfg(name)
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        return bool(hub) and hub_cached(hub, ["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"])

    @staticmethod
    def preprocess(visual: nn.Module) -> Preprocess:
        """timm's data config: mean/std, and its eval resize to floor(size / crop_pct) (the shorter side, or both
        sides where its crop_mode is squash) before the center crop."""
        data = timm.data.resolve_data_config({}, model=visual)
        size = int(visual.patch_embed.img_size[0])  # the size it was built at (= the data config's unless overridden)
        mode = data.get("crop_mode", "center")
        if mode not in ("center", "squash"):
            log.warning("timm data config crops by %r; cafe crops the center", mode)
        resize = math.floor(size / float(data["crop_pct"]))
        return Preprocess(
            size, tuple(data["mean"]), tuple(data["std"]), (resize, resize) if mode == "squash" else resize
        )

    def describe(self, visual: nn.Module) -> TowerShape:
        grid = visual.patch_embed.grid_size
        if grid[0] != grid[1] or visual.patch_embed.patch_size[0] != visual.patch_embed.patch_size[1]:
            raise CafeError(f"backbone: timm tower with a {grid} patch grid; cafe needs square images and patches")
        layout = TokenLayout(int(grid[0]), visual.cls_token is not None, int(visual.num_reg_tokens))
        size, patch = int(visual.patch_embed.img_size[0]), int(visual.patch_embed.patch_size[0])
        resize = self.preprocess(visual).resize
        return TowerShape(len(visual.blocks), int(visual.embed_dim), size, patch, layout, resize)

    def embed(self, visual: nn.Module, pixels: torch.Tensor, norm: Norm = plain_norm) -> torch.Tensor:
        x = visual.patch_embed(pixels.to(visual.patch_embed.proj.weight.dtype))
        x = visual.patch_drop(visual._pos_embed(x))
        return norm(visual.norm_pre, x)

    def blocks(self, visual: nn.Module) -> nn.Sequential:
        return visual.blocks

    def view(self, block: nn.Module) -> BlockView:
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        plain_attn = (
            isinstance(attn, Attention)
            and all(_identity(getattr(attn, n, None)) for n in ("q_norm", "k_norm", "norm"))
            and getattr(attn, "gate", None) is None
            and abs(attn.scale - attn.head_dim**-0.5) < 1e-12
        )
        gated = isinstance(mlp, GluMlp) and not mlp.gate_last
        plain_mlp = (type(mlp) is Mlp or gated) and _identity(getattr(mlp, "norm", None))
        if type(block) is not Block or not plain_attn or not plain_mlp:
            raise CafeError(
                f"backbone: timm block {type(block).__name__} ({type(attn).__name__}, {type(mlp).__name__}) is not "
                f"a plain pre-norm ViT block (softmax attention without q/k norms, GELU MLP or SwiGLU)"
            )
        return BlockView(
            block.norm1,
            AttentionView(attn.num_heads, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias),
            _layer_scale(block.ls1),
            block.norm2,
            MlpView(mlp.fc1.weight, mlp.fc1.bias, mlp.act, mlp.fc2.weight, mlp.fc2.bias, gated),
            _layer_scale(block.ls2),
        )

    def patch_weight(self, visual: nn.Module) -> torch.Tensor:
        return visual.patch_embed.proj.weight
