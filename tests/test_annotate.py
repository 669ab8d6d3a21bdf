"""`cafe annotate`: answers written into the human file (one row changed, validated like Fig 5 reads it), the
server's token, host and path checks, and the page driven by keys in headless Chromium."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from annotation_world import LAYER, N_FEATURES, annotate, fig5, project, tree_hashes, world  # noqa: F401 (fixtures)
from browser import annotate_server, chromium

from cafe.annotation.answers import write_answer
from cafe.annotation.files import human_path
from cafe.annotation.ingest import read_sheet
from cafe.annotation.server import AnnotationServer, open_session
from cafe.errors import CafeError


def sheet_of(project: Path) -> tuple[pd.DataFrame, Path]:
    path = project / f"results/annotation/sheets/layer{LAYER}.csv"
    return read_sheet(path), path


def session_of(project: Path, annotator: str | None = None, show_score: bool = False):
    results = project / "results"
    return open_session(
        LAYER,
        results / "annotation/sheets",
        project / "data/annotations",
        annotator,
        results / f"features/layer{LAYER}.h5",
        results / f"erf/layer{LAYER}/attnlrp.h5",
        results / "data/manifest.csv",
        project / "images",
        show_score=show_score,
    )


@contextmanager
def serving(project: Path, annotator: str | None = None) -> Iterator[AnnotationServer]:
    server = AnnotationServer(session_of(project, annotator), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers)) as response:
            status, raw, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw


def test_write_answer_changes_only_that_rows_answer_and_note(project: Path) -> None:
    human = annotate(project, {0: "no"})
    lines = human.read_text().splitlines()
    lines[3] = lines[3].replace(",False,", ',"False",')  # a spreadsheet's own quoting of another row
    foreign = [lines[0], lines[1].replace("0.0427", "0.04270"), *lines[2:]]  # a cell written as a person typed it
    human.write_text("\r\n".join(foreign) + "\r\n")
    sheet, path = sheet_of(project)
    write_answer(human, sheet, path, 4, "yes", 'blobs, "far" apart\nsecond line')
    after = human.read_bytes().decode().split("\r\n")
    changed = [i for i, (a, b) in enumerate(zip(foreign, after)) if a != b]
    assert changed == [5]  # header is line 0: feature 4 is line 5
    row = pd.read_csv(human, dtype=str, keep_default_na=False).set_index("feature").loc["4"]
    assert (row["non_local"], row["note"]) == ("yes", 'blobs, "far" apart second line')
    assert fig5(project).set_index("source").loc["human", "n_labelled"] == 2


def test_write_answer_keeps_a_file_nobody_can_read_whole(project: Path) -> None:
    human = annotate(project, {1: "maybe"})
    before = human.read_bytes()
    sheet, path = sheet_of(project)
    with pytest.raises(CafeError, match="value 'maybe' is not an answer"):
        write_answer(human, sheet, path, 2, "yes", None)
    assert human.read_bytes() == before


@pytest.mark.parametrize("name", ["../elsewhere", ".hidden", "a/b", "", "x" * 41, "bob.csv"])
def test_annotator_that_is_not_a_plain_name_is_refused_and_nothing_is_written(project: Path, name: str) -> None:
    before = tree_hashes(project)
    with pytest.raises(CafeError, match="not a plain name"):
        session_of(project, name)
    assert tree_hashes(project) == before


def test_stale_annotation_file_is_refused_before_serving(project: Path) -> None:
    human = annotate(project, {1: "yes"})
    human.write_text(human.read_text().replace("sae000000001", "0ld5ae000000"))
    before = tree_hashes(project)
    with pytest.raises(CafeError, match="from another SAE"):
        session_of(project)
    assert tree_hashes(project) == before


def test_a_sheet_of_another_sae_than_the_features_is_refused_before_any_file_is_made(project: Path) -> None:
    sheet, path = sheet_of(project)
    sheet.assign(sae_fingerprint="0ld5ae000000").to_csv(path, index=False)
    before = tree_hashes(project)
    with pytest.raises(CafeError, match="re-run the sheets step"):
        session_of(project, "dora")
    assert tree_hashes(project) == before


def test_annotators_file_starts_blank_even_when_the_sheet_carries_answers(project: Path) -> None:
    sheet, path = sheet_of(project)
    sheet.assign(non_local="yes", note="from someone else").to_csv(path, index=False)
    session = session_of(project, "alice")
    assert session.human == human_path(project / "data/annotations", LAYER, "alice")
    assert {f["answer"] for f in session.state()["features"]} == {""}


def test_requests_without_the_token_or_host_change_nothing(project: Path) -> None:
    with serving(project, "bob") as server:
        base, token = server.url.split("/?token=")
        human = server.session.human
        before = tree_hashes(project)
        answer = {"feature": 1, "answer": "yes"}
        assert request(f"{base}/api/answer", answer)[0] == 403
        wrong = token[:-1] + ("y" if token.endswith("x") else "x")  # one character off, never the token itself
        assert request(f"{base}/api/answer", answer, {"X-Cafe-Token": wrong})[0] == 403
        assert request(f"{base}/api/answer?token={token}", answer)[0] == 403  # writes need the header
        assert request(f"{base}/api/state")[0] == 403
        assert request(f"{base}/api/answer", answer, {"X-Cafe-Token": token, "Host": "evil.example:80"})[0] == 403
        assert tree_hashes(project) == before
        status, reply = request(f"{base}/api/answer", answer, {"X-Cafe-Token": token})
        assert status == 200 and reply["feature"]["answer"] == "yes"
        assert request(f"{base}/api/answer", {"feature": 99, "answer": "yes"}, {"X-Cafe-Token": token})[0] == 409
        assert request(f"{base}/api/answer", {"feature": 2, "answer": "maybe"}, {"X-Cafe-Token": token})[0] == 409
    after = tree_hashes(project)
    assert {k for k in after if after[k] != before.get(k)} == {human.relative_to(project).as_posix()}


def test_state_hides_the_automatic_score_unless_switched_on(project: Path) -> None:
    hidden = session_of(project).state()["features"]
    assert not any({"score", "suggested"} & set(f) for f in hidden)
    shown = session_of(project, show_score=True).state()["features"]
    assert [f["suggested"] for f in shown].count("non-local") == 3  # the world's non-local features


def wait_for(driver, element_id: str, text: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element("id", element_id).text)


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


@pytest.mark.xdist_group("browser")  # one Chromium at a time under pytest-xdist (tests/worker_units.py)
def test_page_labels_by_keys_resumes_takes_a_note_and_writes_the_csv(
    project: Path, tmp_path: Path, world: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    sheet, _ = sheet_of(project)
    with annotate_server(project, "--layer", str(LAYER), "--annotator", "carol", "--images-root", "images") as url:
        human = project / f"data/annotations/carol/layer{LAYER}.csv"
        with chromium() as driver:
            driver.get(url)
            wait_for(driver, "progress", f"0 / {N_FEATURES} answered")
            assert "feature 0" in driver.find_element("id", "title").text
            for done, key in enumerate("ynuny", start=1):
                press(driver, key)
                wait_for(driver, "progress", f"{done} / {N_FEATURES} answered")
            driver.refresh()
            wait_for(driver, "progress", f"5 / {N_FEATURES} answered")
            wait_for(driver, "title", "feature 5")  # resumed at the first unanswered feature
            press(driver, Keys.ARROW_LEFT)
            wait_for(driver, "title", "feature 4")
            press(driver, "e", "ERF on the other object", Keys.ENTER)
            wait_for(driver, "saved", "note saved")
            before = human.read_bytes()
            status = driver.execute_async_script(
                "const done = arguments[0]; fetch('/api/answer', {method: 'POST', headers: {'Content-Type': "
                "'application/json'}, body: JSON.stringify({feature: 6, answer: 'yes'})}).then(r => done(r.status));"
            )
            assert status == 403 and human.read_bytes() == before
            images = driver.execute_script("return [...document.images].map(i => i.naturalWidth)")
            assert len(images) == 3 * 3 and min(images) > 0  # three targets: image | activation | ERF, all loaded
            driver.save_screenshot(str(tmp_path / "annotate.png"))
    answers = pd.read_csv(human, dtype=str, keep_default_na=False).set_index("feature")
    assert answers["non_local"].tolist() == ["yes", "no", "unsure", "no", "yes", "", "", ""]
    assert answers.loc["4", "note"] == "ERF on the other object"
    assert answers.drop(columns=["non_local", "note"]).equals(
        pd.read_csv(world / f"results/annotation/sheets/layer{LAYER}.csv", dtype=str, keep_default_na=False)
        .set_index("feature")
        .drop(columns=["non_local", "note"])
    )
    assert (tmp_path / "annotate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(sheet) == N_FEATURES
