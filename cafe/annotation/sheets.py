"""The `sheets` step: per layer a sheet CSV (a suggestion per feature), gallery PNGs and an HTML index.

The step reads `data/annotations/` only if told (`--annotations-dir`), never writes there, and is not meant to
declare it as an input: answers already given are carried into the new sheet when the SAE fingerprint matches,
and shown as `stale` in `previous_answer` when it does not, so regenerating loses nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cafe.annotation.config import AnnotationConfig
from cafe.annotation.files import human_path
from cafe.annotation.gallery import load_gallery_images, render_galleries
from cafe.annotation.index import write_index
from cafe.annotation.ingest import read_cells
from cafe.annotation.layer_maps import LayerTargets, read_layer
from cafe.annotation.schema import SHEET_COLUMNS, as_int
from cafe.annotation.score import MapScores, evidence, feature_scores, peak, target_scores
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io import write_csv
from cafe.io.manifest import read_manifest

log = logging.getLogger(__name__)


def _joined(values: np.ndarray, fmt: str) -> str:
    return ";".join(format(v, fmt) for v in values)


def _first_peaks(targets: LayerTargets) -> dict[str, pd.Series]:
    """Activation and ERF peak (row, col) of each feature's first valid target (blank without one, and no
    activation peak where it fires on no patch: a CLS-only firing has none)."""
    has = targets.valid.any(axis=1)
    first = (np.arange(len(has)), targets.valid.argmax(axis=1))
    fires = has & (targets.act[first].reshape(len(has), -1).max(axis=1) > 0)
    act_row, act_col = peak(targets.act[first])
    erf_row, erf_col = peak(evidence(np.nan_to_num(targets.erf[first])))
    named = {
        "act_peak_row": (act_row, fires),
        "act_peak_col": (act_col, fires),
        "erf_peak_row": (erf_row, has),
        "erf_peak_col": (erf_col, has),
    }
    return {name: pd.Series(value).where(mask).astype("Int64") for name, (value, mask) in named.items()}


def build_sheet(targets: LayerTargets, scores: MapScores, threshold: float, galleries: list[str]) -> pd.DataFrame:
    """One row per feature: what a person needs to decide, the automatic suggestion, and empty answer columns."""
    valid = targets.valid
    score = np.round(scores.score, 4)
    sheet = pd.DataFrame({
        "layer": targets.layer,
        "feature": targets.feature,
        "non_local": "",
        "note": "",
        "suggested": np.where(np.isnan(score), "", np.where(score > threshold, "yes", "no")),
        "score": score,
        "previous_answer": "",
        "cls_only": targets.cls_only,
        "max_value": np.round(targets.max_value, 4),
        **_first_peaks(targets),
        "erf_outside": np.round(scores.outside, 4),
        "peak_distance": np.round(scores.distance, 4),
        "top_images": [_joined(targets.image[n, v], "d") for n, v in enumerate(valid)],
        "top_tokens": [_joined(targets.token[n, v], "d") for n, v in enumerate(valid)],
        "top_values": [_joined(targets.value[n, v], ".4g") for n, v in enumerate(valid)],
        "gallery": galleries,
        "sae_fingerprint": targets.fingerprint,
    })  # fmt: skip
    return sheet[list(SHEET_COLUMNS)]


def read_previous(annotations_dir: str | Path | None, layer: int) -> pd.DataFrame | None:
    """The person's file for `layer` as text cells, if there is a readable one (never an error: Fig 5 validates)."""
    if annotations_dir is None or not human_path(annotations_dir, layer).is_file():
        return None
    path = human_path(annotations_dir, layer)
    try:
        cells = read_cells(path)
    except CafeError as exc:
        log.warning("not carrying answers from %s: %s", path, exc)
        return None
    missing = {"feature", "sae_fingerprint", "non_local"} - set(cells.columns)
    if missing:
        log.warning("not carrying answers from %s: it lacks column(s) %s", path, sorted(missing))
        return None
    return cells.reindex(columns=["feature", "sae_fingerprint", "non_local", "note", "previous_answer"], fill_value="")


def carry_answers(sheet: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """Copy answers onto a fresh sheet: as they were for the same SAE, as a `stale (...)` marker for another one."""
    if previous is None:
        return sheet
    sheet = sheet.copy()
    fingerprint = sheet["sae_fingerprint"].iloc[0]
    position = {feature: i for i, feature in enumerate(sheet["feature"])}
    given = previous[(previous["non_local"] != "") | (previous["note"] != "") | (previous["previous_answer"] != "")]
    dropped = 0
    for row in given.drop_duplicates("feature").itertuples():
        i = position.get(as_int(row.feature))
        if i is None:
            dropped += 1
        elif row.sae_fingerprint == fingerprint:
            sheet.loc[i, ["non_local", "note", "previous_answer"]] = [row.non_local, row.note, row.previous_answer]
        elif row.non_local or row.note:
            note = f"; note: {row.note}" if row.note else ""
            sheet.loc[i, "previous_answer"] = f"stale (SAE {row.sae_fingerprint}): {row.non_local or 'blank'}{note}"
    if dropped:
        log.warning("%d answered feature(s) are not in the new sheet (kept in the human file only)", dropped)
    return sheet


def make_sheets(
    layer: int,
    features: Path,
    erf: Path,
    manifest: Path,
    images_root: Path,
    config: AnnotationConfig,
    out_sheet: Path,
    out_galleries: Path,
    out_index: Path,
    annotations_dir: Path | None = None,
) -> pd.DataFrame:
    """Write one layer's galleries, sheet and HTML index; returns the sheet."""
    targets = read_layer(features, erf, layer, config.n_features)
    per_target = target_scores(targets)
    per_feature = feature_scores(per_target, targets.valid)
    galleries = [out_galleries / f"feature{feature:04d}.png" for feature in targets.feature]
    paths = dict(zip(*read_manifest(manifest)[["index", "path"]].to_numpy().T))
    unknown = sorted(set(targets.image[targets.valid].tolist()) - set(paths))
    if unknown:
        raise CafeError(f"{features}: image indices {unknown[:10]} are not in {manifest} (was the manifest remade?)")
    images = load_gallery_images(targets, config.gallery_k, images_root, paths)
    render_galleries(targets, per_target, per_feature, images, galleries, config.gallery_k, config.threshold)
    sheet = build_sheet(targets, per_feature, config.threshold, [p.as_posix() for p in galleries])
    sheet = carry_answers(sheet, read_previous(annotations_dir, targets.layer))
    write_csv(out_sheet, sheet)
    write_index(sheet, out_index, galleries, targets.method)
    n_yes = int((sheet["suggested"] == "yes").sum())
    log.info("layer %d: %d features, %d suggested non-local", targets.layer, len(sheet), n_yes)
    return sheet


def run_sheets(args: argparse.Namespace) -> None:
    config = parse_section(AnnotationConfig, args.params, "annotation")
    make_sheets(
        args.layer,
        args.features,
        args.erf,
        args.manifest,
        args.images_root,
        config,
        args.out_sheet,
        args.out_galleries,
        args.out_index,
        args.annotations_dir,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """`cafe sheets`: one layer's annotation sheet, galleries and HTML index."""
    cmd = subparsers.add_parser("sheets", help="annotation sheet + galleries + HTML index of one layer")
    cmd.add_argument("--layer", type=int, required=True, help="checked against the features and ERF files")
    cmd.add_argument("--features", type=Path, required=True, help="results/features/layer{L}.h5")
    cmd.add_argument("--erf", type=Path, required=True, help="results/erf/layer{L}/attnlrp.h5")
    cmd.add_argument("--manifest", type=Path, required=True, help="results/data/manifest.csv")
    cmd.add_argument("--images-root", type=Path, required=True, help="root the manifest's paths are relative to")
    cmd.add_argument("--params", default="{}", help="the annotation section of params.yaml, as JSON")
    cmd.add_argument("--annotations-dir", type=Path, help="read (never written) to carry answers over; not a DAG input")
    cmd.add_argument("--out-sheet", type=Path, required=True)
    cmd.add_argument("--out-galleries", type=Path, required=True, help="folder for feature{k:04d}.png")
    cmd.add_argument("--out-index", type=Path, required=True)
    cmd.set_defaults(func=run_sheets)
