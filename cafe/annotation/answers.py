"""Write one person's answer into their annotation file: only that row's `non_local`/`note` cells change.

The file is checked by the same validation Fig 5 applies before every write (a stale or broken file is refused,
not extended), cells of every other row and column are written back as they were read, and the new file replaces
the old one atomically, so a crash leaves either the old or the new file, never half of one. Other records keep
their exact text (a spreadsheet's quoting, number formats, line endings).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cafe.annotation.ingest import validate_human
from cafe.annotation.schema import as_int
from cafe.errors import CafeError
from cafe.io import atomic_path

ANSWERS = ("yes", "no", "unsure", "")
NOTE_MAX = 500
BOM = "\ufeff"


def clean_note(text: str) -> str:
    """A note as one line of at most NOTE_MAX characters (a spreadsheet row stays one row)."""
    return " ".join(text.split())[:NOTE_MAX]


@dataclass
class Record:
    """One CSV record: its cells, and its text exactly as in the file (written back unchanged unless edited)."""

    cells: list[str]
    raw: str
    edited: bool = False

    def text(self) -> str:
        """The record as it goes back to the file: as read, or re-quoted with its own line ending."""
        if not self.edited:
            return self.raw
        ending = "\r\n" if self.raw.endswith("\r\n") else "\n" if self.raw.endswith("\n") else ""
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator=ending).writerow(self.cells)
        return out.getvalue()


def _read_records(path: Path) -> tuple[list[Record], str]:
    """The file's records with their raw text, and its byte-order mark."""
    text = path.read_bytes().decode("utf-8")
    bom = BOM if text.startswith(BOM) else ""
    lines = re.split(r"(?<=\n)", text[len(bom) :])
    reader, records, start = csv.reader(iter(lines)), [], 0
    for cells in reader:
        records.append(Record(cells, "".join(lines[start : reader.line_num])))
        start = reader.line_num
    return records, bom


def _column(header: Record, name: str) -> int:
    """Index of column `name`, appended to the header when the person deleted an optional column."""
    names = [cell.strip() for cell in header.cells]
    if name in names:
        return names.index(name)
    header.cells.append(name)
    header.edited = True
    return len(header.cells) - 1


def _set(record: Record, at: int, value: str) -> None:
    record.cells.extend([""] * (at + 1 - len(record.cells)))
    record.cells[at] = value
    record.edited = True


def _feature_record(records: list[Record], feature: int, layer: int, fingerprint: str) -> Record:
    """The record of `feature` (validated unique), or a new one appended when the person deleted it."""
    at = _column(records[0], "feature")
    for record in records[1:]:
        if len(record.cells) > at and as_int(record.cells[at].strip()) == feature:
            return record
    ending = "\r\n" if records[0].raw.endswith("\r\n") else "\n"
    if records[-1].raw and not records[-1].raw.endswith("\n"):
        records[-1].raw += ending
    record = Record([], ending)
    for name, value in (("layer", layer), ("feature", feature), ("sae_fingerprint", fingerprint)):
        _set(record, _column(records[0], name), str(value))
    records.append(record)
    return record


def write_answer(
    path: Path, sheet: pd.DataFrame, sheet_path: Path, feature: int, answer: str | None, note: str | None
) -> None:
    """Set `feature`'s answer (yes/no/unsure/blank) and/or note in the human file `path`; None leaves a cell as is."""
    if answer is not None and answer not in ANSWERS:
        raise CafeError(f"answer {answer!r} for feature {feature}: expected one of {ANSWERS}")
    if feature not in set(sheet["feature"]):
        raise CafeError(f"feature {feature} is not in the sheet {sheet_path}")
    validate_human(path, sheet, sheet_path)  # refuse a stale or broken file rather than write into it
    records, bom = _read_records(path)
    layer, fingerprint = int(sheet["layer"].iloc[0]), str(sheet["sae_fingerprint"].iloc[0])
    record = _feature_record(records, feature, layer, fingerprint)
    for name, value in (("non_local", answer), ("note", None if note is None else clean_note(note))):
        if value is not None:
            _set(record, _column(records[0], name), value)
    with atomic_path(path) as tmp:
        tmp.write_bytes((bom + "".join(r.text() for r in records)).encode("utf-8"))
