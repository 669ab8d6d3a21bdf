"""What the manifest step's image check costs at ImageNet scale: times `cafe.images.image_problem` (header, size,
end marker) on ImageNet-like JPEGs (500x375, quality 90, natural-image-sized files) against a full decode
(what extraction does to every image anyway), one process, and extrapolates to the 1.28 M ImageNet train images.

    python benchmarks/image_check.py --images 300 --out benchmarks/results/image_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

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


def per_image(fn, paths: list[Path], repeats: int = 3) -> float:
    """Best-of-repeats seconds per image of fn over paths (files warm in the page cache, as after listing)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image_check.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        make_jpegs(root, args.images)
        paths = [root / p for p in list_images(root)["path"]]
        check = per_image(image_problem, paths)
        decode = per_image(lambda p: load_image(p, lambda image: image), paths)
        mean_kb = np.mean([p.stat().st_size for p in paths]) / 1e3
    result = {
        "images": args.images,
        "mean_file_kB": round(float(mean_kb), 1),
        "check_ms_per_image": round(check * 1e3, 4),
        "decode_ms_per_image": round(decode * 1e3, 3),
        "check_over_decode": round(check / decode, 4),
        "imagenet_check_core_minutes": round(check * IMAGENET_TRAIN / 60, 2),
        "imagenet_decode_core_minutes": round(decode * IMAGENET_TRAIN / 60, 1),
        "note": "one process, files in the page cache; a cold network file system adds one small read per file",
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
