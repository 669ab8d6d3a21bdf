"""The sheet's columns and the pandera schema a human annotation file must pass before Fig 5 reads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

SHEET_COLUMNS = (
    "layer", "feature", "non_local", "note", "suggested", "score", "previous_answer", "cls_only", "max_value",
    "act_peak_row", "act_peak_col", "erf_peak_row", "erf_peak_col", "erf_outside", "peak_distance",
    "top_images", "top_tokens", "top_values", "gallery", "sae_fingerprint",
)  # fmt: skip
REQUIRED_COLUMNS = ("layer", "feature", "sae_fingerprint", "non_local")
YES, NO, UNSURE = ("yes", "y", "true", "1"), ("no", "n", "false", "0"), ("unsure", "u")
ANSWER_FORMS = "yes/no, y/n, true/false or 1/0 (any case), unsure/u = looked at, no decision, blank = not yet"


def parse_answer(text: str) -> bool | None:
    """A person's answer as True/False, None when blank or unsure; raises ValueError for anything else."""
    value = text.strip().lower()
    if value in YES or value in NO:
        return value in YES
    if value == "" or value in UNSURE:
        return None
    raise ValueError(f"{text!r} is not an answer ({ANSWER_FORMS})")


def is_unsure(text: str) -> bool:
    """Whether a cell says the person looked and could not decide (answered, but no label)."""
    return text.strip().lower() in UNSURE


def as_int(text: str) -> int | None:
    """An integer cell, or None if the text is not one."""
    try:
        return int(text)
    except ValueError:
        return None


def _is_answer(text: str) -> bool:
    try:
        parse_answer(text)
    except ValueError:
        return False
    return True


def _cells(test: Callable[[str], bool], error: str) -> pa.Check:
    """A per-cell check whose failure message (after the value) says what is wrong."""
    return pa.Check(test, element_wise=True, error=error)


def _unique(cells: pd.Series) -> pd.Series:
    numbers = cells.map(as_int)
    return numbers.isna() | ~numbers.duplicated(keep=False)


def human_schema(layer: int, features: set[int], fingerprint: str, sheet: Path) -> pa.DataFrameSchema:
    """Schema of `data/annotations/layer{L}.csv` against its sheet: every cell is text as the person typed it."""
    columns = {name: pa.Column(str, required=name in REQUIRED_COLUMNS) for name in SHEET_COLUMNS}
    columns["layer"] = pa.Column(str, _cells(lambda v: as_int(v) == layer, f"is not layer {layer}"))
    columns["feature"] = pa.Column(str, [
        _cells(lambda v: as_int(v) in features, f"is not a feature of the sheet {sheet}"),
        pa.Check(_unique, error="appears more than once (one row per feature)"),
    ])  # fmt: skip
    columns["sae_fingerprint"] = pa.Column(str, _cells(
        lambda v: v == fingerprint,
        f"is from another SAE than the sheet's ({fingerprint}): the answer is stale, see docs/annotating.md",
    ))  # fmt: skip
    columns["non_local"] = pa.Column(str, _cells(_is_answer, f"is not an answer ({ANSWER_FORMS})"))
    return pa.DataFrameSchema(columns, strict=True)


def describe_failures(path: Path, failures: pd.DataFrame) -> list[str]:
    """One line per bad cell or column, as `file:line: column 'c': value 'v' <why>` (the header is line 1)."""
    lines = []
    for case in failures.itertuples():
        if case.check == "column_in_schema":
            allowed = ", ".join(SHEET_COLUMNS)
            lines.append((0, f"{path}: column {case.failure_case!r}: unknown column (allowed: {allowed})"))
        elif case.check == "column_in_dataframe":
            required = ", ".join(REQUIRED_COLUMNS)
            lines.append((0, f"{path}: column {case.failure_case!r} is missing (required: {required})"))
        else:
            line = int(case.index) + 2
            lines.append((line, f"{path}:{line}: column {case.column!r}: value {case.failure_case!r} {case.check}"))
    return [text for _, text in sorted(lines, key=lambda item: item[0])]
