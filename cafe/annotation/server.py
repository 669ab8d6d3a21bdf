"""`cafe annotate`: label one layer's features by keyboard in a browser, each answer written to the CSV at once.

A standard-library HTTP server bound to 127.0.0.1 only. A random token made at start is in the printed address;
every request must carry it (query `token` for reads, header `X-Cafe-Token` for writes, which a cross-site page
cannot set without a preflight this server never grants), so another local user or a web page in the same
browser can neither read nor change answers. The only file it writes is the annotator's human file, through
`answers.write_answer` (validated like Fig 5 reads it, one row changed, atomic).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
from PIL import Image

from cafe.annotation.answers import write_answer
from cafe.annotation.config import AnnotationConfig
from cafe.annotation.files import human_path
from cafe.annotation.gallery import blend, load_gallery_images, overlay_cmap, target_views
from cafe.annotation.ingest import annotate_init, read_cells, read_sheet, validate_human
from cafe.annotation.layer_maps import LayerTargets, read_layer
from cafe.annotation.page import render_page
from cafe.annotation.schema import is_unsure, parse_answer
from cafe.config import parse_section
from cafe.errors import CafeError
from cafe.io.manifest import read_manifest
from cafe.manifest.config import DataConfig

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PAGE_SIZE = 224  # pixels per shown image
MAX_TARGETS = 8
MAX_BODY = 16_384
IMAGE_PATH = re.compile(r"/img/(\d+)/(\d+)/(image|act|erf)\.png")
CSP = (
    "default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _answer_text(cell: str) -> str:
    """A file's answer cell as the page shows it: yes, no, unsure or blank."""
    if is_unsure(cell):
        return "unsure"
    label = parse_answer(cell)
    return "" if label is None else "yes" if label else "no"


@dataclass
class Session:
    """One annotator's labelling of one layer: the sheet, the maps and images to show, and the file to write."""

    sheet: pd.DataFrame
    sheet_path: Path
    human: Path
    targets: LayerTargets
    images: dict[int, np.ndarray]
    threshold: float
    show_score: bool
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    lock: threading.Lock = field(default_factory=threading.Lock)
    pngs: dict[tuple[int, int, str], bytes] = field(default_factory=dict)

    @cached_property
    def rows(self) -> dict[int, int]:
        """Feature id -> row of `targets`."""
        return {int(feature): n for n, feature in enumerate(self.targets.feature)}

    def shown(self, n: int) -> np.ndarray:
        """The target columns shown for feature row `n` (its first valid ones)."""
        return np.flatnonzero(self.targets.valid[n])[:MAX_TARGETS]

    def _targets_of(self, n: int) -> list[dict]:
        cols = self.shown(n)
        views = target_views(self.targets, n, cols)
        return [
            {
                "image": int(self.targets.image[n, j]),
                "value": f"{self.targets.value[n, j]:.3g}",
                "at": self.targets.layout.label(int(self.targets.token[n, j])),
                "act_peak": views.act_peaks[slot],
                "erf_peak": views.erf_peaks[slot],
            }
            for slot, j in enumerate(cols)
        ]

    def _answers(self) -> dict[int, tuple[str, str]]:
        """Feature -> (answer, note) as the file holds them now (re-read: hand edits show on reload)."""
        validate_human(self.human, self.sheet, self.sheet_path)
        cells = read_cells(self.human).reindex(columns=["feature", "non_local", "note"], fill_value="")
        return {int(r.feature): (_answer_text(r.non_local), r.note) for r in cells.itertuples()}

    def _feature(self, row: pd.Series, answers: dict[int, tuple[str, str]]) -> dict:
        feature = int(row["feature"])
        answer, note = answers.get(feature, ("", ""))
        entry = {"feature": feature, "cls_only": bool(row["cls_only"]), "answer": answer, "note": note}
        if self.show_score:
            score = None if pd.isna(row["score"]) else float(row["score"])
            suggested = "non-local" if score is not None and score > self.threshold else "local"
            entry |= {"score": score, "suggested": suggested}
        return entry

    def state(self) -> dict:
        """Everything the page needs except pixels."""
        answers = self._answers()
        features = [
            self._feature(row, answers) | {"targets": self._targets_of(self.rows[int(row["feature"])])}
            for _, row in self.sheet.iterrows()
        ]
        return {
            "layer": self.targets.layer,
            "grid": self.targets.grid,
            "file": self.human.as_posix(),
            "show_score": self.show_score,
            "threshold": self.threshold,
            "features": features,
        }

    def answer(self, feature: int, answer: str | None, note: str | None) -> dict:
        """Write one answer and/or note; returns the feature's entry as the file now holds it."""
        with self.lock:
            write_answer(self.human, self.sheet, self.sheet_path, feature, answer, note)
            row = self.sheet[self.sheet["feature"] == feature].iloc[0]
            return self._feature(row, self._answers())

    def png(self, feature: int, slot: int, kind: str) -> bytes | None:
        """One shown image (plain, with its activation map, or with its ERF) as PNG; None if there is none."""
        n = self.rows.get(feature)
        if n is None or slot >= len(self.shown(n)):
            return None
        key = (feature, slot, kind)
        if key not in self.pngs:
            cols = self.shown(n)
            pixels = self.images[int(self.targets.image[n, cols[slot]])]
            if kind != "image":
                views = target_views(self.targets, n, cols[slot : slot + 1])
                pixels = blend(pixels, (views.heat_act if kind == "act" else views.heat_erf)[0], overlay_cmap())
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            self.pngs[key] = buffer.getvalue()
        return self.pngs[key]


def open_session(
    layer: int,
    sheets_dir: Path,
    annotations_dir: Path,
    annotator: str | None,
    features: Path,
    erf: Path,
    manifest: Path,
    images_root: Path,
    threshold: float = 0.5,
    show_score: bool = False,
) -> Session:
    """Check everything before serving: the sheet, the annotator's file (started from the sheet when absent;
    refused when stale or broken), and that features and ERF maps are of the sheet's SAE."""
    sheet_path = Path(sheets_dir) / f"layer{layer}.csv"
    sheet = read_sheet(sheet_path)
    human = human_path(annotations_dir, layer, annotator)
    targets = read_layer(features, erf, layer, len(sheet))
    fingerprint = str(sheet["sae_fingerprint"].iloc[0])
    if targets.fingerprint != fingerprint or list(targets.feature) != list(sheet["feature"]):
        raise CafeError(
            f"{sheet_path} (SAE {fingerprint}) does not match {features} (SAE {targets.fingerprint}): "
            "re-run the sheets step so that people label what the pipeline analyses"
        )
    if not human.exists():
        annotate_init(layer, sheets_dir, annotations_dir, annotator)
    validate_human(human, sheet, sheet_path)
    paths = dict(zip(*read_manifest(manifest)[["index", "path"]].to_numpy().T))
    images = load_gallery_images(targets, MAX_TARGETS, images_root, paths, PAGE_SIZE)
    return Session(sheet, sheet_path, human, targets, images, threshold, show_score)


class Handler(BaseHTTPRequestHandler):
    """Serves the page, the state, images, and answers; refuses any request without the session's token."""

    session: Session
    server_version = "cafe-annotate"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _allowed(self, token: str | None) -> bool:
        """The right token, sent to this server by its own name (no DNS rebinding through another host name)."""
        port = self.server.server_address[1]
        host_ok = self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")
        if host_ok and token is not None and secrets.compare_digest(token.encode(), self.session.token.encode()):
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token: open the address cafe annotate printed"})
        return False

    def do_GET(self) -> None:
        """The page, /api/state, or one image."""
        url = urlsplit(self.path)
        if not self._allowed(parse_qs(url.query).get("token", [None])[0]):
            return
        image = IMAGE_PATH.fullmatch(url.path)
        if url.path == "/":
            page = self.server.page.encode()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif url.path == "/api/state":
            try:
                self._json(HTTPStatus.OK, self.session.state())
            except CafeError as exc:
                self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
        elif image and (png := self.session.png(int(image[1]), int(image[2]), image[3])) is not None:
            self._send(HTTPStatus.OK, png, "image/png", cache=True)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {url.path}"})

    def do_POST(self) -> None:
        """/api/answer with JSON {feature, answer?, note?}."""
        if not self._allowed(self.headers.get("X-Cafe-Token")):
            return
        if urlsplit(self.path).path != "/api/answer":
            self._json(HTTPStatus.NOT_FOUND, {"error": "POST only to /api/answer"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY or self.headers.get_content_type() != "application/json":
                raise ValueError("expected a JSON body")
            body = json.loads(self.rfile.read(length))
            feature, answer, note = int(body["feature"]), body.get("answer"), body.get("note")
            if not all(value is None or isinstance(value, str) for value in (answer, note)):
                raise ValueError("answer and note must be text")
        except (ValueError, KeyError, TypeError) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request: {exc}"})
            return
        try:
            self._json(HTTPStatus.OK, {"feature": self.session.answer(feature, answer, note)})
        except CafeError as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc)})


class AnnotationServer(ThreadingHTTPServer):
    """The labelling server of one session, bound to 127.0.0.1."""

    daemon_threads = True

    def __init__(self, session: Session, port: int = 0):
        handler = type("SessionHandler", (Handler,), {"session": session})
        super().__init__((HOST, port), handler)
        self.session = session
        self.page = render_page(session.targets.layer, html.escape(session.targets.method))

    @property
    def url(self) -> str:
        """The address to open, with the token."""
        return f"http://{HOST}:{self.server_address[1]}/?token={self.session.token}"


def _params_section(params: Path, cls: type, section: str) -> Any:
    """One section of params.yaml with its defaults filled in (the values the pipeline ran with)."""
    import yaml

    raw = yaml.safe_load(params.read_text()) if params.is_file() else {}
    return parse_section(cls, (raw or {}).get(section), section)


def _default_images_root(params: Path) -> Path:
    """data.images of params.yaml, default filled in (the images the pipeline read), run from the project root."""
    return Path(_params_section(params, DataConfig, "data").images)


def _threshold(params: Path) -> float:
    """annotation.threshold of params.yaml, default filled in."""
    return _params_section(params, AnnotationConfig, "annotation").threshold


def run_annotate(args: argparse.Namespace) -> None:
    layer = args.layer
    session = open_session(
        layer,
        args.sheets_dir,
        args.annotations_dir,
        args.annotator,
        args.features or Path(f"results/features/layer{layer}.h5"),
        args.erf or Path(f"results/erf/layer{layer}/attnlrp.h5"),
        args.manifest,
        args.images_root or _default_images_root(args.params_file),
        _threshold(args.params_file),
        args.show_score,
    )
    try:
        server = AnnotationServer(session, args.port)
    except OSError as exc:
        raise CafeError(f"cannot listen on {HOST}:{args.port} ({exc}); pick another --port") from exc
    print(f"cafe annotate: layer {layer} -> {session.human}\n  open {server.url}\n  (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(subparsers: argparse._SubParsersAction) -> None:
    """`cafe annotate`: the keyboard labelling page of one layer."""
    cmd = subparsers.add_parser("annotate", help="label a layer's features in a browser (local server, keys y/n/u)")
    cmd.add_argument("--layer", type=int, required=True)
    cmd.add_argument("--annotator", help="a plain name: answers go to data/annotations/<name>/layer{L}.csv")
    cmd.add_argument("--port", type=int, default=8765, help="0 = any free port")
    cmd.add_argument("--show-score", action="store_true", help="show the automatic score (hidden: it biases people)")
    cmd.add_argument("--open", action="store_true", help="open the page in the default browser")
    cmd.add_argument("--sheets-dir", type=Path, default=Path("results/annotation/sheets"))
    cmd.add_argument("--annotations-dir", type=Path, default=Path("data/annotations"))
    cmd.add_argument("--features", type=Path, help="default results/features/layer{L}.h5")
    cmd.add_argument("--erf", type=Path, help="default results/erf/layer{L}/attnlrp.h5")
    cmd.add_argument("--manifest", type=Path, default=Path("results/data/manifest.csv"))
    cmd.add_argument("--images-root", type=Path, help="default: data.images of --params-file")
    cmd.add_argument("--params-file", type=Path, default=Path("params.yaml"), help="for data.images and the threshold")
    cmd.set_defaults(func=run_annotate)
