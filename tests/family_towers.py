"""Test helper: tiny towers of every backbone family with random weights (timm models by name with small sizes,
Hugging Face models from small configs, an OpenCLIP tower with a timm trunk from tests/models/), and the same
weights moved between implementations: the tiny OpenCLIP tower into timm (timm's own OpenCLIP filter) and into
HF CLIP (the key mapping below), a timm DINOv2 (with or without registers) and a timm SigLIP into HF."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import open_clip
import timm
import torch
import transformers
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from cafe.backbone import Backbone, BackboneConfig
from cafe.backbone.hf import MODELS
from cafe.backbone.registry import get_family
from cafe.backbone.timm_vit import TimmVit

open_clip.add_model_config(Path(__file__).with_name("models"))  # an OpenCLIP tower with cafe's tiny timm trunk
SMALL = dict(depth=2, embed_dim=32, num_heads=2, img_size=28, patch_size=7)  # a 4x4 grid
HF_SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=7
)


def timm_backbone(visual: nn.Module, name: str) -> Backbone:
    pp = TimmVit.preprocess(visual)
    return Backbone(visual, pp.mean, pp.std, name, "random", get_family("timm"), pp)


def hf_backbone(visual: nn.Module, name: str) -> Backbone:
    """A Backbone on an HF model built here (no folder, so the architecture's published mean/std)."""
    mean, std = MODELS[type(visual.config).__name__][2]
    return Backbone(visual.eval(), mean, std, name, "random", get_family("hf"))


def _informative(visual: nn.Module, names: tuple[str, ...]) -> nn.Module:
    """Draw the parameters libraries initialise to constants (LayerScale 1e-5, tokens, positions) at random, so
    that every part of the tower shows in its outputs."""
    with torch.no_grad():
        for name, p in visual.named_parameters():
            if any(k in name for k in names):
                p.normal_(0, 0.5)
    return visual


def _timm(name: str, **kwargs) -> Callable[[], Backbone]:
    def build() -> Backbone:
        torch.manual_seed(0)
        visual = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs})
        return timm_backbone(_informative(visual, ("gamma", "token", "pos_embed")), name)

    build.model, build.kwargs = name, {**SMALL, **kwargs}  # what it is built from (timm_from_file builds it again)
    return build


def _hf(config_class: str, model_class: str, **kwargs) -> Callable[[], Backbone]:
    def build() -> Backbone:
        torch.manual_seed(0)
        config = getattr(transformers, config_class)(**{**HF_SMALL, **kwargs})
        visual = getattr(transformers, model_class)(config)
        return hf_backbone(_informative(visual, ("lambda1", "token", "position")), model_class)

    return build


TOWERS: dict[str, Callable[[], Backbone]] = {
    "openclip-tiny": lambda: Backbone.load(BackboneConfig("cafe-tiny-vit", seed=0, device="cpu")),
    "openclip-timm-trunk": lambda: Backbone.load(BackboneConfig("cafe-test-timm-trunk", seed=0, device="cpu")),
    "timm-dinov2": _timm("vit_small_patch14_dinov2"),
    "timm-dinov2-reg4": _timm("vit_small_patch14_reg4_dinov2"),
    "timm-dinov2-giant-swiglu": _timm("vit_giant_patch14_dinov2", embed_dim=24, mlp_ratio=2.0),
    "timm-siglip": _timm("vit_base_patch16_siglip_224"),
    "timm-clip-quickgelu": _timm("vit_base_patch16_clip_quickgelu_224"),
    "timm-augreg": _timm("vit_base_patch16_224"),
    "hf-clip": _hf("CLIPVisionConfig", "CLIPVisionModel"),
    "hf-dinov2": _hf("Dinov2Config", "Dinov2Model"),
    "hf-dinov2-reg4": _hf("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", num_register_tokens=4),
    "hf-dinov2-swiglu": _hf("Dinov2Config", "Dinov2Model", use_swiglu_ffn=True),
    "hf-siglip": _hf("SiglipVisionConfig", "SiglipVisionModel"),
}


def openclip_to_timm(source: Backbone, reg_tokens: int = 0, class_token: bool = True) -> Backbone:
    """The OpenCLIP tower's weights in a timm CLIP-style VisionTransformer (timm's own OpenCLIP filter), with
    `reg_tokens` zero register tokens added, or without its CLS token (SigLIP's layout); either changes the
    layout, and the outputs too unless the tower never reads those tokens (the planted one does not)."""
    visual = source.visual
    build = partial(
        VisionTransformer,
        img_size=source.image_size,
        patch_size=source.patch_size,
        embed_dim=source.width,
        depth=source.depth,
        num_heads=source.view(1).attn.heads,
        mlp_ratio=source.view(1).mlp.fc1_weight.shape[0] / source.width,
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        num_classes=visual.proj.shape[1],
    )
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    converted = checkpoint_filter_fn(state, build())
    pool = {"global_pool": "token"} if class_token else {"global_pool": "avg", "fc_norm": False}
    model = build(reg_tokens=reg_tokens, class_token=class_token, **pool)
    if not class_token:
        del converted["cls_token"]
        converted["pos_embed"] = converted["pos_embed"][:, 1:]
    if reg_tokens:  # registers sit between CLS and the patches, each with a zero token and position
        converted["reg_token"] = torch.zeros_like(model.reg_token)
        pos = converted["pos_embed"]
        converted["pos_embed"] = torch.cat([pos[:, :1], torch.zeros(1, reg_tokens, pos.shape[-1]), pos[:, 1:]], 1)
    model.load_state_dict(converted)
    mean, std = source.mean.flatten().tolist(), source.std.flatten().tolist()  # what timm's CLIP configs carry
    return Backbone(model, tuple(mean), tuple(std), "openclip-in-timm", "random", get_family("timm"))


def openclip_to_hf_clip(source: Backbone) -> Backbone:
    """The OpenCLIP tower's weights in a Hugging Face CLIPVisionModel (packed in_proj split into q, k, v)."""
    visual = source.visual
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_hf_geometry(source)))
    state = {
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.class_embedding": visual.class_embedding,
        "embeddings.position_embedding.weight": visual.positional_embedding,
        "pre_layrnorm.weight": visual.ln_pre.weight,
        "pre_layrnorm.bias": visual.ln_pre.bias,
        "post_layernorm.weight": visual.ln_post.weight,
        "post_layernorm.bias": visual.ln_post.bias,
    }
    _copy_openclip_blocks(state, visual, "encoder.layers.{}.", CLIP_NAMES)
    model.vision_model.load_state_dict(state)
    return _hf_like(source, model, "openclip-in-hf")


CLIP_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "layer_norm1",
              "layer_norm2", "mlp.fc1", "mlp.fc2")  # fmt: skip
DINOV2_NAMES = ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                "attention.output.dense", "norm1", "norm2", "mlp.fc1", "mlp.fc2")  # fmt: skip


def _hf_geometry(source: Backbone) -> dict:
    """An HF vision config's size arguments for the OpenCLIP tower `source` (its GELU and LayerNorm eps too)."""
    return dict(
        hidden_size=source.width,
        intermediate_size=source.view(1).mlp.fc1_weight.shape[0],
        num_hidden_layers=source.depth,
        num_attention_heads=source.view(1).attn.heads,
        image_size=source.image_size,
        patch_size=source.patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def _copy_openclip_blocks(state: dict, visual: nn.Module, to: str, names: tuple[str, ...]) -> None:
    """The OpenCLIP blocks' weights under HF names: `to` formats the block index; `names` are q, k, v, out, norm1,
    norm2, fc1, fc2."""
    d = visual.transformer.width
    for i, block in enumerate(visual.transformer.resblocks):
        for part, name in enumerate(names[:3]):
            state[f"{to.format(i)}{name}.weight"] = block.attn.in_proj_weight[part * d : (part + 1) * d]
            state[f"{to.format(i)}{name}.bias"] = block.attn.in_proj_bias[part * d : (part + 1) * d]
        modules = (block.attn.out_proj, block.ln_1, block.ln_2, block.mlp.c_fc, block.mlp.c_proj)
        for name, module in zip(names[3:], modules):
            state[f"{to.format(i)}{name}.weight"], state[f"{to.format(i)}{name}.bias"] = module.weight, module.bias


def _hf_like(source: Backbone, model: nn.Module, name: str) -> Backbone:
    mean, std = source.mean.flatten().tolist(), source.std.flatten().tolist()
    return Backbone(model.eval(), tuple(mean), tuple(std), name, "random", get_family("hf"))


def openclip_to_hf_no_prenorm(source: Backbone, kind: str) -> Backbone:
    """The OpenCLIP tower's blocks and embeddings in a Hugging Face `Dinov2Model`, `Dinov2WithRegistersModel` (4
    zero registers) or `SiglipVisionModel` (no CLS): `kind` is dinov2, dinov2-reg4 or siglip. These have no
    pre-norm, so `ln_pre` is dropped: the same tower only where nothing reads the stream before block 1's ln_1
    but what a LayerNorm leaves unchanged (the planted tower: its SAE reads channels its embeddings leave 0)."""
    visual, d = source.visual, source.width
    conv = {"weight": visual.conv1.weight, "bias": torch.zeros(d)}
    if kind == "siglip":
        config = transformers.SiglipVisionConfig(**_hf_geometry(source), vision_use_head=False)
        model, core, prefix, names = transformers.SiglipVisionModel(config), None, "encoder.layers.{}.", CLIP_NAMES
        state = {f"embeddings.patch_embedding.{k}": v for k, v in conv.items()}
        state["embeddings.position_embedding.weight"] = visual.positional_embedding[1:]
        state |= {f"post_layernorm.{k}": v for k, v in visual.ln_post.state_dict().items()}
    else:
        registers = {"num_register_tokens": 4} if kind == "dinov2-reg4" else {}
        geometry = {k: v for k, v in _hf_geometry(source).items() if k != "intermediate_size"}
        geometry["mlp_ratio"] = source.view(1).mlp.fc1_weight.shape[0] / d
        config_class = "Dinov2WithRegistersConfig" if registers else "Dinov2Config"
        config = getattr(transformers, config_class)(**geometry, **registers)
        model = getattr(transformers, config_class.replace("Config", "Model"))(config)
        core, prefix, names = model, "encoder.layer.{}.", DINOV2_NAMES
        state = {f"embeddings.patch_embeddings.projection.{k}": v for k, v in conv.items()}
        state |= {
            "embeddings.cls_token": visual.class_embedding.view(1, 1, d),
            "embeddings.mask_token": torch.zeros(1, d),
        }
        state["embeddings.position_embeddings"] = visual.positional_embedding[None]
        state |= {f"layernorm.{k}": v for k, v in visual.ln_post.state_dict().items()}
        if registers:
            state["embeddings.register_tokens"] = torch.zeros(1, 4, d)
        for i in range(source.depth):
            for scale in ("layer_scale1", "layer_scale2"):
                state[f"{prefix.format(i)}{scale}.lambda1"] = torch.ones(d)
    _copy_openclip_blocks(state, visual, prefix, names)
    (core or model.vision_model).load_state_dict(state)
    return _hf_like(source, model, f"openclip-in-hf-{kind}")


def timm_dinov2_to_hf(source: Backbone) -> Backbone:
    """A timm DINOv2 (registers or none) as a Hugging Face Dinov2Model / Dinov2WithRegistersModel."""
    visual, d, n_reg = source.visual, source.width, source.layout.n_registers
    common = dict(
        hidden_size=d,
        num_hidden_layers=source.depth,
        num_attention_heads=source.view(1).attn.heads,
        mlp_ratio=source.view(1).mlp.fc1_weight.shape[0] / d,
        image_size=source.image_size,
        patch_size=source.patch_size,
        layer_norm_eps=1e-6,
    )
    if n_reg:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**common, num_register_tokens=n_reg)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    pos = visual.pos_embed
    if n_reg:  # timm's no_embed_class: the CLS token has its own position folded in; HF adds pos[0] to it
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
    state = {
        "embeddings.cls_token": visual.cls_token,
        "embeddings.mask_token": torch.zeros(1, d),
        "embeddings.position_embeddings": pos,
        "embeddings.patch_embeddings.projection.weight": visual.patch_embed.proj.weight,
        "embeddings.patch_embeddings.projection.bias": visual.patch_embed.proj.bias,
        "layernorm.weight": visual.norm.weight,
        "layernorm.bias": visual.norm.bias,
    }
    if n_reg:
        state["embeddings.register_tokens"] = visual.reg_token
    for i, block in enumerate(visual.blocks):
        to = f"encoder.layer.{i}."
        qkv = tuple(f"attention.attention.{name}" for name in ("query", "key", "value"))
        _copy_timm_block(state, block, to, qkv, ("attention.output.dense", "norm1", "norm2", "mlp.fc1", "mlp.fc2"))
        state[f"{to}layer_scale1.lambda1"], state[f"{to}layer_scale2.lambda1"] = block.ls1.gamma, block.ls2.gamma
    model.load_state_dict(state)
    return _hf_like(source, model, "timm-in-hf")


def _copy_timm_block(state: dict, block, to: str, qkv: tuple[str, ...], names: tuple[str, ...]) -> None:
    """A timm block's weights under Hugging Face names: its packed qkv split into `qkv`, then proj, norm1, norm2,
    fc1, fc2 under `names` (in that order)."""
    d = block.attn.qkv.weight.shape[1]
    for part, name in enumerate(qkv):
        state[f"{to}{name}.weight"] = block.attn.qkv.weight[part * d : (part + 1) * d]
        state[f"{to}{name}.bias"] = block.attn.qkv.bias[part * d : (part + 1) * d]
    modules = (block.attn.proj, block.norm1, block.norm2, block.mlp.fc1, block.mlp.fc2)
    for name, module in zip(names, modules):
        state[f"{to}{name}.weight"], state[f"{to}{name}.bias"] = module.weight, module.bias


def timm_siglip_to_hf(source: Backbone) -> Backbone:
    """A timm SigLIP (no CLS; biased patch embedding) as a Hugging Face SiglipVisionModel without its pooling head."""
    visual, d = source.visual, source.width
    config = transformers.SiglipVisionConfig(
        hidden_size=d,
        intermediate_size=source.view(1).mlp.fc1_weight.shape[0],
        num_hidden_layers=source.depth,
        num_attention_heads=source.view(1).attn.heads,
        image_size=source.image_size,
        patch_size=source.patch_size,
        hidden_act="gelu",  # timm's default GELU (HF's SigLIP default is the tanh approximation)
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    model = transformers.SiglipVisionModel(config)
    state = {
        "embeddings.patch_embedding.weight": visual.patch_embed.proj.weight,
        "embeddings.patch_embedding.bias": visual.patch_embed.proj.bias,
        "embeddings.position_embedding.weight": visual.pos_embed[0],
        "post_layernorm.weight": visual.norm.weight,
        "post_layernorm.bias": visual.norm.bias,
    }
    for i, block in enumerate(visual.blocks):
        to = f"encoder.layers.{i}."
        qkv = tuple(f"self_attn.{name}_proj" for name in ("q", "k", "v"))
        _copy_timm_block(
            state, block, to, qkv, ("self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
        )
    model.vision_model.load_state_dict(state)
    return _hf_like(source, model, "timm-in-hf")


def timm_dinov2_as_hub(visual: VisionTransformer) -> dict[str, torch.Tensor]:
    """A timm DINOv2's weights in torch.hub's layout (facebookresearch/dinov2 `DinoVisionTransformer`, block_chunks
    0): a mask token; with registers, `register_tokens` and the CLS position kept in `pos_embed` (timm folds it
    into the CLS token: split here at a random point); SwiGLU's fc1/fc2 as w12/w3; block names are timm's."""
    d = visual.embed_dim
    state = {k: v.clone() for k, v in visual.state_dict().items() if not k.startswith("head")}
    state["mask_token"] = torch.zeros(1, d)
    if visual.num_reg_tokens:
        state["register_tokens"] = state.pop("reg_token")
        cls_position = torch.randn(1, 1, d)
        state["cls_token"] = state["cls_token"] - cls_position
        state["pos_embed"] = torch.cat([cls_position, state["pos_embed"]], 1)
    if isinstance(visual.blocks[0].mlp, timm.layers.GluMlp):
        state = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in state.items()}
    return state


def timm_from_file(tower: str, path: Path) -> Backbone:
    """The timm tower `tower` of TOWERS built again with the weights of a checkpoint file, as `backbone.pretrained:
    <path>` does (cafe's timm family: timm's own checkpoint filter converts the file's key names)."""
    build = TOWERS[tower]
    overlay = {"file": str(path)}
    visual = TimmVit()._build(build.model, pretrained=True, pretrained_cfg_overlay=overlay, **build.kwargs)
    return timm_backbone(visual, build.model)
