"""Broken human annotation files: every bad cell is named (file, spreadsheet line, column, value), all at once,
and nothing on disk changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from annotation_world import annotate, fig5, project, tree_hashes, world  # noqa: F401 (fixtures)

from cafe.annotation.schema import parse_answer
from cafe.errors import CafeError

Edit = Callable[[pd.DataFrame], pd.DataFrame]


def _set(row: int, column: str, value: str) -> Edit:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[row, column] = value
        return table

    return edit


BROKEN_EDITS = {
    "unknown column": (lambda t: t.assign(colour="red"), [": column 'colour': unknown column"]),
    "missing column": (lambda t: t.drop(columns="non_local"), [": column 'non_local' is missing"]),
    "bad value": (_set(2, "non_local", "maybe"), [":4: column 'non_local': value 'maybe' is not an answer"]),
    "unknown feature": (_set(5, "feature", "99"), [":7: column 'feature': value '99' is not a feature of the sheet"]),
    "duplicated feature": (
        _set(3, "feature", "2"),
        [
            ":4: column 'feature': value '2' appears more than once",
            ":5: column 'feature': value '2' appears more than once",
        ],
    ),
    "stale fingerprint": (
        _set(0, "sae_fingerprint", "0ld5ae000000"),
        [":2: column 'sae_fingerprint': value '0ld5ae000000' is from another SAE"],
    ),
    "wrong layer": (_set(1, "layer", "7"), [":3: column 'layer': value '7' is not layer 3"]),
}


def break_file(path: Path, edit: Edit) -> None:
    """Apply a person's edit to the human file, saving it as a spreadsheet would."""
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


@pytest.mark.parametrize("case", BROKEN_EDITS)
def test_broken_annotation_names_file_row_column_and_value_and_changes_nothing(project: Path, case: str) -> None:
    edit, expected = BROKEN_EDITS[case]
    human = annotate(project, {1: "yes", 2: "no"})
    break_file(human, edit)
    before = tree_hashes(project)
    with pytest.raises(CafeError) as error:
        fig5(project)
    assert tree_hashes(project) == before
    for text in expected:
        assert f"{human}{text}" in str(error.value)


def test_several_bad_cells_are_reported_at_once_and_earlier_outputs_stay(project: Path) -> None:
    human = annotate(project, {})
    fig5(project)
    for row, column, value in ((0, "non_local", "perhaps"), (4, "feature", "x"), (6, "non_local", "2")):
        break_file(human, _set(row, column, value))
    before = tree_hashes(project)
    with pytest.raises(CafeError, match="3 problem") as error:
        fig5(project)
    assert tree_hashes(project) == before
    message = str(error.value)
    for text in (
        ":2: column 'non_local': value 'perhaps'",
        ":6: column 'feature': value 'x'",
        ":8: column 'non_local': value '2'",
    ):
        assert f"{human}{text}" in message


def test_spreadsheet_quirks_are_accepted_and_blank_lines_still_count(project: Path) -> None:
    human = annotate(project, {1: " YES ", 4: "True"})
    lines = human.read_text().splitlines()
    human.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n\n", encoding="utf-8-sig")  # BOM, blank lines
    assert fig5(project).set_index("source").loc["human", "n_non_local"] == 2
    human.write_text(human.read_text(encoding="utf-8-sig").replace(",True,", ",nope,"))
    with pytest.raises(CafeError, match=r"layer3\.csv:7: column 'non_local': value 'nope'"):
        fig5(project)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("yes", True),
        ("Y", True),
        ("true", True),
        ("1", True),
        ("NO", False),
        ("n", False),
        ("False", False),
        ("0", False),
        ("", None),
        ("  ", None),
        ("unsure", None),
        ("U", None),
    ],
)
def test_answer_forms(text: str, answer: bool | None) -> None:
    assert parse_answer(text) is answer


def test_anything_else_is_not_an_answer() -> None:
    with pytest.raises(ValueError, match="'maybe' is not an answer"):
        parse_answer("maybe")
