"""One-pass extraction of every requested layer, the layer-file layout and guards, and the token stream."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_image_folder
from layer_files import write_layer

from cafe.activations.config import ActivationsConfig
from cafe.activations.extract import extract
from cafe.backbone import Backbone
from cafe.errors import CafeError
from cafe.images import load_images
from cafe.io import file_hash, write_csv
from cafe.io.activations import iter_analysis, layer_path, open_layer
from cafe.io.manifest import read_manifest
from cafe.manifest import DataConfig, make_manifest
from cafe.sae.feed import TokenStream


@pytest.fixture()
def manifest(image_folder: Path, tmp_path: Path) -> Path:
    """6 train + 4 analysis images of the tiny image folder."""
    path = tmp_path / "manifest.csv"
    write_csv(path, make_manifest(DataConfig(str(image_folder), n_train=6, n_analysis=4)))
    return path


def run(backbone: Backbone, manifest: Path, images: Path, out: Path, layers: list[int], **config) -> list[Path]:
    return extract(backbone, manifest, images, layers, out, ActivationsConfig(batch_size=4, **config))


def test_one_pass_matches_separate_truncated_forwards(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    paths = run(tiny_backbone, manifest, image_folder, tmp_path / "acts", [3, 1])
    assert paths == [layer_path(tmp_path / "acts", 1), layer_path(tmp_path / "acts", 3)]
    train, analysis = read_manifest(manifest, "train"), read_manifest(manifest, "analysis")
    for layer, path in zip([1, 3], paths):
        with open_layer(path, width=32) as handle:
            with torch.no_grad():
                want_train = (
                    tiny_backbone.forward_to(
                        tiny_backbone.normalize(load_images(image_folder, train["path"].tolist(), 32)), layer
                    )
                    .half()
                    .numpy()
                )
                want_analysis = (
                    tiny_backbone.forward_to(
                        tiny_backbone.normalize(load_images(image_folder, analysis["path"].tolist(), 32)), layer
                    )
                    .half()
                    .numpy()
                )
            assert handle["train"].dtype == np.float16 and handle["train"].shape == (6 * 17, 32)
            np.testing.assert_allclose(handle["train"][:], want_train.reshape(-1, 32), atol=2e-3)
            np.testing.assert_allclose(handle["analysis"][:], want_analysis, atol=2e-3)
            assert handle["train_image"][:].tolist() == np.repeat(train["index"], 17).tolist()
            assert handle["train_token"][:].tolist() == list(range(17)) * 6
            assert handle["analysis_image"][:].tolist() == analysis["index"].tolist()
            attrs = dict(handle.attrs)
            assert attrs["layer"] == layer and attrs["grid"] == 4 and attrs["n_tokens"] == 17
            assert attrs["width"] == 32 and attrs["patch_size"] == 8 and attrs["image_size"] == 32
            assert attrs["backbone"] == "cafe-tiny-vit" and attrs["manifest_hash"] == file_hash(manifest)
            assert attrs["complete"] == 1


def test_extraction_runs_no_block_deeper_than_the_deepest_layer(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    blocks = tiny_backbone.visual.transformer.resblocks
    calls = [0] * len(blocks)
    hooks = [
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(blocks)
    ]
    try:
        run(tiny_backbone, manifest, image_folder, tmp_path / "acts", [1, 2])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [3, 3, 0]  # 3 batches of 4 (6 train, 4 analysis images), each block once per batch


def test_tokens_per_image_keeps_a_seeded_subsample(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    run(tiny_backbone, manifest, image_folder, tmp_path / "a", [2], tokens_per_image=5)
    run(tiny_backbone, manifest, image_folder, tmp_path / "b", [2], tokens_per_image=5)
    full = run(tiny_backbone, manifest, image_folder, tmp_path / "full", [2])[0]
    with (
        open_layer(tmp_path / "a" / "layer2.h5") as a,
        open_layer(tmp_path / "b" / "layer2.h5") as b,
        open_layer(full) as f,
    ):
        assert a["train"].shape == (30, 32) and a.attrs["tokens_per_image"] == 5
        np.testing.assert_array_equal(a["train_token"][:], b["train_token"][:])
        tokens = a["train_token"][:].reshape(6, 5)
        assert all(len(set(row)) == 5 for row in tokens) and len({tuple(r) for r in tokens}) > 1
        rows = np.arange(6)[:, None] * 17 + tokens
        np.testing.assert_array_equal(a["train"][:], f["train"][:][rows.reshape(-1)])
        np.testing.assert_array_equal(a["analysis"][:], f["analysis"][:])


def test_failed_extraction_leaves_no_files(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    broken = image_folder / read_manifest(manifest, "analysis")["path"].iloc[-1]
    broken.write_bytes(b"not a png")
    with pytest.raises(CafeError, match=broken.name):
        run(tiny_backbone, manifest, image_folder, tmp_path / "acts", [1, 2])
    assert list((tmp_path / "acts").iterdir()) == []


def test_too_many_tokens_per_image_is_an_error(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(CafeError, match="tokens_per_image = 18"):
        run(tiny_backbone, manifest, image_folder, tmp_path / "acts", [1], tokens_per_image=18)


@pytest.fixture()
def counted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """1000 train tokens whose first two columns spell the row number; chunks of 64 rows."""
    monkeypatch.setattr("cafe.io.activations.CHUNK_BYTES", 64 * 2 * 8)
    rows = np.arange(1000)
    train = np.zeros((1000, 8), np.float16)
    train[:, 0], train[:, 1] = rows // 100, rows % 100
    return write_layer(tmp_path / "layer1.h5", train, np.zeros((2, 5, 8), np.float16))


def row_ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] * 100 + batch[:, 1]).long().tolist()


def test_stream_yields_every_token_once_per_epoch_in_shuffled_order(counted_file: Path) -> None:
    stream = TokenStream(counted_file, batch_size=50, seed=1, buffer_tokens=256)
    assert stream.chunk_rows == 64 and stream.n_tokens == 1000
    for epoch in (0, 1):
        seen = [i for batch in stream.epoch(epoch) for i in row_ids(batch)]
        assert sorted(seen) == list(range(1000))
        assert seen != sorted(seen)
    epochs = [[i for b in stream.epoch(e) for i in row_ids(b)] for e in (0, 1)]
    assert epochs[0] != epochs[1]


def test_stream_resumes_at_any_batch(counted_file: Path) -> None:
    stream = TokenStream(counted_file, batch_size=50, seed=0, buffer_tokens=256)
    batches = stream.batches()
    first = [row_ids(next(batches)) for _ in range(60)]  # more than one epoch
    resumed = stream.batches(start=37)
    assert [row_ids(next(resumed)) for _ in range(23)] == first[37:]


def test_stream_memory_stays_within_its_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cafe.io.activations.CHUNK_BYTES", 1 << 14)
    train = np.random.default_rng(0).standard_normal((200_000, 16)).astype(np.float16)  # 6.4 MB on disk
    path = write_layer(tmp_path / "big.h5", train, np.zeros((1, 5, 16), np.float16))
    stream = TokenStream(path, batch_size=256, buffer_tokens=4096)  # a 128 KB window
    tracemalloc.start()
    n = sum(len(batch) for batch in stream.epoch(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 200_000
    assert peak < 1_000_000  # numpy buffers are traced; the file is 6.4 MB


def test_corrupt_truncated_incomplete_or_mismatched_files_are_named(counted_file: Path, tmp_path: Path) -> None:
    (tmp_path / "garbage.h5").write_bytes(b"\x89HDF\r\n" + bytes(500))
    (tmp_path / "cut.h5").write_bytes(counted_file.read_bytes()[:3000])
    with h5py.File(counted_file, "r") as src, h5py.File(tmp_path / "unfinished.h5", "w") as dst:
        for name in src:
            src.copy(name, dst)
    cases = {
        "garbage.h5": "not a readable HDF5",
        "cut.h5": "not a readable HDF5",
        "unfinished.h5": "incomplete",
        "missing.h5": "not found",
    }
    for name, message in cases.items():
        with pytest.raises(CafeError, match=message) as err:
            TokenStream(tmp_path / name, batch_size=8)
        assert name in str(err.value)
    with pytest.raises(CafeError, match="width 8, but 32") as err:
        TokenStream(counted_file, batch_size=8, width=32)
    assert counted_file.name in str(err.value)


def test_a_capped_analysis_read_spreads_over_all_images_and_a_full_read_keeps_order(tmp_path: Path) -> None:
    """Manifests are sorted by class folder: a capped read (SAE evaluation) must not see only the first classes."""
    analysis = np.repeat(np.arange(40, dtype=np.float16), 5 * 4).reshape(40, 5, 4)  # image i holds the value i
    path = write_layer(tmp_path / "layer1.h5", np.zeros((8, 4), np.float16), analysis)
    capped = [(first, block[:, 0, 0]) for first, block in iter_analysis(path, block_tokens=20, max_tokens=50)]
    seen = np.concatenate([values for _, values in capped])
    assert len(seen) == 10 and seen.min() == 0 and seen.max() == 39 and (np.diff(seen) > 0).all()
    assert [first for first, _ in capped] == [int(values[0]) for _, values in capped]
    full = np.concatenate([block[:, 0, 0] for _, block in iter_analysis(path, block_tokens=20)])
    np.testing.assert_array_equal(full, np.arange(40))


def test_skipped_images_are_counted_in_every_layer_file(manifest: Path, image_folder: Path, tmp_path: Path) -> None:
    from cafe import cli

    skipped = tmp_path / "skipped_images.csv"
    skipped.write_text("path,class,reason\na/x.JPEG,a,empty file (0 bytes)\nb/y.JPEG,b,truncated\n")
    backbone = '{"model": "cafe-tiny-vit", "seed": 0, "device": "cpu"}'
    argv = ["activations", "--params", '{"batch_size": 4}', "--backbone", backbone, "--manifest", str(manifest)]
    argv += ["--skipped", str(skipped), "--images-root", str(image_folder), "--layers", "1", "3"]
    assert cli.main([*argv, "--out-dir", str(tmp_path / "acts")]) == 0
    for layer in (1, 3):
        with open_layer(layer_path(tmp_path / "acts", layer)) as handle:
            assert handle.attrs["skipped_images"] == 2


def test_decoding_on_the_device_gives_the_activations_of_pil_decoding(tiny_backbone: Backbone, tmp_path: Path) -> None:
    """decode: device, run on the CPU. Its images are within 1 level of PIL's (measured here: max 1, mean 0.005
    levels; tests/test_images.py); through the tiny tower (values up to about ±4) that moved the stored activations
    by at most 0.0135 and 0.0014 on average (measured), a few float16 steps (0.002 at that scale). Bounds a bit
    above: 0.02 per value, 0.002 on average; an image off by a pixel or a channel moves them by whole units."""
    images = make_image_folder(tmp_path / "images", {"a": 6, "b": 4}, size=45, ext=".jpg")
    manifest = tmp_path / "manifest.csv"
    write_csv(manifest, make_manifest(DataConfig(str(images), n_train=6, n_analysis=4)))
    pil = run(tiny_backbone, manifest, images, tmp_path / "pil", [1, 3], decode="cpu")
    device = run(tiny_backbone, manifest, images, tmp_path / "device", [1, 3], decode="device")
    for want, got in zip(pil, device):
        with open_layer(want) as a, open_layer(got) as b:
            for name in ("train", "analysis"):
                difference = np.abs(b[name][:].astype(np.float32) - a[name][:].astype(np.float32))
                assert difference.max() <= 0.02 and difference.mean() <= 0.002, (name, difference.max())
            np.testing.assert_array_equal(b["analysis_image"][:], a["analysis_image"][:])


def test_background_writes_give_the_same_bytes_as_writes_on_the_forward_thread(
    tiny_backbone: Backbone, manifest: Path, image_folder: Path, tmp_path: Path
) -> None:
    written = {
        queue: run(tiny_backbone, manifest, image_folder, tmp_path / f"q{queue}", [1, 3], write_queue=queue)
        for queue in (0, 1, 3)
    }
    for layer_files in zip(*written.values()):
        assert len({path.read_bytes() for path in layer_files}) == 1, layer_files


@pytest.mark.parametrize("write_queue", [0, 1])
def test_an_error_on_the_writer_thread_stops_extraction_with_its_message_and_no_files(
    tiny_backbone: Backbone,
    manifest: Path,
    image_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_queue: int,
) -> None:
    forward = tiny_backbone.forward_layers

    def overflowing(pixels: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        return {layer: h * 1e6 for layer, h in forward(pixels, layers).items()}  # beyond float16's 65504

    monkeypatch.setattr(tiny_backbone, "forward_layers", overflowing)
    with pytest.raises(CafeError, match=r"layer 1 has values beyond float16 range \(max \|h\| = \d"):
        run(tiny_backbone, manifest, image_folder, tmp_path / "acts", [1, 2], write_queue=write_queue)
    assert list((tmp_path / "acts").iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "activations writer"]
