"""The fault suite's count of lost files (tests/lost_files.py) finds every kind of loss and only losses."""

from __future__ import annotations

import json
from pathlib import Path

from lost_files import files_lost, hashes


def folder(tmp_path: Path) -> Path:
    (tmp_path / "results" / "logs").mkdir(parents=True)
    for name in ("a.json", "b.json", "c.json"):
        (tmp_path / "results" / name).write_text(json.dumps({"name": name}))
    (tmp_path / "results" / "logs" / "job.log").write_text("started\n")
    return tmp_path / "results"


def test_nothing_touched_loses_nothing_and_logs_and_temporaries_are_not_products(tmp_path: Path) -> None:
    results = folder(tmp_path)
    before = hashes(results)
    assert sorted(p.name for p in before) == ["a.json", "b.json", "c.json"]
    (results / "logs" / "job.log").write_text("rerun\n")
    (results / ".a.json.123.tmp").write_text("half")
    assert files_lost(before) == []


def test_a_deleted_a_changed_and_a_half_written_file_are_each_lost(tmp_path: Path) -> None:
    results = folder(tmp_path)
    before = hashes(results)
    (results / "a.json").unlink()
    (results / "b.json").write_text(json.dumps({"name": "other"}))
    (results / "c.json").write_text('{"name": ')  # a remade file that does not open
    assert files_lost(before, remade=[results / "c.json"]) == [str(results / n) for n in ("a.json", "b.json", "c.json")]


def test_remade_and_removed_files_may_change_or_go_but_not_break(tmp_path: Path) -> None:
    results = folder(tmp_path)
    before = hashes(results)
    (results / "a.json").write_text(json.dumps({"name": "remade"}))
    (results / "b.json").unlink()
    (results / "c.json").write_text("{broken")
    assert files_lost(before, remade=[results / "a.json"], removed=[results / "b.json"]) == [str(results / "c.json")]
    assert files_lost(before, remade=[results / "b.json"]) == [str(results / n) for n in ("a.json", "b.json", "c.json")]
