"""The vision backbone: a ViT of any registered family (`cafe.backbone.registry`: OpenCLIP, timm, Hugging Face)
loaded by (family, model name, pretrained tag or local path), with truncated forwards that run only blocks 1..L.

Layer L (1-based) means the residual stream *after* block L; tokens follow the model's `TokenLayout`
(cafe.tokens: [CLS] [registers] patches row-major). Everything downstream (activations, ERF, insertion) goes
through `Backbone` (cafe/backbone/tower.py), so the demo tower, ViT-L/14 and DINOv2 share one code path. This
module (which tower, its shape from its config) imports no torch; `Backbone` loads it when first named.
"""

from __future__ import annotations

from dataclasses import dataclass

from cafe.backbone.family import TowerShape
from cafe.backbone.registry import AUTO, family_of, get_family
from cafe.devices import resolve_device  # re-exported: where `device: auto` is decided
from cafe.lazy import lazy_names

__all__ = ["Backbone", "BackboneConfig", "TowerShape", "resolve_device", "tower_shape"]
__getattr__, __dir__ = lazy_names(__name__, {"Backbone": "cafe.backbone.tower"})


@dataclass(frozen=True)
class BackboneConfig:
    """Which tower to load: a family (`auto`: inferred from the name), a model name, and a pretrained tag, a
    local checkpoint path, or None (random weights from `seed`)."""

    model: str
    pretrained: str | None = None
    seed: int = 0
    device: str = "auto"
    family: str = AUTO
    image_size: int | None = None  # input size (center crop of the shorter side); None = the model's data config

    def __post_init__(self) -> None:
        family_of(self.model, self.family)  # an unknown family is named at once


def tower_shape(model: str | BackboneConfig, family: str = AUTO) -> TowerShape:
    """Depth, width, image/patch size and token layout of a model (a name, or a config whose family and
    image size count), from its config alone (no weights)."""
    cfg = model if isinstance(model, BackboneConfig) else BackboneConfig(model, family=family)
    return get_family(family_of(cfg.model, cfg.family)).shape(cfg.model, cfg.image_size)
