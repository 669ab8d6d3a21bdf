"""Hugging Face transformers' vision towers: `CLIPVisionModel` (CLS, patches, pre-norm, QuickGELU),
`Dinov2Model` and `Dinov2WithRegistersModel` (CLS, [4 registers], patches; LayerScale; SwiGLU in the giant),
`SiglipVisionModel` (patches only, tanh-GELU). `backbone.model` is a hub id or a local folder with config.json;
`backbone.pretrained` None (random weights from the config), a hub revision, or a local folder of weights. Size,
mean/std, resize and crop come from the model's image processor (preprocessor_config.json: CLIP and DINOv2
resize the shorter side and crop the center, SigLIP squashes to a square without a crop); where the repo or
folder has none, the config's size and the mean/std of the architecture's published checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers
from torch import nn

from cafe.backbone.family import Family, Preprocess, TowerShape, hub_reachable, plain_norm
from cafe.blocks import AttentionView, BlockView, MlpView, Stamp
from cafe.config import is_local_checkpoint
from cafe.errors import CafeError
from cafe.tokens import TokenLayout

if TYPE_CHECKING:
    from cafe.backbone.family import Norm

CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, what every processor of the classes below uses by default
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
        f"backbone: cannot get Hugging Face model {model!r} ({why}). Its config.json holds the architecture, so "
        f"even planning (`snakemake -n`) needs it and preprocessor_config.json (kilobytes, no weights); a run needs "
        f"the weights too. On a machine with network run `hf download {model} config.json preprocessor_config.json` "
        f"(planning) or `hf download {model}` (a run) to fill the Hugging Face cache (copy ~/.cache/huggingface "
        f"over), or `save_pretrained` the model and its image processor to a folder and set backbone.model (and "
        f"backbone.pretrained) to that folder."
    )


def vision_config(model: str, revision: str | None = None):
    """The vision config of a hub id or local folder (the vision part of a CLIP or SigLIP config)."""
    local = Path(model).is_dir()
    if not local and not hub_reachable():
        try:
            config = transformers.AutoConfig.from_pretrained(model, revision=revision, local_files_only=True)
        except OSError as exc:
            raise CafeError(_offline_message(model, "no network and no cached config.json")) from exc
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(model, revision=revision)
        except (OSError, ValueError) as exc:
            raise CafeError(_offline_message(model, str(exc))) from exc
    config = getattr(config, "vision_config", config)
    if type(config).__name__ not in MODELS:
        raise CafeError(f"backbone.model: {model!r} is a {type(config).__name__}; cafe reads {sorted(MODELS)}")
    return config


def at_size(preprocess: Preprocess, image_size: int) -> Preprocess:
    """`backbone.image_size` over the processor's: the shorter side to it, or squashed to it where the processor
    squashes."""
    resize = None if isinstance(preprocess.resize, int) else (image_size, image_size)
    return dataclasses.replace(preprocess, image_size=image_size, resize=resize)


SIZE_ATTRIBUTE = "cafe_input_size"  # set on a built model: (input size, resize before the crop) it runs at


def _shape(config, size: int, resize: int | tuple[int, int] | None = None) -> TowerShape:
    has_cls = "Siglip" not in type(config).__name__
    layout = TokenLayout(size // config.patch_size, has_cls, int(getattr(config, "num_register_tokens", 0)))
    return TowerShape(config.num_hidden_layers, config.hidden_size, size, config.patch_size, layout, resize)


def preprocessing(model: str, config, revision: str | None = None) -> Preprocess:
    """The image processor's resize, crop and mean/std; where the repo or folder has none (a random tower), the
    config's image size and the mean/std of the architecture's published checkpoints."""
    _, processor_class, (mean, std) = MODELS[type(config).__name__]
    try:
        processor = getattr(transformers, processor_class).from_pretrained(
            model, revision=revision, local_files_only=not hub_reachable()
        )
    except OSError:
        log.warning("%s: no image processor settings; using %d px and the published mean/std", model, config.image_size)
        _, resize = processor_geometry(getattr(transformers, processor_class)())  # the class's: squash or crop
        return at_size(Preprocess(int(config.image_size), mean, std, resize), int(config.image_size))
    image, resize = processor_geometry(processor)
    if "shortest_edge" in processor.size and not getattr(processor, "do_center_crop", False):
        log.warning("%s: its processor resizes the shorter side without a crop; cafe crops the center", model)
    if getattr(processor, "resample", BICUBIC) != BICUBIC:
        log.warning("%s: its processor resizes with PIL resample %s; cafe resizes bicubic", model, processor.resample)
    return Preprocess(image, tuple(processor.image_mean), tuple(processor.image_std), resize)


def processor_geometry(processor) -> tuple[int, int | tuple[int, int]]:
    """(input size, resize) of an HF image processor: `shortest_edge` then `crop_size` (CLIP, DINOv2), or
    `height` x `width` squashed without a crop (SigLIP), in `cafe.images.Crop`'s terms."""
    size, crop = processor.size, getattr(processor, "do_center_crop", False)
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
        return (int(processor.crop_size["height"]) if crop else resize), resize
    squash = (int(size["height"]), int(size["width"]))
    return (int(processor.crop_size["height"]) if crop else squash[0]), squash


def _pack(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF's separate q, k, v projections as one (3D, D) weight and (3D,) bias (zeros where one has none)."""
    biases = [p.bias for p in (q, k, v)]
    bias = (
        None
        if all(b is None for b in biases)
        else torch.cat([torch.zeros_like(p.weight[:, 0]) if p.bias is None else p.bias for p in (q, k, v)])
    )
    return torch.cat([q.weight, k.weight, v.weight]), bias


# q projection -> (the Stamp of the q/k/v parameters, the packed weight and bias)
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_qkv(q: nn.Linear, k: nn.Linear, v: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_pack`, kept per block while the parameters stay the same tensors unchanged, so that a forward over the
    view (AttnLRP's, the one-token last block's) copies no weights, as on timm's packed qkv. The aliases pin the
    sources' storage (no new tensor can take their address); an in-place write bumps a version. Parameters that
    require grad get a fresh differentiable pack each time. Costs a second copy of q/k/v per block while the
    model lives (an AttnLRP pass to the last block held one anyway, until its backward)."""
    params = [p for layer in (q, k, v) for p in (layer.weight, layer.bias) if p is not None]
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _pack(q, k, v)
    stamp, packed = _PACKED.get(q, (None, None))
    if stamp is not None and stamp.matches(params):
        return packed
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even if built under inference mode
        packed = _pack(q, k, v)
    _PACKED[q] = (Stamp.of(params), packed)
    return packed


class HfVision(Family):
    name = "hf"

    def shape(self, model: str, image_size: int | None = None) -> TowerShape:
        config = vision_config(model)
        own = preprocessing(model, config)
        own = at_size(own, image_size) if image_size else own
        return _shape(config, own.image_size, own.resize)

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
            preprocess = at_size(preprocess, image_size)
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
        attention = AttentionView(heads, *packed_qkv(q, k, v), out.weight, out.bias)
        return BlockView(norms[0], attention, scales[0], norms[1], mlp, scales[1])

    def patch_weight(self, visual: nn.Module) -> torch.Tensor:
        embeddings = self._core(visual).embeddings
        conv = getattr(embeddings, "patch_embedding", None) or embeddings.patch_embeddings.projection
        return conv.weight
