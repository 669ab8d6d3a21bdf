"""The workspace sync after `dvc pull` / `dvc checkout`: Snakemake's records put back beside restored products, and
outputs made newer than their inputs only where dvc.lock vouches for both (tiny hand-made projects, no DVC run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from cafe.io.hashes import HashCache, md5_file
from cafe.workspace_sync import dir_md5, local_records, record_path, save_records, sync_workspace

OUTS = ["results/out.txt", "results/records/step.json"]
DVC_YAML = {"stages": {"step": {"cmd": "x", "deps": ["in.txt"], "outs": OUTS}}}


def make_project(root: Path) -> dict:
    """in.txt -> results/out.txt, as a finished run leaves it: dvc.yaml, dvc.lock, and the bundled record."""
    (root / "results/records").mkdir(parents=True)
    (root / "in.txt").write_text("input")
    (root / "results/out.txt").write_text("output")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    lock = {
        "schema": "2.0",
        "stages": {
            "step": {
                "deps": [{"path": "in.txt", "md5": md5_file(root / "in.txt")}],
                "outs": [{"path": "results/out.txt", "md5": md5_file(root / "results/out.txt")}],
            }
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    record = {"input": ["in.txt"], "params": ["p"], "starttime": 1000.0, "endtime": 1001.0}
    (root / "results/records/step.json").write_text(json.dumps({"results/out.txt": record}))
    return record


def set_mtime(path: Path, seconds: float) -> None:
    os.utime(path, (seconds, seconds))


def test_record_paths_round_trip_including_names_longer_than_a_file_name(tmp_path: Path) -> None:
    outputs = ["results/sae/layer3.pt", "results/" + "x" * 300 + "/file.h5"]
    for output in outputs:
        path = record_path(tmp_path, output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"output": output}))
    assert {k: v["output"] for k, v in local_records(tmp_path).items()} == dict(zip(outputs, outputs))


def test_records_of_a_stage_are_saved_and_an_unchanged_bundle_is_not_rewritten(tmp_path: Path) -> None:
    make_project(tmp_path)
    for output in ("results/out.txt", "in.txt"):
        path = record_path(tmp_path, output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"of": output}))
    bundle = save_records(tmp_path, "step")
    assert json.loads(bundle.read_text()) == {"results/out.txt": {"of": "results/out.txt"}}
    set_mtime(bundle, 5)
    save_records(tmp_path, "step")
    assert bundle.stat().st_mtime == 5


def test_pulled_output_gets_its_record_back_and_is_made_newer_than_its_input(tmp_path: Path) -> None:
    record = make_project(tmp_path)
    set_mtime(tmp_path / "results/out.txt", 2000)  # restored by DVC before its input: looks out of date
    set_mtime(tmp_path / "in.txt", 3000)
    report = sync_workspace(tmp_path)
    assert report.restored == 1 and report.touched == 1
    assert local_records(tmp_path) == {"results/out.txt": record}
    assert (tmp_path / "results/out.txt").stat().st_mtime > 3000


def test_an_edited_input_makes_the_output_look_older_than_it(tmp_path: Path) -> None:
    make_project(tmp_path)
    (tmp_path / "in.txt").write_text("edited by a person")  # not what dvc.lock records, newer than the job
    set_mtime(tmp_path / "in.txt", 3000)
    set_mtime(tmp_path / "results/out.txt", 4000)  # DVC's fresh copy of a linked output, before the stage reruns
    assert sync_workspace(tmp_path).touched == 1
    assert (tmp_path / "results/out.txt").stat().st_mtime == 1000  # the job's start: Snakemake reruns it


def test_an_output_unlike_the_lock_keeps_its_local_record_and_time(tmp_path: Path) -> None:
    make_project(tmp_path)
    (tmp_path / "results/out.txt").write_text("made by a later plain snakemake run")
    set_mtime(tmp_path / "results/out.txt", 2000)
    set_mtime(tmp_path / "in.txt", 3000)
    report = sync_workspace(tmp_path)
    assert (report.restored, report.touched) == (0, 0) and local_records(tmp_path) == {}


def test_directory_hash_is_dvcs(tmp_path: Path) -> None:
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/a.txt").write_text("a")
    (tmp_path / "d/sub/b.txt").write_text("b")
    (tmp_path / "d/.snakemake_timestamp").write_text("")  # kept out of DVC by .dvcignore
    with HashCache(tmp_path / "h.sqlite") as hashes:
        # DVC 3's hash of this folder (`dvc add d` in a scratch repository; .snakemake_timestamp ignored)
        assert dir_md5(tmp_path / "d", hashes) == "90d9fe10b4a0cddaefbe4549457984d9.dir"


def test_output_of_a_missing_intermediate_is_made_newer_than_what_that_came_from(tmp_path: Path) -> None:
    """in.txt -> mid.h5 (activations: not kept by DVC, absent in a clone) -> out.txt: Snakemake compares in.txt
    with the oldest output downstream of the missing file, so out.txt must end up newer than in.txt."""
    make_project(tmp_path)
    out_record = {"input": ["mid.h5"], "params": [], "starttime": 1000.0, "endtime": 1001.0}
    mid_record = {"input": ["in.txt"], "params": [], "starttime": 900.0, "endtime": 901.0}
    bundle = {"results/out.txt": out_record, "mid.h5": mid_record}
    (tmp_path / "results/records/step.json").write_text(json.dumps(bundle))
    set_mtime(tmp_path / "results/out.txt", 2000)
    set_mtime(tmp_path / "in.txt", 3000)
    assert sync_workspace(tmp_path).touched == 1
    assert (tmp_path / "results/out.txt").stat().st_mtime > 3000
    assert local_records(tmp_path) == {"results/out.txt": out_record}  # no record for a file that is not there
