"""Fault suite, slow cases on copies of the one finished tiny-demo run: `kill -9` while each kind of writer works,
two runs at once in one checkout, broken or mismatched files handed to the next step, a broken annotation edit
seen on the console, and the recovery commands Snakemake prints. Each case's `fault` marker is a row of the
README's table; each counts its lost files from the files (tests/lost_files.py) before it asserts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from lost_files import count_lost, files_lost, hashes, opens
from workflow_utils import TINY_PARAMS, copy_workspace, env, run

from cafe import cli
from cafe.provenance import record_path

pytestmark = pytest.mark.e2e

NOT_RESULTS = ("per_s", "seconds", "resumed_from")  # speed, and the record of a resume: not results


# ---------------------------------------------------------------------------------------------- file checks


def unreadable(root: Path) -> list[str]:
    """Files at final paths under results/ that fail to open (temporary `.*.tmp` files are not final paths)."""
    kinds = (".h5", ".pt", ".partial", ".csv", ".json", ".png")
    files = [p for p in (root / "results").rglob("*") if p.is_file() and p.suffix in kinds]
    return sorted(str(p.relative_to(root)) for p in files if not opens(p))


def same_content(a: Path, b: Path) -> None:
    """Assert two products hold the same results (timings aside; floats to float32 rounding)."""
    if a.suffix == ".h5":
        with h5py.File(a) as x, h5py.File(b) as y:
            assert sorted(x) == sorted(y), a
            for name in x:
                np.testing.assert_allclose(
                    x[name][()], y[name][()], rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=f"{a}:{name}"
                )
            keep = lambda attrs: {k: str(v) for k, v in attrs.items() if not any(t in k for t in NOT_RESULTS)}  # noqa: E731
            assert keep(x.attrs) == keep(y.attrs), a
    elif a.suffix == ".pt":
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        for name, value in y["state_dict"].items():
            torch.testing.assert_close(x["state_dict"][name], value, msg=f"{a}:{name}")
    elif a.suffix == ".csv":
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), rtol=1e-5, obj=str(a))
    elif a.suffix == ".json":
        strip = lambda d: {k: v for k, v in d.items() if not any(t in k for t in NOT_RESULTS)}  # noqa: E731
        assert strip(json.loads(a.read_text())) == strip(json.loads(b.read_text())), a


# ---------------------------------------------------------------------------------------------- kill -9


def start(root: Path, cmd: list[str]) -> subprocess.Popen:
    """A run in its own process group (so that kill -9 takes the jobs with it), output to a file."""
    out = open(root / "run.out", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=root, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 600) -> None:
    """Poll until `ready()`; fail if the run ended first (the fault would not have hit the step)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_run(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def rerun_as_printed(root: Path, cmd: list[str]) -> list[str]:
    """Rerun `cmd`, following what Snakemake prints when it refuses (unlock, rerun incomplete); the recovery
    commands used."""
    used: list[str] = []
    for _ in range(3):
        result = run(cmd, root, check=False)
        if result.returncode == 0:
            return used
        said = result.stdout + result.stderr
        if "--unlock" in said and "snakemake --unlock" not in used:
            run(["snakemake", "--unlock"], root)  # exactly as printed: no --cores
            used.append("snakemake --unlock")
        elif "--rerun-incomplete" in said and "--rerun-incomplete" not in cmd:
            cmd = [*cmd, "--rerun-incomplete"]
            used.append(" ".join(cmd))
        else:
            pytest.fail(f"rerun failed without a recovery to follow:\n{said[-3000:]}")
    pytest.fail(f"no success after following {used}")


def log_started(root: Path, log: str) -> Callable[[], bool]:
    """True once the job's log has output (the step's process is running, its imports done)."""
    return lambda: (root / log).is_file() and (root / log).stat().st_size > 0


def appeared(root: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(root.glob(pattern))


# One case per kind of writer (cafe/io/atomic.py): every other product is written by one of these the same way
# (ERF and features HDF5 whole, like Fig 5's files, into an `atomic_path` temporary; insertion CSV, sheets CSV,
# galleries and HTML by write_csv / atomic_path / write_text, as Fig 5's table, figure and metrics).
KILL_CASES = {
    # writer (the step killed): (products deleted then rebuilt, when to kill)
    "streamed HDF5 (extraction)": (
        ["results/activations/layer1.h5", "results/activations/layer3.h5"],
        lambda root: appeared(root, "results/activations/.layer1.h5.*.tmp"),
    ),
    "torch checkpoint and resumable state (SAE training)": (
        ["results/sae/layer1.pt", "results/sae/layer1.json"],
        lambda root: appeared(root, "results/sae/layer1.pt.partial"),  # mid-training: the step-20 state of 40
    ),
    "PNG, CSV and JSON products (Fig 5)": (
        ["results/figures/fig5_nonlocal.png", "results/tables/fig5_nonlocal.csv", "results/metrics/annotation.json"],
        lambda root: appeared(root, "results/logs/fig5.log"),
    ),
}
FIG5 = KILL_CASES["PNG, CSV and JSON products (Fig 5)"][0]
EXAMPLES = [  # Figs 1 and 4 read the labels too
    f"results/{where}/fig{n}_examples.{ext}" for n in (1, 4) for where, ext in (("figures", "png"), ("tables", "csv"))
]


def products(root: Path) -> dict[Path, str]:
    """Hashes of every product and human annotation file of a workspace (tests/lost_files.py)."""
    return hashes(root / "results", root / "data" / "annotations")


def remade(root: Path, names: list[str]) -> list[Path]:
    """Products a rerun remakes, with the provenance record beside each that has one (rewritten with it)."""
    paths = [root / name for name in names]
    return paths + [record_path(p) for p in paths if record_path(p).is_file()]


@pytest.mark.fault(
    "`kill -9` of the whole run (Snakemake and its job) while each kind of writer works: the streamed activation "
    "HDF5 (extraction), the torch checkpoint and its resumable state (SAE training), the PNG/CSV/JSON products "
    "(Fig 5)",
    "no file at a final path that fails to open; the rerun, after the recovery Snakemake prints (`snakemake "
    "--unlock`, no other flag), finishes with the same results as an uninterrupted run",
)
@pytest.mark.parametrize("writer", list(KILL_CASES))
def test_kill_9_then_rerun_as_printed_gives_the_uninterrupted_results(
    writer: str, finished_tiny_demo: Path, tmp_path: Path, record_property
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    targets, ready = KILL_CASES[writer]
    before, rebuilt = products(root), remade(root, targets)
    for product in targets:
        (root / product).unlink()
    for log in (root / "results" / "logs").rglob("*.log"):  # the finished run's: a new one means the job started
        log.unlink()
    cmd = ["snakemake", "--cores", "1", *targets]
    proc = start(root, cmd)
    wait_until(proc, ready(root), f"the {writer} writer was under way")
    kill_run(proc)
    assert not all((root / p).exists() for p in targets), f"{writer}: the step had finished before the kill"
    broken = [str(root / path) for path in unreadable(root)]  # half files at final paths, right after the kill
    rerun_as_printed(root, cmd)
    lost = count_lost(record_property, sorted({*broken, *files_lost(before, remade=rebuilt)}))
    assert broken == [] and lost == []
    for product in targets:
        same_content(root / product, finished_tiny_demo / product)
    assert unreadable(root) == []
    assert list((root / "results").rglob("*.tmp")) == []  # the killed writers' temporaries went with the rerun


# ---------------------------------------------------------------------------------------------- two runs at once


@pytest.mark.fault(
    "a second run in the same checkout while one runs: two `snakemake`, or `dvc repro` and `snakemake`",
    "the second is refused (locked directory), the first finishes, nothing corrupted",
)
@pytest.mark.parametrize("first", ["snakemake", "dvc repro"])
def test_a_second_run_in_the_same_checkout_is_refused(
    first: str, finished_tiny_demo: Path, tmp_path: Path, record_property
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    before, rebuilt = products(root), remade(root, FIG5)
    for product in [*FIG5, "results/logs/fig5.log"]:  # a new log means the first run's job started
        (root / product).unlink()
    proc = start(root, ["snakemake", "--cores", "1", "fig5"] if first == "snakemake" else ["dvc", "repro", "fig5"])
    wait_until(proc, lambda: (root / "results/logs/fig5.log").is_file(), "the first run's job started")
    os.killpg(proc.pid, signal.SIGSTOP)  # the first run holds still (its lock taken) while the second starts
    try:
        second = run(["snakemake", "--cores", "1", "fig5"], root, check=False)
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=600) == 0, (root / "run.out").read_text()[-3000:]
    lost = count_lost(record_property, files_lost(before, remade=rebuilt))
    assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr
    assert lost == []
    for product in FIG5:
        same_content(root / product, finished_tiny_demo / product)


# ---------------------------------------------------------------------------------------------- damaged inputs


def as_json(section: str, **override) -> str:
    return json.dumps({**TINY_PARAMS[section], **override})


BACKBONE = json.dumps(TINY_PARAMS["backbone"])
IMAGES = ["--manifest", "results/data/manifest.csv", "--images-root", "results/demo/images"]


def step_argv(step: str, out: Path, **inputs: str) -> list[str]:
    """The `cafe` command line the rule runs for layer 1 (inputs overridable), writing to `out`."""
    given = {
        "activations": "results/activations/layer1.h5",
        "sae": "results/sae/layer1.pt",
        "features": "results/features/layer1.h5",
        "erf": "results/erf/layer1/attnlrp.h5",
        **inputs,
    }
    erf_params = json.dumps({"batch_size": 4, "attnlrp": TINY_PARAMS["erf"]["attnlrp"]})
    return {
        "sae": ["sae", "--params", as_json("sae"), "--layer", "1", "--activations", given["activations"],
                "--out", str(out), "--metrics", str(out.with_suffix(".json"))],
        "features": ["features", "--params", as_json("features"), "--activations", given["activations"],
                     "--sae", given["sae"], "--out", str(out)],
        "erf": ["erf", "--method", "attnlrp", "--params", erf_params, "--backbone", BACKBONE, "--layer", "1",
                "--features", given["features"], "--sae", given["sae"], *IMAGES, "--out", str(out)],
        "insertion": ["insertion", "--method", "attnlrp", "--params", as_json("insertion"), "--backbone", BACKBONE,
                      "--layer", "1", "--features", given["features"], "--sae", given["sae"], *IMAGES,
                      "--erf", given["erf"], "--out", str(out)],
    }[step]  # fmt: skip


def run_step(
    root: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str]:
    """Run one `cafe` command in the workspace as the rule would; (exit code, stderr)."""
    monkeypatch.chdir(root)
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:512] = os.urandom(512)
    path.write_bytes(bytes(data))


OUT_NAMES = {"sae": "x.pt", "features": "x.h5", "erf": "x.h5", "insertion": "x.csv"}
DAMAGED = {
    # damaged input: (the next step, what the message must name as the way out)
    "results/activations/layer1.h5": ("sae", "re-run"),
    "results/sae/layer1.pt": ("features", "re-run the `sae` step"),
    "results/features/layer1.h5": ("erf", "re-run"),
    "results/erf/layer1/attnlrp.h5": ("insertion", "re-run"),
}


@pytest.mark.fault(
    "a truncated or corrupt (header overwritten) activation HDF5, SAE checkpoint, features or ERF file handed to "
    "the next step",
    "`cafe <step>: error:` naming the file and what is wrong, suggesting the rerun; nothing written",
)
@pytest.mark.parametrize("damage", [truncate, overwrite_header], ids=["truncated", "corrupt"])
@pytest.mark.parametrize("path", list(DAMAGED))
def test_damaged_file_handed_to_the_next_step_is_named(
    path: str, damage, finished_tiny_demo: Path, tmp_path: Path, monkeypatch, capsys, record_property
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    step, advice = DAMAGED[path]
    damage(root / path)
    before = products(root)
    out = tmp_path / "out" / OUT_NAMES[step]
    code, err = run_step(root, step_argv(step, out), monkeypatch, capsys)
    assert count_lost(record_property, files_lost(before)) == []
    assert code == 2 and f"cafe {step}: error: {path}" in err, err
    assert advice in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- mismatched files


def edit_attrs(path: Path, **attrs) -> None:
    with h5py.File(path, "r+") as handle:
        handle.attrs.update(attrs)


def mismatch(fault: str, step: str, inputs: dict, edit: tuple | None, message: str, existing: bool):
    """One mismatch case: `inputs` swap a file of the step, `edit` changes a copy's attributes."""
    mark = pytest.mark.fault(
        fault, f"refused by `cafe {step}`, naming the file and the mismatch; nothing written", existing=existing
    )
    return pytest.param(step, inputs, edit, message, marks=mark, id=fault.split(" given")[0].replace(" ", "_"))


MISMATCHES = [
    mismatch("activations of another layer given to SAE training", "sae",
             {"activations": "results/activations/layer3.h5"}, None, "activations of layer 3, but the SAE of layer 1",
             existing=False),
    mismatch("activations of another backbone given to the features step (with the SAE of the right one)", "features",
             {}, ("results/activations/layer1.h5", {"backbone": "ViT-B-16"}), "has 'ViT-B-16'", existing=True),
    mismatch("an SAE checkpoint of another SAE (fingerprint) given to the ERF step", "erf",
             {"sae": "results/sae/layer3.pt"}, None, "results/sae/layer3.pt", existing=True),
    mismatch("ERF maps of another SAE (fingerprint) given to the insertion step", "insertion",
             {}, ("results/erf/layer1/attnlrp.h5", {"sae_fingerprint": "0123456789ab"}), "of SAE 0123456789ab",
             existing=True),
]  # fmt: skip


@pytest.mark.parametrize(("step", "inputs", "edit", "message"), MISMATCHES)
def test_file_of_another_backbone_layer_or_sae_is_refused(
    step: str,
    inputs: dict,
    edit: tuple | None,
    message: str,
    finished_tiny_demo: Path,
    tmp_path: Path,
    monkeypatch,
    capsys,
    record_property,
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    if edit is not None:
        edit_attrs(root / edit[0], **edit[1])
    before = products(root)
    out = tmp_path / "out" / OUT_NAMES[step]
    code, err = run_step(root, step_argv(step, out, **inputs), monkeypatch, capsys)
    assert count_lost(record_property, files_lost(before)) == []
    assert code == 2 and message in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- annotations, console


def start_annotation(root: Path, monkeypatch, capsys) -> Path:
    """data/annotations/layer1.csv as `cafe annotate-init` makes it."""
    code, err = run_step(root, ["annotate-init", "--layer", "1"], monkeypatch, capsys)
    assert code == 0, err
    return root / "data/annotations/layer1.csv"


@pytest.mark.fault(
    "an annotation file for another SAE (its sae_fingerprint column from an older SAE)",
    "Fig 5 refused, the file, rows and the stale fingerprint named; nothing written",
    existing=True,
)
def test_annotation_file_for_another_sae_is_refused(
    finished_tiny_demo: Path, tmp_path: Path, monkeypatch, capsys, record_property
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    human = start_annotation(root, monkeypatch, capsys)
    sheet = pd.read_csv(human, dtype=str, keep_default_na=False)
    human.write_text(sheet.assign(sae_fingerprint="0123456789ab", non_local="yes").to_csv(index=False))
    before = products(root)
    argv = ["fig5", "--params", as_json("annotation"), "--sheets", "results/annotation/sheets/layer1.csv",
            "results/annotation/sheets/layer3.csv", "--annotations-dir", "data/annotations",
            "--out-figure", "results/figures/fig5_nonlocal.png", "--out-table", "results/tables/fig5_nonlocal.csv",
            "--metrics", "results/metrics/annotation.json"]  # fmt: skip
    code, err = run_step(root, argv, monkeypatch, capsys)
    assert count_lost(record_property, files_lost(before)) == []  # the figure and the person's file included
    assert code == 2 and "data/annotations/layer1.csv:2" in err and "from another SAE" in err, err


@pytest.mark.fault(
    "a broken annotation edit (a value that is no answer) run through `snakemake` and through `dvc repro`",
    "the file/row/column/value message on the console (not only in results/logs/fig5.log); the person's file untouched",
)
@pytest.mark.parametrize(
    "runner", [["snakemake", "--cores", "1", "fig5"], ["dvc", "repro", "fig5"]], ids=["snakemake", "dvc"]
)
def test_a_failing_jobs_message_reaches_the_console(
    runner: list[str], finished_tiny_demo: Path, tmp_path: Path, monkeypatch, capsys, record_property
) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    human = start_annotation(root, monkeypatch, capsys)
    lines = human.read_text().splitlines()
    lines[1] = lines[1].replace("1,0,,", "1,0,maybe,", 1)
    human.write_text("\n".join(lines) + "\n")
    before = products(root)
    result = run(runner, root, check=False)
    console = result.stdout + result.stderr
    # the person's file untouched; Snakemake removes a failing job's old outputs (its design), none is half written
    assert count_lost(record_property, files_lost(before, removed=[root / p for p in FIG5 + EXAMPLES])) == []
    assert result.returncode != 0
    assert "data/annotations/layer1.csv:2: column 'non_local': value 'maybe' is not an answer" in console, console[
        -3000:
    ]


@pytest.mark.fault(
    "the recovery commands Snakemake prints, typed as printed: `snakemake --unlock`, `-n`, `--report`, `--touch`",
    "each works without --cores (no rule needs the core count when the DAG loads)",
)
def test_recovery_commands_work_without_extra_flags(finished_tiny_demo: Path, tmp_path: Path, record_property) -> None:
    root = copy_workspace(finished_tiny_demo, tmp_path / "w")
    before = products(root)
    said = lambda cmd: (lambda r: r.stdout + r.stderr)(run(cmd, root))  # noqa: E731 - run checks the exit code
    assert "Unlocked working directory" in said(["snakemake", "--unlock"])
    assert "Nothing to be done" in said(["snakemake", "-n"])
    said(["snakemake", "--report", "report.html"])
    assert (root / "report.html").stat().st_size > 10_000
    said(["snakemake", "--touch"])
    assert "Nothing to be done" in said(["snakemake", "-n"])
    assert count_lost(record_property, files_lost(before)) == []
