"""Human annotation files: start one from a sheet, find every annotator's file, and read one back validated.

One person: `data/annotations/layer{L}.csv`; several: `data/annotations/<name>/layer{L}.csv` (both may coexist: the
top-level file counts as one more annotator).

Reading never writes: a malformed file raises a CafeError listing every bad cell (file, spreadsheet line, column,
value) at once, so one fix-and-rerun round is enough.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from cafe.annotation.files import human_path
from cafe.annotation.schema import as_int, describe_failures, human_schema, is_unsure, parse_answer
from cafe.errors import CafeError
from cafe.io import write_text

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("sae_fingerprint", "non_local", "note", "previous_answer")


def read_cells(path: Path) -> pd.DataFrame:
    """A CSV as stripped text cells; the index stays the data row number (line = index + 2), blank lines dropped."""
    try:
        cells = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CafeError(f"{path}: not a readable CSV ({exc}); save it as comma-separated UTF-8 text") from exc
    cells = cells.apply(lambda column: column.str.strip())
    return cells[(cells != "").any(axis=1)]


def read_sheet(path: str | Path) -> pd.DataFrame:
    """A generated sheet, checked for the columns that identify it."""
    path = Path(path)
    if not path.is_file():
        raise CafeError(f"{path}: sheet not found (run the sheets step first)")
    sheet = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    text = [name for name in TEXT_COLUMNS if name in sheet]
    sheet[text] = sheet[text].fillna("")
    missing = sorted({"layer", "feature", "sae_fingerprint", "score"} - set(sheet.columns))
    if missing or sheet.empty:
        raise CafeError(f"{path}: not an annotation sheet (missing {missing or 'rows'}); re-run the sheets step")
    return sheet


def validate_human(path: Path, sheet: pd.DataFrame, sheet_path: Path) -> pd.DataFrame:
    """A human file checked against its sheet, as (feature, non_local True/False/None, unsure, note); CafeError if
    bad. `unsure` marks rows the person looked at without deciding (non_local None, but answered)."""
    cells = read_cells(path)
    layer, fingerprint = int(sheet["layer"].iloc[0]), str(sheet["sae_fingerprint"].iloc[0])
    schema = human_schema(layer, set(sheet["feature"]), fingerprint, sheet_path)
    try:
        schema.validate(cells, lazy=True)
    except pa.errors.SchemaErrors as exc:
        lines = describe_failures(path, exc.failure_cases)
        raise CafeError(f"{path}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None
    notes = cells["note"] if "note" in cells else pd.Series("", index=cells.index)
    return pd.DataFrame({
        "feature": cells["feature"].map(as_int).astype(int),
        "non_local": cells["non_local"].map(parse_answer).astype(object),
        "unsure": cells["non_local"].map(is_unsure).astype(bool),
        "note": notes,
    }).reset_index(drop=True)  # fmt: skip


def annotate_init(
    layer: int, sheets_dir: str | Path, annotations_dir: str | Path, annotator: str | None = None
) -> Path:
    """Copy the layer's sheet to the (annotator's) human file, refusing to replace answers already there."""
    source, target = Path(sheets_dir) / f"layer{layer}.csv", human_path(annotations_dir, layer, annotator)
    exists = CafeError(
        f"{target} already exists and holds your answers; it was left as it is. To start again from "
        f"the current sheet, move it away first (git keeps the old version), then re-run annotate-init"
    )
    if target.exists():
        raise exists
    if not source.is_file():
        raise CafeError(f"{source}: sheet not found; generate the sheets first (see docs/annotating.md)")
    text = source.read_text()
    if annotator is not None:  # the sheet carries the top-level file's answers: another person starts blank
        sheet = pd.read_csv(source, dtype=str, keep_default_na=False)
        sheet[[c for c in ("non_local", "note", "previous_answer") if c in sheet]] = ""
        text = sheet.to_csv(index=False)
    try:
        write_text(target, text, replace=False)  # a file created since the check above is kept too
    except FileExistsError:
        raise exists from None
    log.info("started %s from %s: fill the non_local column (yes/no), then commit it", target, source)
    return target


def run_annotate_init(args: argparse.Namespace) -> None:
    annotate_init(args.layer, args.sheets_dir, args.annotations_dir, args.annotator)


def register(subparsers: argparse._SubParsersAction) -> None:
    """`cafe annotate-init`: start a person's annotation file from a generated sheet."""
    cmd = subparsers.add_parser("annotate-init", help="copy a layer's sheet to data/annotations/ (never over a file)")
    cmd.add_argument("--layer", type=int, required=True)
    cmd.add_argument("--sheets-dir", type=Path, default=Path("results/annotation/sheets"))
    cmd.add_argument("--annotations-dir", type=Path, default=Path("data/annotations"))
    cmd.add_argument("--annotator", help="a plain name: write data/annotations/<name>/layer{L}.csv (several people)")
    cmd.set_defaults(func=run_annotate_init)
