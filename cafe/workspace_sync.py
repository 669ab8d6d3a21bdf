"""Keep Snakemake's view of the workspace true after DVC restores products (`dvc pull`, `dvc checkout`, the copy
DVC makes of a linked output before a stage reruns).

DVC restores a product by its content but gives it a new timestamp, in no particular order, and a fresh clone has
no `.snakemake/metadata` (Snakemake's record of each output's params, code, inputs and run time). Left alone,
Snakemake would rerun jobs whose products DVC just restored (an output older than its input), and would miss a
param change (no record to compare with). So:

- after each DVC stage, `cafe workflow-records --stage S` copies Snakemake's records of S's outputs into
  `results/records/S.json`, a DVC output of S: the records travel with the products they describe;
- whenever the Snakefile loads (inside every DVC stage, and for a plain `snakemake` or `snakemake -n`),
  `sync_workspace` puts back, for every output whose content is exactly what dvc.lock records, the record that
  came with it, and makes that output newer than its inputs (what `snakemake --touch` does), but only where this
  is safe: every input of its job is missing, also exactly as dvc.lock records it, or unchanged since the job
  started. Anything else (an edited annotation CSV, regenerated activations) is left to Snakemake's own rules.

Content is compared by MD5, as DVC computes it (directories: the MD5 of DVC's listing), through `cafe.io.hashes`,
so unchanged files are not read again. Directory outputs keep their time in `.snakemake_timestamp`, which
`.dvcignore` keeps out of DVC (an empty file would be one cache object shared by every directory).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cafe.errors import CafeError
from cafe.io import write_text
from cafe.io.hashes import HASH_CACHE, HashCache

log = logging.getLogger(__name__)

METADATA = Path(".snakemake/metadata")
RECORDS = Path("results/records")
TIMESTAMP = ".snakemake_timestamp"
NAME_MAX = 255
BUMP_NS = 10_000_000  # 10 ms: an output is made this much newer than its newest input


# --- Snakemake's job records (.snakemake/metadata/<urlsafe base64 of the output path, split at NAME_MAX>) ---


def record_path(root: Path, output: str) -> Path:
    """Where Snakemake keeps the record of one output (its own naming scheme, persistence/file.py)."""
    encoded = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [encoded[i : i + NAME_MAX - 1] for i in range(0, len(encoded), NAME_MAX - 1)]
    return root / METADATA / Path(*(["@" + p for p in parts[:-1]] + [parts[-1]]))


def local_records(root: Path) -> dict[str, dict[str, Any]]:
    """Every record in `.snakemake/metadata`, by output path."""
    found = {}
    base = root / METADATA
    for folder, _, files in os.walk(base):
        prefix = "".join(part[1:] for part in Path(folder).relative_to(base).parts)
        for name in files:
            try:
                output = base64.urlsafe_b64decode(prefix + name).decode()
                found[output] = json.loads((Path(folder) / name).read_text())
            except (ValueError, UnicodeDecodeError):
                continue  # not a record (Snakemake's own temporary files)
    return found


def stage_outs(root: Path, stage: str) -> list[str]:
    """Paths of a dvc.yaml stage's outputs (outs, metrics, plots), the records bundle itself excluded."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        raise CafeError(f"dvc.yaml: no stage {stage!r} (stages: {', '.join(stages)})")
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stages[stage].get(kind, []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            if not path.startswith(f"{RECORDS.as_posix()}/"):
                paths.append(path)
    return paths


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or inside it."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def save_records(root: Path, stage: str, include: tuple[str, ...] = ()) -> Path:
    """Write results/records/<stage>.json: Snakemake's records of the stage's outputs and of `include` (paths
    the stage makes that DVC does not keep), only if they changed."""
    outs = stage_outs(root, stage) + list(include)
    records = {out: rec for out, rec in sorted(local_records(root).items()) if any(under(out, p) for p in outs)}
    path = root / RECORDS / f"{stage}.json"
    text = json.dumps(records, indent=1, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    log.info("%s: records of %d outputs", path, len(records))
    return path


def bundled_records(root: Path) -> dict[str, dict[str, Any]]:
    """The records that came with the products (results/records/*.json), by output path."""
    found: dict[str, dict[str, Any]] = {}
    for bundle in sorted((root / RECORDS).glob("*.json")):
        try:
            found.update(json.loads(bundle.read_text()))
        except ValueError:
            log.warning("%s: not valid JSON, ignored", bundle)
    return found


# --- what dvc.lock says the workspace holds ---


@dataclass
class LockView:
    """dvc.lock's entries (path -> md5, `.dir` for directories) and which of them the workspace matches."""

    root: Path
    hashes: HashCache
    entries: dict[str, set[str]] = field(default_factory=dict)
    unverifiable: set[str] = field(default_factory=set)
    _matches: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, hashes: HashCache) -> LockView:
        """Read dvc.lock; outputs DVC does not cache (activations, by default) are not hashed: too large."""
        view = cls(root, hashes)
        lock_file = root / "dvc.lock"
        lock = yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else {}
        for stage in (lock or {}).get("stages", {}).values():
            for entry in stage.get("deps", []) + stage.get("outs", []):
                if "md5" in entry:
                    view.entries.setdefault(entry["path"].rstrip("/"), set()).add(entry["md5"])
        view.unverifiable = uncached_outs(root)
        return view

    def verified(self, path: str) -> bool:
        """Whether dvc.lock covers `path` (itself or a folder holding it) and every covering entry matches."""
        covering = [p for p in self.entries if under(path, p)]
        return bool(covering) and all(self.matches(p) for p in covering)

    def matches(self, entry: str) -> bool:
        if entry not in self._matches:
            self._matches[entry] = self._compute_match(entry)
        return self._matches[entry]

    def _compute_match(self, entry: str) -> bool:
        wanted = self.entries[entry]
        if len(wanted) != 1 or any(under(entry, p) for p in self.unverifiable):
            return False  # stages disagree (one reran, the other not yet), or too large to hash
        path = self.root / entry
        try:
            return next(iter(wanted)) == (dir_md5(path, self.hashes) if path.is_dir() else self.hashes.md5(path))
        except OSError:
            return False


def dir_md5(path: Path, hashes: HashCache) -> str:
    """DVC's hash of a directory: MD5 of the JSON listing of (md5, relpath) sorted by relpath, plus `.dir`."""
    listing = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            if name == TIMESTAMP:
                continue
            file = Path(folder) / name
            listing.append({"md5": hashes.md5(file), "relpath": file.relative_to(path).as_posix()})
    listing.sort(key=lambda item: item["relpath"])
    text = json.dumps(listing, sort_keys=True).encode("utf-8")
    return hashlib.md5(text).hexdigest() + ".dir"


def uncached_outs(root: Path) -> set[str]:
    """dvc.yaml outputs with `cache: false`: recorded by their hash, but not worth reading to compare."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    found = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    path, flags = next(iter(entry.items()))
                    if flags and flags.get("cache", True) is False:
                        found.add(path.rstrip("/"))
    return found


# --- Snakemake's notion of a file's time ---


def snake_mtime_ns(path: Path) -> int | None:
    """The time Snakemake sees: a directory's `.snakemake_timestamp` if it has one; None if missing."""
    try:
        if path.is_dir() and (path / TIMESTAMP).is_file():
            return (path / TIMESTAMP).stat().st_mtime_ns
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def set_snake_mtime_ns(path: Path, ns: int) -> None:
    """Set the time Snakemake sees (a directory gets a `.snakemake_timestamp`, as `snakemake --touch` makes)."""
    target = path / TIMESTAMP if path.is_dir() else path
    if path.is_dir() and not target.exists():
        target.touch()
    os.utime(target, ns=(ns, ns))


# --- the sync ---


@dataclass
class SyncReport:
    restored: int = 0
    touched: int = 0


def sync_workspace(root: str | os.PathLike = ".", hash_cache: str | os.PathLike | None = None) -> SyncReport:
    """Restore records and mend timestamps of the outputs that are exactly as dvc.lock records (see module doc)."""
    root = Path(root)
    report = SyncReport()
    bundled = bundled_records(root)
    if not bundled or not (root / "dvc.lock").is_file():
        return report
    with HashCache(hash_cache or root / HASH_CACHE) as hashes:
        lock = LockView.load(root, hashes)
        local = local_records(root)
        records = {}
        for output, record in bundled.items():
            if not (root / output).exists():
                records[output] = local.get(output, record)  # not restored; tells what the missing file came from
                continue
            if not lock.verified(output):
                if output in local:
                    records[output] = local[output]
                continue
            if local.get(output) != record:
                write_text(record_path(root, output), json.dumps(record))
                report.restored += 1
            records[output] = record
        for output, record in local.items():
            records.setdefault(output, record)
        report.touched = mend_timestamps(root, records, lock)
    if report.restored or report.touched:
        log.info(
            "workspace sync: %d Snakemake records restored, %d outputs made newer than their inputs",
            report.restored,
            report.touched,
        )
    return report


def mend_timestamps(root: Path, records: dict[str, dict[str, Any]], lock: LockView, passes: int = 5) -> int:
    """Give each output exactly as dvc.lock records it the time Snakemake should see: newer than its inputs
    where its job is up to date, else no newer than the job's start (DVC's copy of a linked output before a
    stage reruns is brand new, and would hide an edited input). Upstream first, by recorded end time."""
    order = [
        out for out in sorted(records, key=lambda out: records[out].get("endtime") or 0) if restorable(root, out, lock)
    ]
    touched = set()
    for output in order:
        if newest_input(root, records[output], lock, records, set()) is None:
            started = int((records[output].get("starttime") or 0) * 1e9)
            if started and snake_mtime_ns(root / output) > started:
                set_snake_mtime_ns(root / output, started)
                touched.add(output)
    for _ in range(passes):  # a hard-linked cache object can be shared by two files: repeat until nothing moves
        moved = False
        for output in order:
            newest = newest_input(root, records[output], lock, records, set())
            current = snake_mtime_ns(root / output)
            if newest is None or current is None or current > newest:
                continue
            set_snake_mtime_ns(root / output, newest + BUMP_NS)
            touched.add(output)
            moved = True
        if not moved:
            break
    return len(touched)


def restorable(root: Path, output: str, lock: LockView) -> bool:
    """Whether the output exists and is exactly what dvc.lock records."""
    return (root / output).exists() and lock.verified(output)


def newest_input(
    root: Path, record: dict[str, Any], lock: LockView, records: dict[str, dict[str, Any]], seen: set[str]
) -> int | None:
    """Newest time among a job's inputs, None if one of them is not known to be what the job used. A missing
    input (activations DVC does not keep) stands for its own inputs: Snakemake compares a missing file's inputs
    with the oldest output downstream of it."""
    started_ns = int((record.get("starttime") or 0) * 1e9)
    newest = 0
    for name in record.get("input") or []:
        ns = snake_mtime_ns(root / name)
        if ns is None:
            if name in records and name not in seen:
                upstream = newest_input(root, records[name], lock, records, seen | {name})
                if upstream is None:
                    return None
                newest = max(newest, upstream)
            continue
        if not (lock.verified(name) or ns <= started_ns):
            return None
        newest = max(newest, ns)
    return newest


def iter_stage_names(root: Path) -> Iterator[str]:
    """Stages of dvc.yaml."""
    yield from yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def run_workflow_records(args: argparse.Namespace) -> None:
    """CLI: save Snakemake's records of a DVC stage's outputs beside them."""
    root = Path(args.root)
    stages = [args.stage] if args.stage else list(iter_stage_names(root))
    for stage in stages:
        save_records(root, stage, tuple(args.include))


def run_sync_workspace(args: argparse.Namespace) -> None:
    """CLI: restore Snakemake records and timestamps of the products DVC restored."""
    report = sync_workspace(args.root)
    print(f"restored {report.restored} records, made {report.touched} outputs newer than their inputs")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe workflow-records` and `cafe sync-workspace`."""
    records = subparsers.add_parser("workflow-records", help="save Snakemake's records of a DVC stage's outputs")
    records.add_argument("--stage", help="dvc.yaml stage (default: every stage)")
    records.add_argument("--include", nargs="*", default=[], help="more paths of the stage that DVC does not keep")
    records.add_argument("--root", default=".", help="the project folder")
    records.set_defaults(func=run_workflow_records)
    sync = subparsers.add_parser("sync-workspace", help="mend Snakemake's records and timestamps after dvc pull")
    sync.add_argument("--root", default=".", help="the project folder")
    sync.set_defaults(func=run_sync_workspace)
