"""Data versioning end to end, on copies of the one finished tiny demo: products live in DVC's cache (linked, not
stored twice) and activations do not; a push, fresh clone and pull leave nothing to do; checking out an older
commit brings back its Fig 5; an experiment reruns only what its change touches and is compared with `dvc exp
show` and `dvc plots diff`; a changed image folder shows in `dvc status`; no rerun or checkout alters the cache
or a human annotation file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_utils import copy_workspace, mtimes, run

pytestmark = pytest.mark.e2e

PRODUCTS = (
    "results/sae/layer3.pt",
    "results/features/layer3.h5",
    "results/erf/layer3/attnlrp.h5",
    "results/insertion/layer3/attnlrp.csv",
    "results/tables/insertion_auc.csv",
    "results/figures/fig3_insertion.png",
    "results/annotation/sheets/layer3.csv",
    "results/metrics/sae.json",
)


def commit(root: Path, message: str) -> str:
    """Commit everything git sees; returns the commit's hash."""
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", message], root)
    return run(["git", "rev-parse", "HEAD"], root).stdout.strip()


def cache_object(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_cache_intact(root: Path) -> None:
    """Every cache object still holds the content its name says (no rerun wrote into a linked file)."""
    objects = [p for p in (root / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]
    assert objects
    for path in objects:
        assert md5(path) == path.parent.name + path.name.removesuffix(".dir"), path


def assert_status_clean(root: Path, *stages: str) -> None:
    """`dvc status` (of the given stages, default all) has nothing to report."""
    assert json.loads(run(["dvc", "status", "--json", *stages], root).stdout) == {}


def annotate(root: Path, labels: list[str]) -> Path:
    """A person's annotation file for layer 3, every row labelled."""
    csv = root / "data/annotations/layer3.csv"
    if not csv.exists():
        args = ["--layer", "3", "--sheets-dir", "results/annotation/sheets", "--annotations-dir", "data/annotations"]
        run(["cafe", "annotate-init", *args], root)
    sheet = pd.read_csv(csv, dtype=str, keep_default_na=False)
    sheet["non_local"] = [labels[i % len(labels)] for i in range(len(sheet))]
    sheet.to_csv(csv, index=False)
    return csv


def test_products_are_linked_from_the_cache_and_activations_are_not_kept(finished_tiny_demo):
    root = finished_tiny_demo  # read only
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = {entry["path"]: entry["md5"] for stage in lock["stages"].values() for entry in stage.get("outs", [])}
    kept = json.loads(cache_object(root, outs["results/activations"]).read_text())  # the folder: records only
    assert kept and all(item["relpath"].endswith(".h5.prov.json") for item in kept)
    for product in PRODUCTS:
        workspace = root / product
        listing = next(  # the .dir object of the output folder holding the product, or the product itself
            (cache_object(root, e["md5"]), e["path"])
            for s in lock["stages"].values()
            for e in s.get("outs", [])
            if product == e["path"] or product.startswith(e["path"] + "/")
        )
        if listing[1] == product:
            obj = listing[0]
        else:
            files = {f["relpath"]: f["md5"] for f in json.loads(listing[0].read_text())}
            obj = cache_object(root, files[product.removeprefix(listing[1] + "/")])
        assert obj.stat().st_ino == workspace.stat().st_ino, product  # one copy on disk (ext4: a hard link)
    activations = {md5(p) for p in (root / "results/activations").glob("*.h5")}  # their records are kept
    assert activations and not any(cache_object(root, h).exists() for h in activations)


def test_pull_into_a_fresh_clone_restores_products_and_leaves_nothing_to_do(finished_tiny_demo, tmp_path):
    origin = copy_workspace(finished_tiny_demo, tmp_path / "origin")
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], origin)
    commit(origin, "a finished tiny demo")
    run(["dvc", "push"], origin)
    run(["git", "clone", "-q", str(origin), str(tmp_path / "clone")], tmp_path)
    clone = tmp_path / "clone"
    run(["dvc", "pull"], clone)
    cached = [p for p in (origin / "results").rglob("*") if p.is_file() and not ignored(p.relative_to(origin))]
    assert len(cached) > 100
    for path in cached:
        assert (clone / path.relative_to(origin)).read_bytes() == path.read_bytes(), path
    assert not list((clone / "results/activations").glob("*.h5"))  # only their records
    assert_status_clean(clone)
    run(["cafe", "sync"], clone)  # the README: after dvc pull, before snakemake
    planned = run(["snakemake", "-n", "--cores", "1"], clone)
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout[-3000:]


def ignored(relative: Path) -> bool:
    """Files a clone does not get from DVC: activations (not kept), logs, Snakemake's directory time markers."""
    return relative.parts[1] in ("activations", "logs") or relative.name == ".snakemake_timestamp"


def test_checkout_of_an_older_commit_brings_back_its_fig5_and_never_touches_annotations(finished_tiny_demo, tmp_path):
    root = copy_workspace(finished_tiny_demo, tmp_path / "study")
    csv = annotate(root, ["yes", "no"])
    run(["dvc", "repro", "fig5"], root)  # the stage this test is about (the examples stage reads labels too)
    first = commit(root, "annotation, first labels")
    figure = (root / "results/figures/fig5_nonlocal.png").read_bytes()
    table = root / "results/tables/fig5_nonlocal.csv"
    first_table = table.read_bytes()
    annotate(root, ["yes", "yes", "no"])
    run(["dvc", "repro", "fig5"], root)
    commit(root, "annotation, a label changed")
    assert table.read_bytes() != first_table

    run(["git", "checkout", "-q", first], root)
    run(["dvc", "checkout"], root)
    assert (root / "results/figures/fig5_nonlocal.png").read_bytes() == figure
    assert table.read_bytes() == first_table
    assert_status_clean(root, "fig5")

    edited = csv.read_text().replace("yes", "no")  # a person's unsaved edit: no DVC command may overwrite it
    csv.write_text(edited)
    run(["dvc", "checkout", "--force"], root)
    assert csv.read_text() == edited
    assert_cache_intact(root)


def test_experiment_reruns_only_insertion_and_is_compared(finished_tiny_demo, tmp_path):
    root = copy_workspace(finished_tiny_demo, tmp_path / "study")
    commit(root, "a finished tiny demo")
    run(["dvc", "checkout", "--relink"], root)  # products hard-linked to the cache, as after a real run
    logs = mtimes(root, "results/logs/**/*.log")
    # fewer steps than the demo's 4: the same insertion jobs rerun, each doing half the forwards, not twice as many
    run(["dvc", "exp", "run", "-n", "steps2", "-S", "insertion.steps=2"], root)
    rerun = {k for k, v in mtimes(root, "results/logs/**/*.log").items() if v != logs[k]}
    assert rerun and all("insertion" in k or "fig3" in k for k in rerun), sorted(rerun)
    assert_cache_intact(root)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    experiments = [exp for row in shown for exp in row.get("experiments") or []]
    revs = {r["name"]: r for exp in experiments for r in exp.get("revs", [])}
    data = revs["steps2"]["data"]
    assert data["params"]["params.yaml"]["data"]["insertion"]["steps"] == 2
    assert "results/metrics/insertion.json" in data["metrics"] and "results/metrics/sae.json" in data["metrics"]
    base = next(row for row in shown if row.get("experiments"))  # the commit the experiment started from
    auc = lambda rev: rev["metrics"]["results/metrics/insertion.json"]["data"]["auc"]  # noqa: E731
    assert auc(base["data"]) != auc(data)  # the results moved (the whole file differs anyway: its provenance block)

    diff = json.loads(run(["dvc", "plots", "diff", "HEAD", "steps2", "--json"], root).stdout)
    rows = diff["data"]["results/tables/insertion_auc.csv"][0]["content"]["data"]["values"]
    assert {row["rev"] for row in rows} == {"HEAD", "steps2"}


def test_changed_added_or_removed_image_changes_the_manifest_stage(finished_tiny_demo, tmp_path):
    root = copy_workspace(finished_tiny_demo, tmp_path / "study")
    images = sorted((root / "results/demo/images").rglob("*.png"))
    assert_status_clean(root)

    def manifest_changed() -> bool:
        status = json.loads(run(["dvc", "status", "--json"], root).stdout)
        return "manifest" in status

    shutil.copy(images[0], images[0].with_name("added.png"))
    assert manifest_changed()
    images[0].with_name("added.png").unlink()
    assert not manifest_changed()
    images[1].unlink()
    assert manifest_changed()
    shutil.copy(finished_tiny_demo / images[1].relative_to(root), images[1])
    assert not manifest_changed()
    shutil.copy(images[2], images[1])  # same name, other content (a new file, not written into a linked one)
    assert manifest_changed()
