"""A static HTML page per layer: every feature's gallery beside its sheet row, openable from disk (no server)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from cafe.io import write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
nav a { display: inline-block; margin: 2px; padding: 1px 5px; border-radius: 3px; background: #eee; color: #222;
        text-decoration: none; font-size: 0.85em; }
nav a.yes { background: #f4c7c3; }
section { border-top: 1px solid #ccc; padding: 0.8em 0; display: flex; gap: 1.2em; align-items: flex-start; }
section img { max-width: 70vw; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { text-align: left; padding: 1px 6px; border-bottom: 1px solid #eee; }
.yes h2 { color: firebrick; }
h2 { font-size: 1.05em; margin: 0 0 0.4em 0; }
"""


def _row_table(row: pd.Series) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in row.items())
    return f"<table>{cells}</table>"


def _section(row: pd.Series, image: str) -> str:
    row = row.fillna("")
    suggested = row["suggested"] or "no suggestion"
    answer = f" · answered: {html.escape(str(row['non_local']))}" if row["non_local"] else ""
    return (
        f'<section id="f{row["feature"]:04d}" class="{row["suggested"]}"><div>'
        f"<h2>feature {row['feature']}: suggests {suggested} (score {row['score']}){answer}</h2>"
        f'<img src="{html.escape(image)}" loading="lazy" alt="gallery of feature {row["feature"]}"></div>'
        f"{_row_table(row)}</section>"
    )


def write_index(sheet: pd.DataFrame, path: str | Path, galleries: list[Path], method: str) -> None:
    """Write `path` linking each gallery relative to the page, so the results folder can be opened anywhere."""
    path = Path(path)
    layer = int(sheet["layer"].iloc[0])
    images = [Path(os.path.relpath(g, path.parent)).as_posix() for g in galleries]
    n_yes = int((sheet["suggested"] == "yes").sum())
    fingerprint = str(sheet["sae_fingerprint"].iloc[0])
    links = "".join(f'<a class="{r.suggested}" href="#f{r.feature:04d}">{r.feature}</a>' for r in sheet.itertuples())
    body = "\n".join(_section(row, image) for (_, row), image in zip(sheet.iterrows(), images))
    write_text(
        path,
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Layer {layer}: non-local SAE features</title>
<style>{STYLE}</style></head><body>
<h1>Layer {layer}: is each feature non-local?</h1>
<p>Each gallery shows a feature's top images twice: with its activation map (left) and with its ERF
({html.escape(method)}, right); ○ marks the activation peak, × the ERF peak. Mark <b>non_local = yes</b> when the
top-activation patches are spatially inconsistent with the ERF. Answer in
<code>data/annotations/layer{layer}.csv</code> (see docs/annotating.md); the automatic suggestion is a hint,
you decide.</p>
<p>{len(sheet)} features, {n_yes} suggested non-local (highlighted). SAE {html.escape(fingerprint)}.</p>
<nav>{links}</nav>
{body}
</body></html>
""",
    )
