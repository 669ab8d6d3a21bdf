"""`cafe sync`: after DVC restores products (`dvc pull`, `dvc checkout`, `dvc exp apply`), make Snakemake judge them
by what they are, through Snakemake's public command line only (docs/provenance.md).

1. `cafe verify` decides: a product whose record disagrees with the current params, inputs or code is removed
   from the workspace (DVC's cache keeps its bytes), so whichever tool runs next makes it again.
2. Products that verify as current but did not come from a job run here (their file is not the one a cafe
   command wrote in this checkout: DVC linked or copied it) are marked up to date by `snakemake --touch
   --forcerun` on them, which writes Snakemake's own record of them with today's params and code and makes them
   newer than their inputs. Nothing else is touched, and nothing at all when every product was made here.

Nothing is written while a Snakemake run holds the folder's lock: before its first write the sync asks Snakemake
itself (a dry run, which writes nothing, reports a held lock), and `snakemake --touch` refuses a locked folder
with the same message. A product whose time cannot be set (a read-only link into a group-shared DVC cache) stops
the sync, before anything is written, with what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cafe.errors import CafeError
from cafe.provenance import file_times, load_config, made_here, note_made_here, record_path, verify

log = logging.getLogger(__name__)

LOCKED = "Directory cannot be locked"  # Snakemake's words for a folder another run holds (dry run and real run)
NOT_PERMITTED = ("Operation not permitted", "PermissionError")


def needs_marking(root: Path, product: str, record: dict) -> bool:
    """A current product Snakemake would misjudge: content not made here (Snakemake's record, if any, is of other
    content), or a file of it older than a file of one of its inputs (DVC gives restored files new times, in no
    order). Marking a current product is always safe, so the time test may err towards marking."""
    if not made_here(root, product, record["md5"]):
        return True
    inputs = [max(file_times(root / name)) for name in record["inputs"] if (root / name).exists()]
    return max(inputs, default=0.0) > min(file_times(root / product))


def remove(path: Path) -> None:
    """Unlink a product from the workspace (a hard link into DVC's cache leaves the cache object as it is)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def check_settable(root: Path, products: list[str]) -> None:
    """Snakemake sets times to mark files up to date: a file neither ours nor writable (a link into a
    group-shared, read-only DVC cache) would stop it halfway."""
    blocked = [p for p in products if (root / p).is_file() and not can_set_time(root / p)]
    if blocked:
        raise CafeError(shared_cache(f"{len(blocked)} restored products, e.g. {blocked[0]}"))


def shared_cache(what: str) -> str:
    return (
        f"cannot mark {what} up to date: their files are read-only links into a DVC cache owned by someone else "
        "(a shared cache). Give this checkout its own copies: `dvc config --local cache.type copy && "
        "dvc checkout --relink`, then `cafe sync` again"
    )


def can_set_time(path: Path) -> bool:
    return path.stat().st_uid == os.geteuid() or os.access(path, os.W_OK)


def snakemake(root: Path, args: list[str]) -> tuple[int, str]:
    """Run Snakemake's command line in the project folder; its exit status and everything it printed."""
    done = subprocess.run(["snakemake", *args], cwd=root, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def refuse_if_locked(text: str) -> None:
    """Stop, naming Snakemake's own message, where Snakemake said another run holds the folder's lock."""
    said = next((line.strip() for line in text.splitlines() if LOCKED in line), None)
    if said:
        raise CafeError(
            f"another Snakemake run holds this folder's lock (Snakemake: {said!r}): nothing changed; run cafe sync "
            "after it ends (a lock left by a killed run: `snakemake --unlock`)"
        )


def ensure_unlocked(root: Path, extra: list[str]) -> None:
    """Ask Snakemake whether another run holds the lock: a dry run writes nothing and reports a held lock."""
    refuse_if_locked(snakemake(root, ["--dry-run", "--cores", "1", *extra])[1])


def snakemake_touch(root: Path, products: list[str], extra: list[str]) -> None:
    """`snakemake --touch --forcerun PRODUCTS`: Snakemake's own records and times for them and what follows."""
    code, text = snakemake(root, ["--touch", "--cores", "1", *extra, "--forcerun", *products])
    if code != 0:
        refuse_if_locked(text)
        if any(word in text for word in NOT_PERMITTED):
            raise CafeError(shared_cache("restored products") + f"\n{text[-1000:]}")
        raise CafeError(f"snakemake --touch failed:\n{text[-3000:]}")


def sync(root: Path, params: str = "params.yaml", configfiles: list[str] | None = None) -> dict[str, list[str]]:
    """Remove products that are not current, mark restored current ones up to date; returns what was done."""
    configfiles = configfiles or []
    extra = [arg for name in configfiles for arg in ("--configfile", name)]
    found = verify(root, load_config(root, params, configfiles))
    present = [p for p in found if (root / p).exists()]
    stale = [p for p in present if found[p]]
    current = {p: json.loads(record_path(root / p).read_text()) for p in present if not found[p]}
    restored = [p for p, record in current.items() if needs_marking(root, p, record)]
    if not stale and not restored:
        return {"removed": [], "marked": []}
    if restored:
        check_settable(root, list(current))
    ensure_unlocked(root, extra)
    for product in stale:
        log.info("not current, removed (remade by the next run): %s (%s)", product, "; ".join(found[product]))
        remove(root / product)
    if restored:
        snakemake_touch(root, restored, extra)
        note_made_here(root, {p: record["md5"] for p, record in current.items()})
    return {"removed": stale, "marked": restored}


def run_sync(args: argparse.Namespace) -> None:
    """CLI: make Snakemake see restored products for what they are."""
    done = sync(Path(args.root), args.params, args.configfile)
    print(
        f"cafe sync: {len(done['removed'])} products not current removed, {len(done['marked'])} restored "
        "products marked up to date",
        file=sys.stderr,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe sync`."""
    parser = subparsers.add_parser("sync", help="after dvc pull/checkout: let Snakemake see products as they are")
    parser.add_argument("--params", default="params.yaml", help="the params file (default params.yaml)")
    parser.add_argument("--configfile", nargs="*", default=[], help="further params files, as given to snakemake")
    parser.add_argument("--root", default=".", help="the project folder")
    parser.set_defaults(func=run_sync)
