"""The README's commands that apply to a finished tiny demo, typed as written, in a fresh copy of it: each must do
what its line says. A command is taken from the README text itself (the test fails if the README no longer
holds it), so the two cannot drift apart."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_utils import REPO, copy_workspace, env, run

pytestmark = pytest.mark.e2e

README = (REPO / "README.md").read_text()


def as_written(command: str) -> str:
    """`command` exactly as the README has it (in a fenced block or in backticks)."""
    assert command in README, f"the README no longer says {command!r}"
    return command


def sh(command: str, root: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["bash", "-c", as_written(command)], root, check=check)


@pytest.fixture(scope="module")
def demo(finished_tiny_demo, tmp_path_factory) -> Path:
    """One fresh copy for the commands that change nothing a later one reads."""
    return copy_workspace(finished_tiny_demo, tmp_path_factory.mktemp("readme") / "demo")


def test_cafe_params_prints_every_knob_with_the_value_a_run_uses(demo):
    out = sh("cafe params", demo).stdout
    for section in ("demo", "data", "backbone", "sae", "erf", "insertion", "annotation", "compute"):
        assert re.search(rf"^{section}:", out, re.M), section


def test_metrics_and_plots_show(demo):
    out = sh("dvc metrics show", demo).stdout
    assert "results/metrics/sae.json" in out and "results/metrics/insertion.json" in out
    sh("dvc plots show", demo)
    assert (demo / "dvc_plots/index.html").is_file()


def test_report_and_metrics_show_each_products_record(demo):
    """The report labels Fig 5 with its record (`<product>.prov.json`, what `cafe verify` reads); `dvc metrics show`
    gives the metrics Fig 5's command wrote with the same hashes of params, inputs and code."""
    sh("snakemake --report report.html", demo)
    page = (demo / "report.html").read_text()
    assert len(page) > 10_000
    record = json.loads((demo / "results/figures/fig5_nonlocal.png.prov.json").read_text())
    assert f"annotation.threshold={record['params']['annotation']['threshold']}" in page, "resolved params"
    assert all(f"{name} {md5[:12]}" in page for name, md5 in record["inputs"].items()), "input hashes"
    assert all(f"{name} {md5[:12]}" in page for name, md5 in record["code"].items()), "code version"
    assert record["md5"] in page
    shown = json.loads((demo / "results/metrics/annotation.json").read_text())["provenance"]
    metrics = sh("dvc metrics show", demo).stdout
    assert shown["step"] == record["step"] and shown["step"] in metrics
    assert all(f"[{shown[part]}]" in page and shown[part] in metrics for part in ("params", "inputs", "code"))


def test_verify_says_all_is_current_and_sync_then_snakemake_does_nothing(demo):
    assert "products current" in sh("cafe verify", demo).stdout
    done = sh("cafe sync && snakemake --cores all", demo)
    assert "Nothing to be done" in done.stdout + done.stderr


def outside_snakemake(root: Path) -> dict[str, int]:
    """Every file of the project but Snakemake's own folder (its log), by modification time."""
    files = (p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in (".snakemake", ".git"))
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_recovery_commands_need_no_cores_and_write_nothing(demo):
    before = outside_snakemake(demo)
    sh("snakemake --unlock", demo)
    out = run(["snakemake", "-n"], demo)  # the README: `--unlock`, `-n`, `--report` and `--touch` need no `--cores`
    assert as_written("`--unlock`, `-n`, `--report` and `--touch` need no `--cores`")
    assert "Nothing to be done" in out.stdout + out.stderr
    assert outside_snakemake(demo) == before  # products, records, .cafe/ and DVC's files untouched


def serve(root: Path, *extra: str) -> list[str]:
    """Start `cafe annotate --layer 3`, read until it prints the address (or stops), stop it; its lines."""
    cmd = ["cafe", "annotate", "--layer", "3", *extra]
    server = subprocess.Popen(cmd, cwd=root, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("open http://" in line for line in lines):
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return lines


def test_annotate_with_its_defaults_on_the_shipped_params_serves_the_page(demo):
    as_written("cafe annotate --layer L [--annotator NAME]")
    shipped = (REPO / "params.yaml").read_text()  # `data: {}`: data.images is its default, the demo's scenes
    tiny = (demo / "params.yaml").read_text()
    (demo / "params.yaml").write_text(shipped)
    try:
        lines = serve(demo)
        if any("cannot listen" in line for line in lines):  # another program holds the default port
            lines = serve(demo, "--port", "0")
    finally:
        (demo / "params.yaml").write_text(tiny)
    assert any("open http://" in line for line in lines), lines


def test_dvc_commit_after_plain_snakemake_takes_every_product(finished_tiny_demo, tmp_path):
    """The Quick start's plain `snakemake --cores all`, then `dvc commit` as the README says: every DVC output
    exists (every stage's products are Snakemake's, none is made by a DVC command only)."""
    root = copy_workspace(finished_tiny_demo, tmp_path / "plain")
    as_written("snakemake --cores all")
    as_written("`dvc commit`")
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert all(re.fullmatch(r"cafe sync && snakemake --cores all .+", s["cmd"]) for s in stages.values())
    (root / "dvc.lock").unlink()  # as if only plain Snakemake had ever run here
    run(["dvc", "commit", "-f"], root)
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}
