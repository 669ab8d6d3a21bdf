"""Content hashes reused while a file is unchanged, and the manifest's per-image size and hash."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
from conftest import make_image_folder
from test_images import run_cli

from cafe.io.hashes import HashCache, md5_file


def test_unchanged_file_is_not_hashed_again(tmp_path: Path) -> None:
    file = tmp_path / "a.bin"
    file.write_bytes(b"x" * 1000)
    with HashCache(tmp_path / "cache.sqlite") as cache:
        first = cache.md5(file)
    with HashCache(tmp_path / "cache.sqlite") as cache:  # a later run: read from the cache file
        assert cache.md5(file) == first == hashlib.md5(b"x" * 1000).hexdigest()
        assert cache.hashed == 0


def test_changed_file_is_hashed_again_even_at_the_same_size(tmp_path: Path) -> None:
    file = tmp_path / "a.bin"
    file.write_bytes(b"x" * 1000)
    with HashCache(tmp_path / "cache.sqlite") as cache:
        first = cache.md5(file)
    stat = file.stat()
    file.write_bytes(b"y" * 1000)  # same size; written in place, then its mtime moved on
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with HashCache(tmp_path / "cache.sqlite") as cache:
        assert cache.md5(file) == md5_file(file) != first
        assert cache.hashed == 1


def test_manifest_records_size_and_hash_and_reuses_them(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", {"a": 4, "b": 4})
    params = json.dumps({"images": str(images), "n_train": 4, "n_analysis": 2, "seed": 0})
    out, cache = tmp_path / "manifest.csv", tmp_path / "hashes.sqlite"
    run_cli(["manifest", "--params", params, "--out", str(out), "--hash-cache", str(cache)])
    manifest = pd.read_csv(out)
    for row in manifest.itertuples():
        assert row.size == (images / row.path).stat().st_size and row.md5 == md5_file(images / row.path)
    kept = out.stat().st_mtime_ns
    with HashCache(cache) as reused:  # what the next manifest run finds: every image already hashed
        reused.many(images / p for p in manifest["path"])
        assert reused.hashed == 0
    run_cli(["manifest", "--params", params, "--out", str(out), "--hash-cache", str(cache)])
    assert out.stat().st_mtime_ns == kept  # identical manifest: file untouched, nothing downstream looks stale


def test_manifest_changes_when_an_image_changes(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", {"a": 4, "b": 4})
    params = json.dumps({"images": str(images), "n_train": 4, "n_analysis": 2, "seed": 0})
    out, cache = tmp_path / "manifest.csv", tmp_path / "hashes.sqlite"
    run_cli(["manifest", "--params", params, "--out", str(out), "--hash-cache", str(cache)])
    before = pd.read_csv(out)
    changed = images / before["path"][0]
    make_image_folder(tmp_path / "other", {"a": 1}, seed=7)
    os.replace(tmp_path / "other" / "a" / "a_000.png", changed)
    run_cli(["manifest", "--params", params, "--out", str(out), "--hash-cache", str(cache)])
    after = pd.read_csv(out)
    assert after["md5"][0] == md5_file(changed) != before["md5"][0]
    assert (after["md5"][1:] == before["md5"][1:]).all()
