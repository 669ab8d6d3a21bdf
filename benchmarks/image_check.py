"""What the manifest step's image check costs at ImageNet scale: times `cafe.images.image_problem` (header, size,
end marker) on ImageNet-like JPEGs (500x375, quality 90, natural-image-sized files) against a full decode
(what extraction does to every image anyway), one process, in alternating passes through the harness
(cafe/bench/harness.py), and extrapolates to the 1.28 M ImageNet train images.

    python benchmarks/image_check.py --images 300 --out benchmarks/results/image_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cafe.bench.harness import add_arguments, from_arguments
from cafe.bench.machine import describe
from cafe.images import image_problem, list_images, load_image
from cafe.io import write_json

IMAGENET_TRAIN = 1_281_167


def make_jpegs(root: Path, n: int) -> None:
    """n JPEGs of ImageNet's typical size, smooth structure plus texture (≈ 110 kB each, like ImageNet's)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    (root / "c").mkdir(parents=True)
    for i in range(n):
        phase = rng.uniform(0, 6, 3)
        base = np.stack([128 + 90 * np.sin(x / (20 + 9 * c) + p) * np.cos(y / 31 + p) for c, p in enumerate(phase)], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "c" / f"{i:05d}.jpg", quality=90)


def over(fn, paths: list[Path]):
    """One pass of fn over every path (files warm in the page cache, as after listing)."""
    return lambda: [fn(path) for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image_check.json"))
    parser.add_argument("--pairs", type=int, default=5, help="alternating check/decode passes (default 5)")
    add_arguments(parser)
    args = parser.parse_args()
    harness = from_arguments(args)
    admission = harness.admit()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        make_jpegs(root, args.images)
        paths = [root / p for p in list_images(root)["path"]]
        decode = over(lambda p: load_image(p, lambda image: image), paths)
        figure = harness.pair(over(image_problem, paths), decode, pairs=args.pairs)
        mean_kb = np.mean([p.stat().st_size for p in paths]) / 1e3
    check, decode = (figure.stats(side)["median"] / len(paths) for side in ("a", "b"))
    result = {
        "images": args.images,
        "mean_file_kB": round(float(mean_kb), 1),
        "check_ms_per_image": round(check * 1e3, 4),
        "decode_ms_per_image": round(decode * 1e3, 3),
        "check_over_decode": figure.ratio(),
        "imagenet_check_core_minutes": round(check * IMAGENET_TRAIN / 60, 2),
        "imagenet_decode_core_minutes": round(decode * IMAGENET_TRAIN / 60, 1),
        "figure": figure.record(),
        "machine": {**describe(torch.device("cpu")), "admission": admission},
        "note": "one process, files in the page cache; a cold network file system adds one small read per file",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
