"""Hugging Face transformers' vision towers: `CLIPVisionModel` (CLS, patches, pre-norm, QuickGELU),
`Dinov2Model` and `Dinov2WithRegistersModel` (CLS, [4 registers], patches; LayerScale; SwiGLU in the giant),
`SiglipVisionModel` (patches only, tanh-GELU). `backbone.model` is a hub id or a local folder with config.json;
`backbone.pretrained` None (random weights from the config), a hub revision, or a local folder of weights. Size,
mean/std and crop come from the model's image processor (its class defaults where the repo has none).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers
from torch import nn

from cafe.backbone.family import Family, Preprocess, TowerShape, hub_reachable, plain_norm
from cafe.blocks import AttentionView, BlockView, MlpView
from cafe.config import is_local_checkpoint
from cafe.errors import CafeError
from cafe.tokens import TokenLayout

if TYPE_CHECKING:
    from cafe.backbone.family import Norm

CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
log = logging.getLogger(__name__)
# config class name -> (model class, image processor class, the mean/std its published checkpoints use)
MODELS = {
    "CLIPVisionConfig": ("CLIPVisionModel", "CLIPImageProcessor", CLIP_NORM),
    "Dinov2Config": ("Dinov2Model", "BitImageProcessor", IMAGENET_NORM),
    "Dinov2WithRegistersConfig": ("Dinov2WithRegistersModel", "BitImageProcessor", IMAGENET_NORM),
    "SiglipVisionConfig": ("SiglipVisionModel", "SiglipImageProcessor", HALF_NORM),
}


def _offline_message(model: str, why: str) -> str:
    return (
        f"backbone: cannot get Hugging Face model {model!r} ({why}). On a machine with network run "
        f'`python -c "import transformers; transformers.AutoModel.from_pretrained({model!r})"` to fill the '
        f"Hugging Face cache (copy ~/.cache/huggingface over), or `save_pretrained` it to a folder and set "
        f"backbone.model (and backbone.pretrained) to that folder."
    )


def vision_config(model: str, revision: str | None = None):
    """The vision config of a hub id or local folder (the vision part of a CLIP or SigLIP config)."""
    local = Path(model).is_dir()
    if not local and not hub_reachable():
        try:
            config = transformers.AutoConfig.from_pretrained(model, revision=revision, local_files_only=True)
        except OSError as exc:
            raise CafeError(_offline_message(model, "no network and no cached config")) from exc
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(model, revision=revision)
        except (OSError, ValueError) as exc:
            raise CafeError(_offline_message(model, str(exc))) from exc
    config = getattr(config, "vision_config", config)
    if type(config).__name__ not in MODELS:
        raise CafeError(f"backbone.model: {model!r} is a {type(config).__name__}; cafe reads {sorted(MODELS)}")
    return config


SIZE_ATTRIBUTE = "cafe_input_size"  # set on a built model: (input size, resize before the crop) it runs at


def _shape(config, size: int, resize: int | None = None) -> TowerShape:
    has_cls = "Siglip" not in type(config).__name__
    layout = TokenLayout(size // config.patch_size, has_cls, int(getattr(config, "num_register_tokens", 0)))
    return TowerShape(config.num_hidden_layers, config.hidden_size, size, config.patch_size, layout, resize)


def preprocessing(model: str, config, revision: str | None = None) -> Preprocess:
    """The image processor's size, crop and mean/std; where the repo or folder has none (a random tower), the
    config's image size and the mean/std of the architecture's published checkpoints."""
    _, processor_class, (mean, std) = MODELS[type(config).__name__]
    try:
        processor = getattr(transformers, processor_class).from_pretrained(
            model, revision=revision, local_files_only=not hub_reachable()
        )
    except OSError:
        log.warning("%s: no image processor settings; using %d px and the published mean/std", model, config.image_size)
        return Preprocess(int(config.image_size), mean, std)
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or processor.size
    image = int(size.get("height", size.get("shortest_edge", config.image_size)))
    resize = processor.size.get("shortest_edge", image)
    if not getattr(processor, "do_center_crop", False) and "shortest_edge" not in processor.size:
        log.warning("%s: its processor resizes to a square without keeping the aspect; cafe crops the center", model)
    return Preprocess(image, tuple(processor.image_mean), tuple(processor.image_std), int(resize))


class HfVision(Family):
    name = "hf"

    def shape(self, model: str, image_size: int | None = None) -> TowerShape:
        config = vision_config(model)
        own = preprocessing(model, config)
        return _shape(config, image_size or own.image_size, None if image_size else own.resize)

    def create(
        self, model: str, pretrained: str | None, seed: int, image_size: int | None = None
    ) -> tuple[nn.Module, Preprocess]:
        revision = None if not pretrained or is_local_checkpoint(pretrained) else pretrained
        config = vision_config(model, revision)
        cls = getattr(transformers, MODELS[type(config).__name__][0])
        torch.manual_seed(seed)
        if not pretrained:
            visual = cls(config)
        else:
            source = pretrained if is_local_checkpoint(pretrained) else model
            if is_local_checkpoint(pretrained) and not Path(pretrained).exists():
                raise CafeError(f"backbone.pretrained: {pretrained!r} not found")
            try:
                visual = cls.from_pretrained(source, revision=revision, local_files_only=not hub_reachable())
            except OSError as exc:
                raise CafeError(_offline_message(model, str(exc))) from exc
        preprocess = preprocessing(model, config, revision)
        if image_size:
            preprocess = dataclasses.replace(preprocess, image_size=image_size, resize=None)
        setattr(visual, SIZE_ATTRIBUTE, (preprocess.image_size, preprocess.resize))
        return visual.eval(), preprocess

    @staticmethod
    def _core(visual: nn.Module) -> nn.Module:
        return getattr(visual, "vision_model", visual)

    def describe(self, visual: nn.Module) -> TowerShape:
        size, resize = getattr(visual, SIZE_ATTRIBUTE, (visual.config.image_size, None))
        return _shape(visual.config, int(size), resize)

    def embed(self, visual: nn.Module, pixels: torch.Tensor, norm: Norm = plain_norm) -> torch.Tensor:
        core = self._core(visual)
        kind = type(visual.config).__name__
        if kind.startswith("Dinov2"):
            x = core.embeddings(pixels)  # interpolates its positional embedding where the size differs
        else:
            x = core.embeddings(pixels, interpolate_pos_encoding=pixels.shape[-1] != visual.config.image_size)
        return norm(getattr(core, "pre_layrnorm", nn.Identity()), x)

    def blocks(self, visual: nn.Module) -> nn.ModuleList:
        encoder = self._core(visual).encoder
        return getattr(encoder, "layers", None) or encoder.layer

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if type(block).__name__ == "CLIPEncoderLayer":
            out = block(x, None, None)
        elif type(block).__name__ == "SiglipEncoderLayer":
            out = block(x, None)
        else:
            out = block(x)
        return out[0] if isinstance(out, tuple) else out

    def view(self, block: nn.Module) -> BlockView:
        kind = type(block).__name__
        if kind in ("CLIPEncoderLayer", "SiglipEncoderLayer"):
            a, m = block.self_attn, block.mlp
            q, k, v, out, heads = a.q_proj, a.k_proj, a.v_proj, a.out_proj, a.num_heads
            norms, scales = (block.layer_norm1, block.layer_norm2), (None, None)
            mlp = MlpView(m.fc1.weight, m.fc1.bias, m.activation_fn, m.fc2.weight, m.fc2.bias)
        elif kind in ("Dinov2Layer", "Dinov2WithRegistersLayer"):
            a, m = block.attention.attention, block.mlp
            q, k, v, out, heads = a.query, a.key, a.value, block.attention.output.dense, a.num_attention_heads
            norms, scales = (block.norm1, block.norm2), (block.layer_scale1.lambda1, block.layer_scale2.lambda1)
            if hasattr(m, "weights_in"):
                mlp = MlpView(
                    m.weights_in.weight,
                    m.weights_in.bias,
                    nn.functional.silu,
                    m.weights_out.weight,
                    m.weights_out.bias,
                    gated=True,  # SwiGLU: silu(a) * b
                )
            else:
                mlp = MlpView(m.fc1.weight, m.fc1.bias, m.activation, m.fc2.weight, m.fc2.bias)
        else:
            raise CafeError(f"backbone: no block view for the Hugging Face layer {kind}")
        biases = [p.bias for p in (q, k, v)]
        qkv_bias = (
            None
            if all(b is None for b in biases)
            else torch.cat([torch.zeros_like(p.weight[:, 0]) if p.bias is None else p.bias for p in (q, k, v)])
        )
        attention = AttentionView(heads, torch.cat([q.weight, k.weight, v.weight]), qkv_bias, out.weight, out.bias)
        return BlockView(norms[0], attention, scales[0], norms[1], mlp, scales[1])

    def patch_weight(self, visual: nn.Module) -> torch.Tensor:
        embeddings = self._core(visual).embeddings
        conv = getattr(embeddings, "patch_embedding", None) or embeddings.patch_embeddings.projection
        return conv.weight
