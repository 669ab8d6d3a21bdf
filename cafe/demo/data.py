"""The demo world: seeded procedural scenes whose causes are known, so a right ERF can be told from a wrong one.

`cafe demo-data --params '<demo JSON>' --out results/demo` writes:

- `images/<class>/<index:06d>.png`: an ImageFolder, like ImageNet (classes and their causes: `cafe.demo.world`).
- `objects.csv`: one row per object of every scene: `path` (relative to `images/`, e.g.
  `pills_and_frown/000000.png`), `class`, `object` (its id in the label map, 1..), `kind`, `causal` (True if
  the object is one of the parts that make the class), tight bounding box `x0, y0, x1, y1` (pixels,
  end-exclusive) and `area` (pixels).
- `masks.h5`: `path` (N,) utf-8, the same strings as objects.csv; `labels` (N, H, W) uint8, row i the object-id
  label map of image `path[i]` (0 = background, k = object k of that image in objects.csv). Attributes:
  `image_size`, `seed`, `classes` (JSON: class -> causal kinds), `compositional` (JSON list of classes).

Image i is class `CLASSES[i % n_classes]`, drawn from a generator seeded by (seed, i): the output is
byte-identical for a given seed, and the first images do not change when n_images grows. `render_scene`
re-renders any scene from (seed, image_size, index), optionally without some of its objects: the same draws,
composed without them (the counterfactual scenes of the ground truth).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cafe.config import parse_section
from cafe.demo.config import DemoConfig
from cafe.demo.world import CLASSES, COMPOSITIONAL, Scene, compose, draw_scene
from cafe.errors import CafeError
from cafe.io import atomic_path, current_umask, write_csv

log = logging.getLogger(__name__)
OBJECT_COLUMNS = ["path", "class", "object", "kind", "causal", "x0", "y0", "x1", "y1", "area"]


def render_scene(config: DemoConfig, index: int, omit: frozenset[int] | set[int] = frozenset()) -> Scene:
    """Scene `index` of the world, without the objects whose ids (objects.csv `object`) are in `omit`: the same
    random draws as the full scene, so only the omitted objects' pixels change (to the background they hid)."""
    label = list(CLASSES)[index % len(CLASSES)]
    return compose(draw_scene(np.random.default_rng([config.seed, index]), label, config.image_size), omit)


def scene_index(path: str) -> int:
    """The world index of an image path as written by `write_demo` (`<class>/<index:06d>.png`)."""
    label, _, name = path.partition("/")
    stem = name.rsplit(".", 1)[0]
    if label not in CLASSES or not stem.isdigit():
        raise CafeError(f"{path!r} is not a demo scene path (<class>/<index>.png with a class of {list(CLASSES)})")
    index = int(stem)
    if list(CLASSES)[index % len(CLASSES)] != label:
        raise CafeError(f"{path!r}: scene {index} of the demo world is not of class {label!r}")
    return index


def generate(config: DemoConfig) -> Iterator[tuple[str, str, Scene]]:
    """Yield (relative path, class, scene) for every image of the world, in index order."""
    names = list(CLASSES)
    for index in range(config.n_images):
        label = names[index % len(names)]
        yield f"{label}/{index:06d}.png", label, render_scene(config, index)


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; it replaces `path` (and all it held) only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700
    old = path.with_name(f"{tmp.name}.old")
    try:
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _object_rows(path: str, label: str, scene: Scene) -> list[dict]:
    return [
        {
            "path": path,
            "class": label,
            "object": o.id,
            "kind": o.kind,
            "causal": o.causal,
            "x0": o.bbox[0],
            "y0": o.bbox[1],
            "x1": o.bbox[2],
            "y1": o.bbox[3],
            "area": o.area,
        }
        for o in scene.objects
    ]


def _write_masks(path: Path, config: DemoConfig, paths: list[str], labels: list[np.ndarray]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("path", data=np.array(paths, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset(
            "labels",
            data=np.stack(labels),
            chunks=(1, config.image_size, config.image_size),
            compression="gzip",
            shuffle=True,
        )
        h5.attrs.update(
            image_size=config.image_size,
            seed=config.seed,
            classes=json.dumps(CLASSES),
            compositional=json.dumps(list(COMPOSITIONAL)),
        )


def write_demo(config: DemoConfig, out: str | Path) -> None:
    """Render the world into `out`: images/ (ImageFolder), objects.csv and masks.h5 (layout: module doc)."""
    out = Path(out)
    rows, paths, labels = [], [], []
    with _atomic_dir(out / "images") as images:
        for path, label, scene in tqdm(generate(config), total=config.n_images, desc="demo scenes"):
            (images / label).mkdir(exist_ok=True)
            Image.fromarray(scene.image).save(images / path, format="PNG")
            rows += _object_rows(path, label, scene)
            paths.append(path)
            labels.append(scene.labels)
    write_csv(out / "objects.csv", pd.DataFrame(rows, columns=OBJECT_COLUMNS))
    _write_masks(out / "masks.h5", config, paths, labels)
    log.info("wrote %d scenes (%d classes, %d objects) to %s", len(paths), len(CLASSES), len(rows), out)


def run_demo_data(args: argparse.Namespace) -> None:
    write_demo(parse_section(DemoConfig, args.params, "demo"), args.out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe demo-data`."""
    parser = subparsers.add_parser("demo-data", help="render the demo world (scenes with known causes)")
    parser.add_argument("--params", default="{}", help="params.yaml `demo:` section as JSON (without `backbone`)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, objects.csv, masks.h5)")
    parser.set_defaults(func=run_demo_data)
