"""Resumable Matryoshka SAE training on tokens made of known sparse atoms, streamed from disk or resident on the
training device (the same batches either way)."""

from __future__ import annotations

import json
import logging
import tracemalloc
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from layer_files import write_layer

from cafe.errors import CafeError
from cafe.sae import SAEConfig, load_sae
from cafe.sae.command import summarise
from cafe.sae.evaluate import input_stats
from cafe.sae.feed import ResidentStream, TokenStream, available_ram, open_stream
from cafe.sae.resume import partial_path, run_key
from cafe.sae.train import RUN_KEYS, Trainer, train

CONFIG = SAEConfig(expansion=8, steps=300, batch_size=256, lr=3e-3, checkpoint_every=100, l1=3e-3, k=4)


def sparse_tokens(n: int, seed: int, d: int = 16, n_atoms: int = 48) -> np.ndarray:
    """Tokens = offset + sparse non-negative mix of fixed unit atoms, atom 0 the most frequent."""
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    codes = (rng.random((n, n_atoms)) < 0.25 * np.arange(1, n_atoms + 1) ** -0.6) * rng.exponential(1, (n, n_atoms))
    return (codes @ atoms + 3.0 + 0.02 * rng.standard_normal((n, d))).astype(np.float16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def layer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8192 train tokens and 64 held-out analysis images of 17 tokens, width 16."""
    path = tmp_path_factory.mktemp("acts") / "layer2.h5"
    return write_layer(path, sparse_tokens(8192, 1), sparse_tokens(64 * 17, 2).reshape(64, 17, 16), layer=2)


def explained_variance(sae: torch.nn.Module, h: torch.Tensor, keep: slice) -> float:
    """Explained variance of s*h when only the latents in `keep` decode."""
    z = sae.encode(h)
    z_kept = torch.zeros_like(z)
    z_kept[:, keep] = z[:, keep]
    x = h * sae.scale
    return 1 - ((x - sae.decode(z_kept)) ** 2).sum().item() / ((x - x.mean(0)) ** 2).sum().item()


def held_out(n: int = 2048) -> torch.Tensor:
    return torch.from_numpy(sparse_tokens(n, 3)).float()


@pytest.fixture(scope="module")
def trained(layer_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The metrics and checkpoint path of one ReLU SAE trained with CONFIG."""
    out = tmp_path_factory.mktemp("sae") / "layer2.pt"
    return train(layer_file, out, out.with_suffix(".json"), CONFIG, "cpu"), out


def test_training_reduces_loss_and_keeps_unit_decoder_columns(layer_file: Path, tmp_path: Path) -> None:
    stream = TokenStream(layer_file, CONFIG.batch_size, CONFIG.seed)
    trainer = Trainer(
        CONFIG,
        stream,
        input_stats(stream.sample(4096)),
        torch.device("cpu"),
        tmp_path / "x.partial",
        run_key(CONFIG, "test"),
    )
    losses = trainer.run()
    assert len(losses) == 300
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:5])
    norms = trainer.sae.W_d.norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_train_writes_checkpoint_and_metrics(trained: tuple[dict, Path]) -> None:
    metrics, out = trained
    assert json.loads(out.with_suffix(".json").read_text()) == metrics
    assert metrics["layer"] == 2 and metrics["steps"] == 300 and metrics["tokens_seen"] == 300 * 256
    assert metrics["explained_variance"] > 0.5 and 0 < metrics["l0"] < 64
    assert 0 <= metrics["dead_fraction"] < 0.5 and metrics["tokens_per_s"] > 0 and metrics["eval_tokens"] == 64 * 17
    sae, meta = load_sae(out)
    assert (sae.d_in, sae.n_latents) == (16, 128)
    assert meta["layer"] == 2 and meta["backbone"] == "synthetic" and len(meta["activations_hash"]) == 16
    assert meta["config"]["l1"] == CONFIG.l1 and meta["normalisation"]["input_scale"] == pytest.approx(sae.scale.item())
    assert meta["metrics"] == {k: v for k, v in metrics.items() if k not in RUN_KEYS} and len(meta["fingerprint"]) == 12
    x = held_out() * sae.scale
    assert (x**2).sum(1).mean().item() == pytest.approx(16, rel=0.05)  # E||s h||^2 = d_in
    assert not partial_path(out).exists()


def test_summary_collects_layers_in_order_and_names_a_bad_file(trained: tuple[dict, Path], tmp_path: Path) -> None:
    metrics, out = trained
    other = tmp_path / "layer10.json"
    other.write_text(json.dumps({**metrics, "layer": 10}))
    summary = tmp_path / "sae.json"
    summarise([other, out.with_suffix(".json")], summary)
    written = json.loads(summary.read_text())
    assert set(written) == {"layer2", "layer10"}
    assert written["layer2"]["explained_variance"] == metrics["explained_variance"]
    broken = tmp_path / "layer3.json"
    broken.write_text("{not json")
    with pytest.raises(CafeError, match="layer3.json"):
        summarise([broken], tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_first_matryoshka_prefix_alone_reconstructs(trained: tuple[dict, Path]) -> None:
    sae, _ = load_sae(trained[1])
    prefix = CONFIG.prefix_sizes(sae.n_latents)[0]
    first, last = (
        explained_variance(sae, held_out(), slice(0, prefix)),
        explained_variance(sae, held_out(), slice(-prefix, None)),
    )
    assert prefix == 8
    assert first > 0.2 and first > last + 0.1


def test_batchtopk_keeps_about_k_latents_per_token(layer_file: Path, tmp_path: Path) -> None:
    metrics = train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", replace(CONFIG, activation="batchtopk"), "cpu")
    sae, _ = load_sae(tmp_path / "s.pt")
    assert sae.threshold.item() > 0
    assert 0.6 * CONFIG.k < metrics["l0"] < 1.6 * CONFIG.k
    assert metrics["explained_variance"] > 0.2


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int):
    """Make training stop (as if killed) when it reaches `step`; returns the real step function."""
    real_step = Trainer.train_step

    def step_or_stop(self: Trainer, h: torch.Tensor) -> float:
        if self.step == step:
            raise KeyboardInterrupt
        return real_step(self, h)

    monkeypatch.setattr(Trainer, "train_step", step_or_stop)
    return real_step


def test_interrupted_training_resumes_from_the_saved_step(
    layer_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = replace(CONFIG, steps=120, checkpoint_every=50)
    reference = train(layer_file, tmp_path / "ref.pt", tmp_path / "ref.json", config, "cpu")
    real_step = interrupt_at(monkeypatch, 70)
    with pytest.raises(KeyboardInterrupt):
        train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", config, "cpu")
    assert partial_path(tmp_path / "s.pt").is_file() and not (tmp_path / "s.pt").exists()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", config, "cpu")
    assert resumed["resumed_from"] == 50 and reference["resumed_from"] == 0
    assert resumed["steps"] == reference["steps"] == 120 and resumed["tokens_seen"] == reference["tokens_seen"]
    assert resumed["loss"] == reference["loss"]  # the final loss window spans the resume
    (sae, _), (ref, _) = load_sae(tmp_path / "s.pt"), load_sae(tmp_path / "ref.pt")
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], value, msg=name)
    assert (tmp_path / "s.pt").read_bytes() == (tmp_path / "ref.pt").read_bytes()  # resumed_from: the metrics file's
    assert not partial_path(tmp_path / "s.pt").exists()


def test_state_of_another_config_or_damaged_is_not_resumed(
    layer_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = replace(CONFIG, steps=40, checkpoint_every=20)
    real_step = interrupt_at(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt):
        train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", config, "cpu")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert (
        train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", replace(config, lr=1e-3), "cpu")["resumed_from"] == 0
    )
    partial_path(tmp_path / "s.pt").write_bytes(b"half a file")
    assert train(layer_file, tmp_path / "s.pt", tmp_path / "s.json", config, "cpu")["resumed_from"] == 0


def generated_configs(n: int = 4, seed: int = 0) -> list[SAEConfig]:
    """Small configs drawn at random: seed, width, nonlinearity, batch size, steps and state saves vary."""
    rng = np.random.default_rng(seed)
    return [
        replace(
            CONFIG,
            seed=int(rng.integers(1000)),
            expansion=int(rng.choice([1, 2, 4])),
            activation=str(rng.choice(["relu", "batchtopk"])),
            batch_size=int(rng.choice([32, 64, 128])),
            steps=(steps := int(rng.integers(5, 30))),
            checkpoint_every=int(rng.integers(2, steps + 1)),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("config", generated_configs(), ids=lambda c: f"{c.activation}-x{c.expansion}-seed{c.seed}")
def test_training_twice_with_the_same_inputs_and_params_writes_the_same_checkpoint_bytes(
    layer_file: Path, tmp_path: Path, config: SAEConfig
) -> None:
    """What a run measures of itself (tokens/s, the feed free memory chose) goes to the metrics file: the checkpoint,
    which DVC and every provenance record downstream hash, is byte for byte the same on a rerun, in either feed."""
    runs = {feed: (tmp_path / feed / "layer2.pt", tmp_path / feed / "layer2.json") for feed in ("never", "always")}
    for feed, (out, metrics) in runs.items():
        train(layer_file, out, metrics, replace(config, resident=feed), "cpu")
    (first, first_metrics), (second, second_metrics) = runs.values()
    assert first.read_bytes() == second.read_bytes()
    measured = [json.loads(path.read_text()) for path in (first_metrics, second_metrics)]
    assert all(m["tokens_per_s"] > 0 for m in measured) and [m["feed"] for m in measured] == ["stream", "resident"]
    assert not set(RUN_KEYS) & set(load_sae(first)[1]["metrics"])


def test_read_ahead_keeps_the_order_raises_the_readers_error_and_stops_when_closed() -> None:
    import threading

    from cafe.sae.feed import read_ahead

    cpu = torch.device("cpu")
    assert [int(b) for b in read_ahead((torch.tensor(i) for i in range(10)), cpu, depth=3)] == list(range(10))

    def broken():
        yield torch.tensor(0)
        raise OSError("layer3.h5: truncated chunk")

    ahead = read_ahead(broken(), cpu)
    assert int(next(ahead)) == 0
    with pytest.raises(OSError, match="truncated chunk"):
        next(ahead)

    endless = read_ahead((torch.tensor(i) for i in iter(int, 1)), cpu, depth=2)
    next(endless)
    endless.close()
    assert not any(t.name == "sae-read-ahead" and t.is_alive() for t in threading.enumerate())


@pytest.fixture()
def chunked_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """3000 train tokens of width 16 in HDF5 chunks of 64 rows (47 chunks: windows of several chunks shuffle)."""
    monkeypatch.setattr("cafe.io.activations.CHUNK_BYTES", 64 * 2 * 16)
    return write_layer(tmp_path / "layer2.h5", sparse_tokens(3000, 1), sparse_tokens(4 * 17, 2).reshape(4, 17, 16), 2)


def test_resident_feed_yields_the_streamed_batches_over_epochs_and_from_any_start(chunked_file: Path) -> None:
    streamed = TokenStream(chunked_file, batch_size=50, seed=3, buffer_tokens=256)
    resident = ResidentStream(chunked_file, batch_size=50, device=torch.device("cpu"), seed=3, buffer_tokens=256)
    assert resident.resident and not streamed.resident and resident.tokens.dtype == torch.float16
    per_epoch = sum(1 for _ in streamed.epoch(0))
    n = 2 * per_epoch + 7  # into a third epoch, short last batches of every window included
    expected = list(islice(streamed.batches(), n))
    got = list(islice(resident.batches(), n))
    assert len({len(b) for b in expected}) > 1
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert b.dtype == torch.float32 and torch.equal(a, b), i
    for start in (37, per_epoch, per_epoch + 1):
        for i, b in enumerate(islice(resident.batches(start=start), 12)):
            assert torch.equal(b, expected[start + i]), (start, i)


def test_resident_load_reads_the_file_a_window_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cafe.io.activations.CHUNK_BYTES", 1 << 14)
    train = np.random.default_rng(0).standard_normal((200_000, 16)).astype(np.float16)  # 6.4 MB
    path = write_layer(tmp_path / "big.h5", train, np.zeros((1, 5, 16), np.float16))
    tracemalloc.start()
    resident = ResidentStream(path, batch_size=256, device=torch.device("cpu"), buffer_tokens=4096)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert torch.equal(resident.tokens, torch.from_numpy(train))
    assert peak < 1_000_000  # host buffers of one 128 KB window at a time, never the file nor a float32 copy


def test_a_trained_sae_is_the_same_resident_or_streamed(chunked_file: Path, tmp_path: Path) -> None:
    config = replace(CONFIG, steps=60, batch_size=128, checkpoint_every=1000)  # 7680 tokens: 2.6 epochs
    metrics, saes = {}, {}
    for mode in ("always", "never"):
        out = tmp_path / f"{mode}.pt"
        metrics[mode] = train(chunked_file, out, out.with_suffix(".json"), replace(config, resident=mode), "cpu")
        saes[mode] = load_sae(out)
    assert metrics["always"]["feed"] == "resident" and metrics["never"]["feed"] == "stream"
    assert metrics["always"]["loss"] == metrics["never"]["loss"]
    (resident, meta), (streamed, streamed_meta) = saes["always"], saes["never"]
    for name, value in streamed.state_dict().items():
        assert torch.equal(resident.state_dict()[name], value), name
    assert meta["fingerprint"] == streamed_meta["fingerprint"] and "resident" not in meta["config"]


def test_a_run_streamed_until_interrupted_resumes_resident(
    chunked_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed = replace(CONFIG, steps=60, batch_size=128, checkpoint_every=25, resident="never")
    reference = train(chunked_file, tmp_path / "ref.pt", tmp_path / "ref.json", streamed, "cpu")
    real_step = interrupt_at(monkeypatch, 40)
    with pytest.raises(KeyboardInterrupt):
        train(chunked_file, tmp_path / "s.pt", tmp_path / "s.json", streamed, "cpu")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = train(chunked_file, tmp_path / "s.pt", tmp_path / "s.json", replace(streamed, resident="always"), "cpu")
    assert resumed["resumed_from"] == 25 and resumed["feed"] == "resident" and resumed["loss"] == reference["loss"]
    (sae, _), (ref, _) = load_sae(tmp_path / "s.pt"), load_sae(tmp_path / "ref.pt")
    for name, value in ref.state_dict().items():
        assert torch.equal(sae.state_dict()[name], value), name


def test_auto_keeps_the_tokens_resident_only_within_its_share_of_free_memory(
    chunked_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpu, nbytes = torch.device("cpu"), 3000 * 16 * 2
    with caplog.at_level(logging.INFO, logger="cafe.sae.feed"):
        assert not open_stream(chunked_file, 64, 0, cpu, "auto", free=nbytes).resident  # 100 % of free memory
    assert "streamed from disk" in caplog.text and "100% > 75%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cafe.sae.feed"):
        assert open_stream(chunked_file, 64, 0, cpu, "auto", free=2 * nbytes).resident
    assert "loaded onto cpu" in caplog.text and "50% <= 75%" in caplog.text
    assert not open_stream(chunked_file, 64, 0, cpu, "never", free=1 << 40).resident
    assert open_stream(chunked_file, 64, 0, cpu, "always", free=nbytes).resident  # all of it: the user vouches


def test_always_without_room_for_the_tokens_names_the_file_and_the_numbers(chunked_file: Path) -> None:
    numbers = r"always, but its train tokens take 9\.6e-05 GB in float16, 9\.6e-05 GB free on cpu"
    with pytest.raises(CafeError, match=numbers) as err:
        open_stream(chunked_file, 64, 0, torch.device("cpu"), "always", free=3000 * 16 * 2 - 1)
    assert chunked_file.name in str(err.value) and "never" in str(err.value)
    with pytest.raises(CafeError, match="sae.resident must be one of"):
        replace(CONFIG, resident="gpu")


def test_available_ram_reads_meminfo_and_falls_back_to_free_pages(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:     1 kB\nMemAvailable:    2048 kB\n")
    assert available_ram(meminfo) == 2048 * 1024
    assert available_ram(tmp_path / "absent") > 0
