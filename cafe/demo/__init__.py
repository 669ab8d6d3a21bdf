"""The demo world: seeded procedural scenes whose causes are known (`cafe.demo.world`), written as an ImageFolder
with object records and masks (`cafe.demo.data`, `cafe demo-data`), and the tower trained on them
(`cafe.demo.backbone`). Its params (`cafe.demo.config`) load without torch or the drawing libraries; the other
names load their module when first asked for."""

from __future__ import annotations

from cafe.lazy import lazy_names

__all__ = [
    "CLASSES",
    "COMPOSITIONAL",
    "DemoConfig",
    "generate",
    "register",
    "render_scene",
    "scene_index",
    "write_demo",
]
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "CLASSES": "cafe.demo.world",
        "COMPOSITIONAL": "cafe.demo.world",
        "DemoConfig": "cafe.demo.config",
        **dict.fromkeys(["generate", "register", "render_scene", "scene_index", "write_demo"], "cafe.demo.data"),
    },
)
