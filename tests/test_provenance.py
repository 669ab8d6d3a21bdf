"""Provenance records and `cafe verify` / `cafe sync` on tiny hand-made projects (no Snakemake or DVC run): a real
cafe command writes the records; every kind of disagreement (bytes, params, code, inputs, an upstream product)
is found and named; sync removes what is not current and writes nothing while a run holds the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_utils import env

from cafe import provenance, workspace_sync
from cafe.cli import main
from cafe.errors import CafeError
from cafe.io.hashes import HashCache
from cafe.provenance import SUFFIX, content_md5, differences, record_path, verify

CONFIG = {"annotation": {"threshold": 0.5, "n_features": 4}, "layers": [1, 3], "compute": {}}


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """results/sae/layer{1,3}.json -> `cafe sae-summary` -> results/metrics/sae.json, records written by the CLI."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/sae").mkdir(parents=True)
    for layer in (1, 3):
        metrics = {
            "layer": layer,
            "explained_variance": 0.5,
            "l0": 3.0,
            "dead_fraction": 0.0,
            "tokens_per_s": 1.0,
            "steps": 9,
        }
        (tmp_path / f"results/sae/layer{layer}.json").write_text(json.dumps(metrics))
    inputs = ["results/sae/layer1.json", "results/sae/layer3.json"]
    assert main(["sae-summary", *inputs, "--out", "results/metrics/sae.json"]) == 0
    return tmp_path


def write_record(root: Path, product: str, **fields: object) -> None:
    """A hand-made record of `product` as it is now (params, inputs and code given in `fields`)."""
    with HashCache(root / "h.sqlite") as hashes:
        md5 = content_md5(root / product, hashes) if (root / product).exists() else "gone"
    record = {"product": product, "md5": md5, "step": "x", "params": {}, "inputs": {}, "code": {}, **fields}
    record_path(root / product).write_text(json.dumps(record))


def test_a_command_writes_a_record_of_params_inputs_code_and_product(project: Path) -> None:
    record = json.loads((project / f"results/metrics/sae.json{SUFFIX}").read_text())
    assert record["step"] == "sae-summary" and record["product"] == "results/metrics/sae.json"
    assert set(record["inputs"]) == {"results/sae/layer1.json", "results/sae/layer3.json"}
    assert "cafe/sae/command.py" in record["code"] and "cafe/provenance.py" not in record["code"]
    assert verify(project, CONFIG) == {"results/metrics/sae.json": []}


def test_changed_bytes_input_and_code_are_each_named(project: Path) -> None:
    (project / "results/sae/layer3.json").write_text('{"layer": 3}')
    assert verify(project, CONFIG)["results/metrics/sae.json"] == ["input changed: results/sae/layer3.json"]
    record_file = project / f"results/metrics/sae.json{SUFFIX}"
    record = json.loads(record_file.read_text())
    record["code"]["cafe/sae/command.py"] = "0" * 32  # the code as it was when the product was made
    record["md5"] = "1" * 32
    record_file.write_text(json.dumps(record))
    reasons = verify(project, CONFIG)["results/metrics/sae.json"]
    assert reasons[0].startswith("bytes differ") and "code changed: cafe/sae/command.py" in reasons


def test_params_are_compared_by_key_including_a_subset_of_a_section(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results/fig5.csv").write_text("x")
    write_record(tmp_path, "results/fig5.csv", params={"annotation": {"threshold": 0.6}, "layers": [1, 3]})
    assert verify(tmp_path, CONFIG)["results/fig5.csv"] == ["params changed: annotation.threshold was 0.6, is 0.5"]
    assert verify(tmp_path, {**CONFIG, "annotation": {"threshold": 0.6, "n_features": 9}}) == {"results/fig5.csv": []}
    assert list(differences({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}, "s")) == ["params changed: s.a.b was 1, is 2"]


def test_a_product_is_not_current_when_an_upstream_one_is_not_and_an_absent_one_stands_by_its_record(
    tmp_path: Path,
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results/mid.h5").write_text("mid")
    (tmp_path / "results/out.csv").write_text("out")
    write_record(tmp_path, "results/mid.h5", params={"annotation": {"threshold": 0.5}})
    with HashCache(tmp_path / "h.sqlite") as hashes:
        mid = content_md5(tmp_path / "results/mid.h5", hashes)
    write_record(tmp_path, "results/out.csv", inputs={"results/mid.h5": mid})
    (tmp_path / "results/mid.h5").unlink()  # not kept by DVC: its record stands for it
    assert verify(tmp_path, CONFIG) == {"results/mid.h5": [], "results/out.csv": []}
    found = verify(tmp_path, {**CONFIG, "annotation": {"threshold": 0.7}})
    assert found["results/out.csv"] == ["input not current: results/mid.h5"]


def test_directory_hash_ignores_records_and_snakemake_time_markers(tmp_path: Path) -> None:
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/sub/a.png").write_text("a")
    with HashCache(tmp_path / "h.sqlite") as hashes:
        before = content_md5(tmp_path / "d", hashes)
        (tmp_path / "d/.snakemake_timestamp").touch()
        (tmp_path / f"d/sub/a.png{SUFFIX}").write_text("{}")
        assert content_md5(tmp_path / "d", hashes) == before
        (tmp_path / "d/sub/b.png").write_text("b")
        assert content_md5(tmp_path / "d", hashes) != before


def test_verify_cli_exits_1_and_lists_what_disagrees(project: Path, capsys: pytest.CaptureFixture) -> None:
    (project / "workflow/schemas").mkdir(parents=True)
    schema = Path(__file__).resolve().parents[1] / "workflow/schemas/params.schema.yaml"
    (project / "workflow/schemas/params.schema.yaml").write_text(schema.read_text())
    (project / "params.yaml").write_text("layers: [1]\n")
    assert main(["verify"]) == 0
    assert "all 1 products current" in capsys.readouterr().out
    (project / "results/sae/layer1.json").write_text("{}")
    assert main(["verify", "results/metrics"]) == 1
    assert "NOT CURRENT results/metrics/sae.json" in capsys.readouterr().out


def sync_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A stale and a current product, neither made here; returns where the `snakemake --touch` calls go."""
    (tmp_path / "results").mkdir()
    for name in ("stale.csv", "ok.csv"):
        (tmp_path / f"results/{name}").write_text(name)
    write_record(tmp_path, "results/stale.csv", params={"annotation": {"threshold": 0.9}})
    write_record(tmp_path, "results/ok.csv", params={"annotation": {"threshold": 0.5}})
    monkeypatch.setattr(workspace_sync, "load_config", lambda *args: CONFIG)
    calls: list[list[str]] = []
    monkeypatch.setattr(workspace_sync, "snakemake_touch", lambda root, products, extra: calls.append(products))
    monkeypatch.setattr(workspace_sync, "ensure_unlocked", lambda root, extra: None)  # no Snakefile here
    return calls


def test_sync_removes_what_is_not_current_and_marks_restored_current_products(tmp_path, monkeypatch) -> None:
    calls = sync_project(tmp_path, monkeypatch)
    done = workspace_sync.sync(tmp_path)
    assert done == {"removed": ["results/stale.csv"], "marked": ["results/ok.csv"]} and calls == [["results/ok.csv"]]
    assert not (tmp_path / "results/stale.csv").exists() and (tmp_path / "results/ok.csv").exists()
    assert workspace_sync.sync(tmp_path) == {"removed": [], "marked": []}  # made here now: nothing to do
    assert len(calls) == 1


HOLDER = """
rule all:
    input: "held.txt"

rule hold:
    output: "held.txt"
    shell: "touch started && sleep 300 && touch {output}"
"""


@pytest.fixture()
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """A real Snakemake run holding the folder's lock (its job sleeps); stopped after the test."""
    (tmp_path / "Snakefile").write_text(HOLDER)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    holder = subprocess.Popen(["snakemake", "--cores", "1"], cwd=tmp_path, env=env(), start_new_session=True, **quiet)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():  # the job runs: Snakemake took the lock before it
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.2)
        yield tmp_path
    finally:  # the run and its sleeping job: the process group this test started
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)


def test_sync_writes_nothing_while_a_run_holds_the_lock(held_lock, monkeypatch) -> None:
    """Snakemake's own answer (a dry run) stops the sync before its first write; `--touch` refuses too."""
    monkeypatch.setenv("PATH", env()["PATH"])
    touch, probe = workspace_sync.snakemake_touch, workspace_sync.ensure_unlocked
    calls = sync_project(held_lock, monkeypatch)
    monkeypatch.setattr(workspace_sync, "ensure_unlocked", probe)  # Snakemake's own answer, in a real folder
    before = {p: p.stat().st_mtime_ns for p in (held_lock / "results").rglob("*")}
    with pytest.raises(CafeError, match="holds this folder's lock .*Directory cannot be locked"):
        workspace_sync.sync(held_lock)
    assert {p: p.stat().st_mtime_ns for p in (held_lock / "results").rglob("*")} == before and calls == []
    with pytest.raises(CafeError, match="holds this folder's lock .*Directory cannot be locked"):
        touch(held_lock, ["held.txt"], [])


def test_sync_on_a_shared_read_only_cache_says_what_to_do(tmp_path, monkeypatch) -> None:
    calls = sync_project(tmp_path, monkeypatch)
    monkeypatch.setattr(workspace_sync, "can_set_time", lambda path: False)
    with pytest.raises(CafeError, match="cache.type copy"):
        workspace_sync.sync(tmp_path)
    assert calls == []


def test_every_step_command_has_a_record_rule() -> None:
    from cafe.cli import COMMANDS

    not_steps = {"annotate-init", "annotate", "params", "verify", "sync", "bench"}
    assert set(COMMANDS) - not_steps == set(provenance.STEPS)
