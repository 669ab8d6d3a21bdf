"""Backbone families by name: each is its own module (imported only when a tower of that family is built or
described, so naming one costs no library import) and one line here. `family_of` infers the family from the
model's name where that is unambiguous: a hub id or folder (has '/') is Hugging Face, a lowercase timm name
(`vit_base_patch14_dinov2`) is timm, anything else (`ViT-B-32`, `cafe-demo-vit`) is OpenCLIP."""

from __future__ import annotations

import functools
import importlib
import re
from typing import TYPE_CHECKING

from cafe.errors import CafeError

if TYPE_CHECKING:
    from cafe.backbone.family import Family

FAMILIES: dict[str, str] = {  # name -> "module:class"
    "openclip": "cafe.backbone.openclip:OpenClip",
    "timm": "cafe.backbone.timm_vit:TimmVit",
    "hf": "cafe.backbone.hf:HfVision",
}
AUTO = "auto"
TIMM_NAME = re.compile(r"^(vit|deit|eva|beit|flexivit)[a-z0-9]*_[a-z0-9_.]+$")


def family_of(model: str, family: str = AUTO) -> str:
    """The family named, or the one `model`'s name implies (module docstring)."""
    if family != AUTO:
        return _known(family)
    if "/" in model and not model.startswith("hf-hub:"):
        return "hf"
    return "timm" if TIMM_NAME.match(model) else "openclip"


def _known(family: str) -> str:
    if family not in FAMILIES:
        raise CafeError(f"backbone.family: unknown family {family!r}; known: {sorted(FAMILIES)}")
    return family


@functools.cache
def get_family(name: str) -> Family:
    """The family object called `name` (its library imported now)."""
    module, cls = FAMILIES[_known(name)].split(":")
    return getattr(importlib.import_module(module), cls)()
