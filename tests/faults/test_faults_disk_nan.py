"""Fault suite, fast cases: disk full during an HDF5 write and a checkpoint save, NaN/Inf in activations and a
diverging SAE. Each case says, in its `fault` marker, what goes wrong and what cafe must do (the table)."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from layer_files import write_layer
from lost_files import count_lost, files_lost, hashes

from cafe.activations.config import ActivationsConfig
from cafe.activations.extract import extract
from cafe.backbone import Backbone
from cafe.errors import CafeError
from cafe.io import write_csv
from cafe.io.activations import LayerWriter, layer_path
from cafe.manifest import DataConfig, make_manifest
from cafe.sae import model as sae_model
from cafe.sae.feed import TokenStream
from cafe.sae.model import SAEConfig, load_sae
from cafe.sae.resume import partial_path
from cafe.sae.train import train

SAE = SAEConfig(expansion=2, steps=40, batch_size=64, lr=1e-3, checkpoint_every=20, l1=1e-3, k=4)


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave beside its target."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture()
def tokens_file(tmp_path: Path) -> Path:
    """A complete layer file of 2048 train tokens and 8 analysis images (17 tokens, width 16)."""
    rng = np.random.default_rng(0)
    train_tokens = (rng.standard_normal((2048, 16)) + 2).astype(np.float16)
    analysis = (rng.standard_normal((8, 17, 16)) + 2).astype(np.float16)
    (tmp_path / "acts").mkdir()
    return write_layer(tmp_path / "acts" / "layer1.h5", train_tokens, analysis)


@pytest.mark.fault(
    "disk full (ENOSPC) while extraction writes an activation HDF5 over a previous good one",
    "error names the file and the full disk; no half file; the previous file kept",
)
def test_disk_full_during_hdf5_write_keeps_the_previous_file(
    tiny_backbone: Backbone, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    manifest, out = tmp_path / "manifest.csv", tmp_path / "acts"
    write_csv(manifest, make_manifest(DataConfig(str(image_folder), n_train=6, n_analysis=4)))
    extract(tiny_backbone, manifest, image_folder, [1], out, ActivationsConfig(batch_size=4))
    before = hashes(tmp_path)
    monkeypatch.setattr(LayerWriter, "_put", no_space)
    with pytest.raises(CafeError, match="no space left on device") as err:
        extract(tiny_backbone, manifest, image_folder, [1], out, ActivationsConfig(batch_size=4))
    assert count_lost(record_property, files_lost(before)) == []
    assert str(layer_path(out, 1)) in str(err.value) and "previous file is kept" in str(err.value)
    assert leftovers(out) == []


@pytest.mark.fault(
    "disk full (ENOSPC) halfway through an SAE checkpoint save, a previous checkpoint in place",
    "error names the file and the full disk; no half file; the previous checkpoint kept and loadable",
)
def test_disk_full_during_checkpoint_save_keeps_the_previous_checkpoint(
    tokens_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    out = tmp_path / "sae" / "layer1.pt"
    train(tokens_file, out, out.with_suffix(".json"), SAE, "cpu")
    before = hashes(tmp_path)
    real_save = torch.save

    def half_then_full(obj, handle, *args, **kwargs):  # cafe saves through an open file (byte-stable zips)
        real_save(obj, handle, *args, **kwargs)
        handle.flush()
        handle.truncate(100)  # some bytes made it to disk
        no_space()

    monkeypatch.setattr(sae_model.torch, "save", half_then_full)
    with pytest.raises(CafeError, match="no space left on device") as err:
        train(tokens_file, out, out.with_suffix(".json"), replace(SAE, seed=1), "cpu")
    assert count_lost(record_property, files_lost(before)) == []  # the checkpoint, its metrics and the tokens
    assert str(out) in str(err.value) and leftovers(out.parent) == []
    load_sae(out)


@pytest.mark.fault(
    "NaN/Inf values in an activation file handed to SAE training",
    "stopped before training with the file and the count of bad values; no checkpoint, no training state",
)
def test_nan_activations_stop_sae_training_naming_the_file(tmp_path: Path, record_property) -> None:
    rng = np.random.default_rng(0)
    tokens = (rng.standard_normal((2048, 16)) + 2).astype(np.float16)
    tokens[::7, 3] = np.nan
    path = write_layer(tmp_path / "layer1.h5", tokens, rng.standard_normal((8, 17, 16)).astype(np.float16))
    out, before = tmp_path / "layer1.pt", hashes(tmp_path)
    with pytest.raises(CafeError, match="NaN/Inf values") as err:
        train(path, out, tmp_path / "m.json", SAE, "cpu")
    assert count_lost(record_property, files_lost(before)) == []  # the activation file handed in
    assert str(path) in str(err.value) and "re-run the `activations` step" in str(err.value)
    assert not out.exists() and not partial_path(out).exists()


@pytest.mark.fault(
    "NaN/Inf appearing in the middle of an activation file (past the statistics sample)",
    "stopped at the step whose batch held it, cause named; no checkpoint of NaN weights",
)
def test_nan_in_a_later_batch_stops_at_that_step(
    tokens_file: Path, tmp_path: Path, monkeypatch, record_property
) -> None:
    real = TokenStream.batches

    def poisoned(self, start=0):
        for step, batch in enumerate(real(self, start), start):
            yield batch.clone().fill_(float("nan")) if step == 25 else batch

    monkeypatch.setattr(TokenStream, "batches", poisoned)
    out, before = tmp_path / "layer1.pt", hashes(tmp_path)
    with pytest.raises(CafeError, match="at step 26; the activation batch holds NaN/Inf") as err:
        train(tokens_file, out, tmp_path / "m.json", SAE, "cpu")
    assert count_lost(record_property, files_lost(before)) == []
    assert "No checkpoint was written" in str(err.value)
    assert not out.exists()
    state = torch.load(partial_path(out), weights_only=True)  # the step-20 state, from before the NaN
    assert state["step"] == 20 and all(torch.isfinite(v).all() for v in state["sae"].values())


@pytest.mark.fault(
    "SAE training diverges (learning rate far too high)",
    "stopped with the step and the cause (lower sae.lr); no checkpoint, no NaN training state",
)
def test_diverging_sae_stops_with_step_and_cause(tokens_file: Path, tmp_path: Path, record_property) -> None:
    out, before = tmp_path / "layer1.pt", hashes(tmp_path)
    with pytest.raises(CafeError, match=r"at step \d+|after step \d+") as err:
        train(tokens_file, out, tmp_path / "m.json", replace(SAE, lr=1e30), "cpu")
    assert count_lost(record_property, files_lost(before)) == []
    assert "training diverged: lower sae.lr (now 1e+30)" in str(err.value)
    assert not out.exists()
    if partial_path(out).exists():
        state = torch.load(partial_path(out), weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["sae"].values())
