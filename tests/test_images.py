"""The ImageFolder reader, the seeded manifest and image loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_image_folder
from lost_files import count_lost, files_lost, hashes
from PIL import Image

from cafe.errors import CafeError
from cafe.images import (
    Crop,
    ImageSize,
    check_images,
    crop_of,
    decode_device,
    device_decodes,
    image_batches,
    image_problem,
    list_images,
    load_images,
)
from cafe.io.manifest import read_manifest, read_skipped
from cafe.manifest import DataConfig, make_manifest, register


def run_cli(argv: list[str]) -> None:
    """Parse and run one `cafe manifest` command line through the module's own subparser."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    args.func(args)


def test_manifest_is_deterministic_with_disjoint_splits(image_folder: Path, tmp_path: Path) -> None:
    params = json.dumps({"images": str(image_folder), "n_train": 9, "n_analysis": 4, "seed": 3})
    cache = ["--hash-cache", str(tmp_path / "hashes.sqlite")]
    run_cli(["manifest", "--params", params, "--out", str(tmp_path / "a.csv"), *cache])
    run_cli(["manifest", "--params", params, "--out", str(tmp_path / "b.csv"), *cache])
    first = read_manifest(tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert list(first.columns) == ["index", "split", "path", "class", "size", "md5"]
    assert first["index"].tolist() == list(range(13))
    assert first["split"].value_counts().to_dict() == {"train": 9, "analysis": 4}
    assert first["path"].is_unique
    assert all((image_folder / p).is_file() and p.split("/")[0] == c for p, c in zip(first["path"], first["class"]))


def test_manifest_seed_changes_the_draw(image_folder: Path) -> None:
    draws = [make_manifest(DataConfig(str(image_folder), 5, 3, seed))["path"].tolist() for seed in (0, 1)]
    assert draws[0] != draws[1]


def test_reader_finds_common_extensions_and_any_class_names(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "r", {"dog": 2}, ext=".JPEG")
    make_image_folder(root, {"Cat 7": 1}, ext=".jpg")
    make_image_folder(root, {"n0001": 1}, ext=".png")
    (root / "dog" / "notes.txt").write_text("not an image")
    images = list_images(root)
    assert images["class"].tolist() == ["Cat 7", "dog", "dog", "n0001"]
    assert images["path"].iloc[0] == "Cat 7/Cat 7_000.jpg"


@pytest.mark.parametrize(
    "layout, message",
    [
        (None, "not found"),
        ({}, "no class folders"),
        ({"empty_class": 0}, "no images"),
    ],
)
def test_bad_image_folders_are_named(tmp_path: Path, layout: dict | None, message: str) -> None:
    root = tmp_path / "images"
    if layout is not None:
        root.mkdir()
        make_image_folder(root, layout)
    with pytest.raises(CafeError, match=message) as err:
        make_manifest(DataConfig(str(root), 1, 1))
    assert str(root) in str(err.value)


def test_asking_for_more_images_than_exist_says_how_many_exist(image_folder: Path) -> None:
    with pytest.raises(CafeError, match="holds only 16 images"):
        make_manifest(DataConfig(str(image_folder), 12, 5))


def test_load_images_resizes_shorter_side_and_center_crops(tmp_path: Path) -> None:
    left_red = Image.new("RGB", (48, 24), (0, 0, 255))
    left_red.paste((255, 0, 0), (0, 0, 12, 24))  # only the left quarter is red: cropped away by a center crop
    left_red.save(tmp_path / "wide.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.png")
    batch = load_images(tmp_path, ["wide.png", "gray.png"], 16)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    assert batch[0, 0].max() < 0.1 and batch[0, 2].min() > 0.9  # blue only: the crop kept the center
    assert torch.allclose(batch[1], torch.full((3, 16, 16), 128 / 255), atol=0.02)  # grayscale became RGB


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "images", {"a": 2})
    broken = root / "a" / "a_001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(CafeError, match="a_001.png"):
        load_images(root, ["a/a_000.png", "a/a_001.png"], 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_batches_follow_the_split_in_manifest_order(image_folder: Path, workers: int) -> None:
    manifest = make_manifest(DataConfig(str(image_folder), 5, 3))
    rows = manifest[manifest["split"] == "analysis"]
    batches = list(image_batches(image_folder, rows, 32, batch_size=2, num_workers=workers))
    assert [len(i) for i, _ in batches] == [2, 1]
    assert torch.cat([i for i, _ in batches]).tolist() == rows["index"].tolist()
    assert torch.equal(batches[0][1], load_images(image_folder, rows["path"].tolist()[:2], 32))


def test_manifest_missing_columns_is_an_error(tmp_path: Path) -> None:
    pd.DataFrame({"path": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(CafeError, match="lacks column"):
        read_manifest(tmp_path / "m.csv")


def _gradient(size: tuple[int, int] = (40, 24)) -> np.ndarray:
    """A left-to-right gray ramp 0..255 of (height, width) = size[::-1]."""
    return np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))


def _odd_image(kind: str, path: Path) -> Path:
    """One valid but unusual image file: the modes and sizes ImageNet and users' folders hold."""
    ramp = _gradient()
    if kind == "cmyk":
        Image.fromarray(np.stack([ramp] * 3, -1)).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
        return path.with_suffix(".jpg")
    if kind == "exif_rotated":
        image, exif = Image.fromarray(np.stack([ramp] * 3, -1)), Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees on display
        image.save(path.with_suffix(".jpg"), exif=exif, quality=95)
        return path.with_suffix(".jpg")
    images = {
        "gray": Image.fromarray(ramp),
        "gray16": Image.fromarray(ramp.astype(np.uint16) * 257),
        "rgba": Image.fromarray(np.stack([ramp] * 3 + [np.full_like(ramp, 255)], -1)),
        "palette": Image.fromarray(np.stack([ramp] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE),
        "tiny": Image.fromarray(np.stack([ramp[:8, :8]] * 3, -1)),
    }
    images[kind].save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.mark.fault(
    "odd but valid images (CMYK, grayscale, 16-bit, RGBA, palette, EXIF-rotated, 8 px)",
    "pass the check and load as the same gray levels as a plain 8-bit RGB file",
)
@pytest.mark.parametrize("kind", ["cmyk", "gray", "gray16", "rgba", "palette", "exif_rotated", "tiny"])
def test_odd_but_valid_images_pass_the_check_and_keep_their_gray_levels(
    tmp_path: Path, kind: str, record_property
) -> None:
    path = _odd_image(kind, tmp_path / kind)
    before = hashes(tmp_path)
    assert image_problem(path) is None
    image = load_images(tmp_path, [path.name], 16)[0]
    assert count_lost(record_property, files_lost(before)) == []  # read, never rewritten
    assert image.shape == (3, 16, 16)
    if kind != "tiny":  # the same gray ramp as from a plain 8-bit RGB file, whatever the mode it was stored in
        Image.fromarray(np.stack([_gradient()] * 3, -1)).save(tmp_path / "reference.png")
        reference = load_images(tmp_path, ["reference.png"], 16)[0]
        assert (image - reference).abs().max() < 0.06, kind


def test_jpeg_with_trailing_bytes_after_its_end_is_not_broken(tmp_path: Path) -> None:
    path = _odd_image("cmyk", tmp_path / "x")
    path.write_bytes(path.read_bytes() + b"camera padding" * 400)
    assert image_problem(path) is None


def _broken_folder(root: Path) -> dict[str, str]:
    """An ImageFolder of JPEGs with four broken files; returns {path: what is wrong}."""
    make_image_folder(root, {"a": 10, "b": 10}, ext=".JPEG")
    whole = (root / "a" / "a_000.JPEG").read_bytes()
    broken = {"a/a_001.JPEG": "", "a/a_002.JPEG": whole[: len(whole) // 2], "b/b_003.JPEG": "not an image"}
    for name, content in broken.items():
        (root / name).write_bytes(content.encode() if isinstance(content, str) else content)
    png = root / "b" / "b_004.JPEG"  # a PNG named .JPEG, cut in half
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
    png.write_bytes(png.read_bytes()[:1500])
    return {"a/a_001.JPEG": "empty file", "a/a_002.JPEG": "truncated", "b/b_003.JPEG": "", "b/b_004.JPEG": ""}


@pytest.mark.fault(
    "broken images among those drawn (zero bytes, truncated JPEG, a text file named .JPEG, a truncated PNG)",
    "the manifest step, before any extraction, lists every one with a count in one error (data.bad_images: error)",
)
def test_every_broken_image_is_reported_at_once_with_a_count(tmp_path: Path, record_property) -> None:
    broken = _broken_folder(tmp_path / "images")
    params = json.dumps({"images": str(tmp_path / "images"), "n_train": 14, "n_analysis": 6})
    before = hashes(tmp_path / "images")
    with pytest.raises(CafeError) as err:
        run_cli(["manifest", "--params", params, "--out", str(tmp_path / "m.csv"), "--workers", "2"])
    assert count_lost(record_property, files_lost(before)) == []  # the image folder untouched
    message = str(err.value)
    assert "4 of 20 images cannot be read" in message and "bad_images: skip" in message
    for name, why in broken.items():
        assert name in message and why in message
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "skipped_images.csv").exists()


@pytest.mark.fault(
    "the same broken images with data.bad_images: skip",
    "left out of the manifest, listed in skipped_images.csv beside it (and counted in the activation files)",
)
def test_skip_leaves_broken_images_out_and_lists_them_beside_the_manifest(tmp_path: Path, record_property) -> None:
    broken = _broken_folder(tmp_path / "images")
    params = {"images": str(tmp_path / "images"), "n_train": 14, "n_analysis": 6, "bad_images": "skip"}
    before = hashes(tmp_path / "images")
    run_cli(["manifest", "--params", json.dumps(params), "--out", str(tmp_path / "m.csv")])
    assert count_lost(record_property, files_lost(before)) == []  # the image folder untouched
    manifest, skipped = read_manifest(tmp_path / "m.csv"), read_skipped(tmp_path / "skipped_images.csv")
    assert sorted(skipped["path"]) == sorted(broken) and list(skipped.columns) == ["path", "class", "reason"]
    assert len(manifest) == 16 and not manifest["path"].isin(list(broken)).any()
    assert manifest["index"].tolist() == list(range(16))


def test_checking_in_worker_processes_finds_the_same_files(tmp_path: Path) -> None:
    _broken_folder(tmp_path / "images")
    rows = list_images(tmp_path / "images")
    serial, parallel = check_images(tmp_path / "images", rows, 1), check_images(tmp_path / "images", rows, 3)
    pd.testing.assert_frame_equal(serial, parallel)
    assert len(serial) == 4


def test_bad_images_setting_is_checked() -> None:
    with pytest.raises(CafeError, match="data.bad_images must be one of"):
        DataConfig(bad_images="ignore")


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like content: smooth colour fields with fine grain (pure noise is no camera's JPEG)."""
    rng = np.random.default_rng(seed)
    fields = rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(fields).resize((width, height), Image.Resampling.BICUBIC)).astype(int)
    return Image.fromarray(np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8))


def _decoding_folder(root: Path) -> list[str]:
    """JPEGs of odd sizes (wide, tall, smaller than the model's size), gray, CMYK and progressive, and a PNG."""
    (root / "a").mkdir(parents=True)
    files = {
        "wide.jpg": (_photo(97, 61, 0), {}),
        "tall.jpg": (_photo(33, 50, 1), {}),
        "large.JPEG": (_photo(203, 151, 2), {"quality": 90}),
        "small.jpg": (_photo(21, 17, 3), {}),
        "gray.jpg": (_photo(64, 41, 4).convert("L"), {}),
        "cmyk.jpg": (_photo(45, 45, 5).convert("CMYK"), {}),
        "progressive.jpg": (_photo(120, 90, 6), {"progressive": True}),
        "scene.png": (_photo(40, 30, 7), {}),
    }
    for name, (image, options) in files.items():
        image.save(root / "a" / name, **options)
    return [f"a/{name}" for name in files]


def _batches(root: Path, paths: list[str], size: ImageSize, device: torch.device | None, workers: int = 0) -> tuple:
    """Every image of `paths` through `image_batches` (batches of 3), as (indices, images)."""
    rows = pd.DataFrame({"index": np.arange(len(paths)) + 10, "path": paths})
    batches = list(image_batches(root, rows, size, batch_size=3, num_workers=workers, decode_on=device))
    return torch.cat([i for i, _ in batches]), torch.cat([b for _, b in batches])


@pytest.mark.parametrize(("size", "workers"), [(32, 0), (64, 2), (Crop(32, 40), 0), (Crop(32, (32, 32)), 0)])
def test_decoding_on_the_device_matches_pil_within_resize_rounding(
    tmp_path: Path, size: ImageSize, workers: int
) -> None:
    """The device path (run here on the CPU) against PIL's. Decoding is the same libjpeg-turbo on both (measured:
    identical pixels); both resize in PIL's two passes with uint8 rounding between, with fixed-point (PIL) or float
    coefficients (torch), so a pixel may land one level apart (measured on these images at sizes 32, 64 and 224: max
    1 level, mean 0.004 levels; squashed to 32 x 32, max 1, mean 0.03: tall.jpg's 50 rows to 32 put a fifth of its
    pixels one level apart). Bounds a bit above: 2 levels per pixel, mean 0.05 levels. A crop one pixel off, a wrong
    scale or channel order moves the max by tens of levels and the mean by far more."""
    paths = _decoding_folder(tmp_path / "images")
    cpu = torch.device("cpu")
    indices, device = _batches(tmp_path / "images", paths, size, cpu, workers)
    want_indices, pil = _batches(tmp_path / "images", paths, size, None)
    assert indices.tolist() == want_indices.tolist() == list(range(10, 10 + len(paths)))
    side = crop_of(size).size
    assert device.shape == pil.shape == (len(paths), 3, side, side) and device.dtype == torch.float32
    levels = (device - pil).abs() * 255
    assert levels.max() <= 2 and levels.mean() <= 0.05, (levels.max(), levels.mean())
    for name in ("cmyk.jpg", "scene.png"):  # decoded by PIL on both paths
        assert torch.equal(device[paths.index(f"a/{name}")], pil[paths.index(f"a/{name}")])
    gray = device[paths.index("a/gray.jpg")]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_only_huffman_coded_gray_or_colour_jpegs_go_to_the_device(tmp_path: Path) -> None:
    paths = _decoding_folder(tmp_path)
    takes = {p: device_decodes((tmp_path / p).read_bytes()) for p in paths}
    assert [p for p, yes in takes.items() if not yes] == ["a/cmyk.jpg", "a/scene.png"]
    assert not device_decodes(b"") and not device_decodes(b"\xff\xd8\xff\xd9") and not device_decodes(b"GIF89a")


def test_auto_decodes_on_the_device_only_on_cuda_with_jpeg_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.io

    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *args, **kwargs: None)  # a GPU build with nvJPEG
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert decode_device("auto", cuda, ["a/x.png", "b/y.JPEG"]) == cuda
    assert decode_device("auto", cuda, ["a/x.png"]) is None
    assert decode_device("auto", cpu, ["b/y.JPEG"]) is None
    assert decode_device("cpu", cuda, ["b/y.JPEG"]) is None
    assert decode_device("device", cpu, ["a/x.png"]) == cpu


def test_a_device_torchvision_cannot_decode_on_falls_back_to_pil_or_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torchvision.io

    def no_nvjpeg(*args, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_nvjpeg)
    cuda = torch.device("cuda", 0)
    assert decode_device("auto", cuda, ["b/y.JPEG"]) is None
    assert "cannot decode JPEGs on cuda:0" in caplog.text and "nvJPEG" in caplog.text
    with pytest.raises(CafeError, match="activations.decode: torchvision cannot decode JPEGs on cuda:0"):
        decode_device("device", cuda, ["b/y.JPEG"])


def test_a_jpeg_the_device_decoder_refuses_is_decoded_by_pil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torchvision.io

    paths = _decoding_folder(tmp_path / "images")
    refused = (tmp_path / "images" / "a" / "tall.jpg").read_bytes()
    decode = torchvision.io.decode_jpeg

    def picky(data, *args, **kwargs):  # a decoder that refuses one file, and any batch holding it
        batch = data if isinstance(data, list) else [data]
        if any(bytes(one.numpy()) == refused for one in batch):
            raise RuntimeError("unsupported")
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    _, device = _batches(tmp_path / "images", paths, 32, torch.device("cpu"))
    _, pil = _batches(tmp_path / "images", paths, 32, None)
    assert torch.equal(device[paths.index("a/tall.jpg")], pil[paths.index("a/tall.jpg")])
    assert (device - pil).abs().max() * 255 <= 2
    assert "tall.jpg" in caplog.text and "decoding it with PIL" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_an_unreadable_file_on_the_device_path_is_the_same_error_naming_it(tmp_path: Path, damage: str) -> None:
    paths = _decoding_folder(tmp_path / "images")
    broken = tmp_path / "images" / "a" / "large.JPEG"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:2000])
    else:
        broken.unlink()
    for device in (torch.device("cpu"), None):
        with pytest.raises(CafeError, match="large.JPEG: cannot read image"):
            _batches(tmp_path / "images", paths, 32, device)
