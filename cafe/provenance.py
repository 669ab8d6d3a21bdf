"""What made each product: a record beside it (`<product>.prov.json`), written by the `cafe` command that made it,
and `cafe verify`, which compares every record with what the current params, inputs and code would record.

A record holds the step, the params it used (by their params.yaml key), the MD5 of each input, the MD5 of each
cafe module the step had imported (its code version) and the product's own MD5. A directory's MD5 is that of
its listing (relative path and MD5 of each file; records and Snakemake's time markers left out). A product is
current when its bytes, params, code and inputs agree with its record and every input that is a product is
current itself; an absent product (activations are not kept by DVC) is stood for by its record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cafe.errors import CafeError
from cafe.io import write_json, write_text
from cafe.io.hashes import HASH_CACHE, HashCache

SUFFIX = ".prov.json"
TIMESTAMP = ".snakemake_timestamp"  # Snakemake's time marker of a directory output: not content
PACKAGE = Path(__file__).resolve().parent
BOOKKEEPING = {"cafe/cli.py", "cafe/__main__.py", "cafe/provenance.py"}  # not the code of any step


@dataclass(frozen=True)
class Step:
    """How a command's arguments name its products, inputs and params (dest -> params.yaml key)."""

    outputs: Callable[[argparse.Namespace], list[str]]
    inputs: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()


def dests(*names: str) -> Callable[[argparse.Namespace], list[str]]:
    """Outputs given by these arguments (each a path or a list of paths)."""
    return lambda args: [str(p) for name in names for p in as_list(getattr(args, name))]


def as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


MODEL = (("backbone", "backbone"), ("images_root", "data.images"))
QUALITATIVE = Step(
    dests("out_figure", "out_table"),
    ("sheets", "features", "erf", "manifest", "images_root", "annotations_dir"),
    (("params", "annotation"), ("images_root", "data.images")),
)
STEPS: dict[str, Step] = {
    "demo-data": Step(
        lambda a: [f"{a.out}/images", f"{a.out}/objects.csv", f"{a.out}/masks.h5"], (), (("params", "demo"),)
    ),
    "train-demo-backbone": Step(
        dests("out", "metrics"), ("images",), (("params", "demo.backbone"), ("model", "backbone.model"))
    ),
    "manifest": Step(dests("out", "skipped"), ("params",), (("params", "data"),)),
    "activations": Step(
        lambda a: [f"{a.out_dir}/layer{layer}.h5" for layer in a.layers],
        ("manifest", "skipped", "backbone", "images_root"),
        (("params", "activations"), ("layers", "layers"), ("precision", "precision:activations"), *MODEL),
    ),
    "sae": Step(dests("out", "metrics"), ("activations",), (("params", "sae"), ("precision", "precision:sae"))),
    "sae-import": Step(
        dests("out", "metrics"),
        ("activations", "source"),
        (("format", "sae.source.format"), ("options", "sae.source.options")),
    ),
    "sae-summary": Step(dests("out"), ("metrics",)),
    "features": Step(dests("out"), ("activations", "sae"), (("params", "features"),)),
    "erf": Step(
        dests("out"),
        ("features", "sae", "manifest", "backbone", "images_root"),
        (("params", "erf"), ("precision", "precision:erf"), *MODEL),
    ),
    "insertion": Step(
        dests("out"),
        ("erf", "features", "sae", "manifest", "backbone", "images_root"),
        (("params", "insertion"), ("precision", "precision:insertion"), *MODEL),
    ),
    "greedy": Step(
        dests("out"),
        ("features", "sae", "manifest", "backbone", "images_root"),
        (("params", "insertion"), ("precision", "precision:insertion"), *MODEL),
    ),
    "fig3": Step(dests("out_table", "out_figure", "metrics"), ("curves", "greedy"), (("params", "insertion"),)),
    "ground-truth": Step(
        dests("out_targets", "out_table", "out_figure", "metrics"),
        ("features", "erf_dir", "manifest", "objects", "masks"),
        (("params", "ground_truth"), ("layers", "layers"), ("methods", "erf.methods")),
    ),
    "counterfactuals": Step(
        dests("out"),
        ("features", "sae", "manifest", "objects", "masks", "backbone"),
        (("params", "ground_truth"), ("backbone", "backbone")),
    ),
    "compositional": Step(
        dests("out_targets", "out_table", "out_figure", "metrics"),
        ("counterfactuals", "features", "erf_dir", "objects", "masks"),
        (("params", "ground_truth"), ("layers", "layers"), ("methods", "erf.methods")),
    ),
    # the sheets read data/annotations only to carry answers over: not an input (an edit reruns Fig 5 alone)
    "sheets": Step(
        dests("out_sheet", "out_galleries", "out_index"),
        ("features", "erf", "manifest", "images_root"),
        (("params", "annotation"), ("images_root", "data.images")),
    ),
    "fig5": Step(
        dests("out_figure", "out_table", "metrics"), ("sheets", "annotations_dir"), (("params", "annotation"),)
    ),
    "fig1": QUALITATIVE,
    "fig4": QUALITATIVE,
}


# --- content hashes ---


def content_md5(path: Path, hashes: HashCache) -> str:
    """MD5 of a file, or of a directory's listing (relative path and MD5 of each file, records left out)."""
    if not path.is_dir():
        return hashes.md5(path)
    listing = [
        (file.relative_to(path).as_posix(), hashes.md5(file))
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != TIMESTAMP and not file.name.endswith(SUFFIX)
    ]
    return hashlib.md5(json.dumps(listing).encode()).hexdigest() + ".dir"


def record_path(product: str | os.PathLike) -> Path:
    return Path(str(product).rstrip("/") + SUFFIX)


def code_files(modules: Iterable[str]) -> list[str]:
    """The cafe modules among `modules` (those the step had imported), as repository paths."""
    found = set()
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None) or ""
        if file and Path(file).resolve().is_relative_to(PACKAGE):
            found.add(Path(file).resolve().relative_to(PACKAGE.parent).as_posix())
    return sorted(found - BOOKKEEPING)


def code_md5s(files: Iterable[str], hashes: HashCache) -> dict[str, str | None]:
    return {name: hashes.md5(PACKAGE.parent / name) if (PACKAGE.parent / name).is_file() else None for name in files}


# --- which content each product had when a cafe command made it here (.cafe/, git- and DVC-ignored) ---

MADE_HERE = Path(".cafe/made")


def made_here_path(root: Path, product: str) -> Path:
    return root / MADE_HERE / hashlib.md5(product.encode()).hexdigest()


def note_made_here(root: Path, records: dict[str, str]) -> None:
    """Remember the content (MD5) each product had when made (or marked up to date) in this checkout: Snakemake's
    own record of it is then of this content."""
    for product, md5 in records.items():
        write_text(made_here_path(root, product), json.dumps([product, md5]))


def made_here(root: Path, product: str, md5: str) -> bool:
    """Whether the product's content (MD5) is what a cafe command made in this checkout."""
    try:
        return json.loads(made_here_path(root, product).read_text())[1] == md5
    except (OSError, ValueError, IndexError):
        return False


def file_times(path: Path) -> list[float]:
    """Modification times of a file, or of every file in a folder (records left out; the folder's own if none)."""
    if not path.is_dir():
        return [path.stat().st_mtime]
    times = [f.stat().st_mtime for f in path.rglob("*") if f.is_file() and not f.name.endswith(SUFFIX)]
    return times or [path.stat().st_mtime]


# --- writing records (after a command succeeds) ---


def arg_inputs(step: Step, args: argparse.Namespace) -> list[str]:
    """Paths the step read: its input arguments, the backbone checkpoint file, and the image folder (an argument,
    or data.images for the manifest) where it is a product (the demo's scenes; a user's folder is a param)."""
    paths = []
    for name in step.inputs:
        for value in as_list(getattr(args, name, None)):
            if name == "backbone":
                pretrained = json.loads(value).get("pretrained") or ""
                paths += [pretrained] if Path(pretrained).is_file() else []
            elif name in ("images_root", "params"):  # the image folder, an input where a step made it (the demo)
                folder = json.loads(value).get("images", "") if name == "params" else str(value)
                paths += [folder] if record_path(folder).is_file() else []
            else:
                paths.append(str(value))
    return paths


def arg_params(step: Step, args: argparse.Namespace) -> dict[str, Any]:
    """The params the step ran with, by their params.yaml key (JSON arguments parsed)."""
    found = {}
    for name, key in step.params:
        value = getattr(args, name, None)
        if isinstance(value, str) and name in ("params", "backbone", "options"):
            value = json.loads(value)
        found[key] = [int(v) if name == "layers" else v for v in value] if isinstance(value, list) else value
    return json.loads(json.dumps(found, default=str))  # paths as text


def digest(value: Any) -> str:
    """A short hash of a record's part (what `dvc metrics show` and `dvc exp show` display)."""
    return hashlib.md5(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def summary(record: dict[str, Any]) -> dict[str, str]:
    """A record in short: its step and the hashes of its params, inputs and code (what `dvc metrics show` displays
    of a JSON product, and the HTML report beside each of its items)."""
    return {"step": record["step"], **{part: digest(record[part]) for part in ("params", "inputs", "code")}}


def stamp_json(path: Path, record: dict[str, Any]) -> None:
    """Give a JSON product (the metrics DVC shows) a `provenance` block: the summary of its record."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data["provenance"] = summary(record)
        write_json(path, data)


def flat(value: Any, key: str) -> Iterator[str]:
    """`key=value` for every leaf of a params value (a section's keys joined with dots)."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from flat(item, f"{key}.{name}")
    else:
        yield f"{key}={json.dumps(value)}"


def report_labels(product: str | os.PathLike) -> dict[str, str]:
    """What the HTML report shows beside a product: its record (`<product>.prov.json`, the file `cafe verify`
    reads) in full, each part after the short hash `dvc metrics show` gives of it."""
    try:
        record = json.loads(record_path(product).read_text())
    except (OSError, ValueError):
        return {"product": Path(product).name, "record": f"none readable at {record_path(product)} (cafe verify)"}
    short = summary(record)
    params = [line for key, value in record["params"].items() for line in flat(value, key)]
    return {
        "product": Path(product).name,
        "step": record["step"],
        "params": f"[{short['params']}] " + "; ".join(params),
        "inputs": f"[{short['inputs']}] " + "; ".join(f"{k} {v[:12]}" for k, v in record["inputs"].items()),
        "code": f"[{short['code']}] " + "; ".join(f"{k} {(v or 'absent')[:12]}" for k, v in record["code"].items()),
        "md5": record["md5"],
    }


def write_records(args: argparse.Namespace, modules: Iterable[str], hash_cache: str | os.PathLike = HASH_CACHE) -> None:
    """Beside every product of the command that just ran, a record of what made it (atomic, one per product);
    `modules`: what the step had imported when it finished."""
    step = STEPS.get(args.command)
    if step is None:
        return
    files = code_files(modules)
    with HashCache(hash_cache) as hashes:
        common = {
            "step": args.command,
            "params": arg_params(step, args),
            "inputs": {path: content_md5(Path(path), hashes) for path in arg_inputs(step, args)},
            "code": code_md5s(files, hashes),
        }
        for product in step.outputs(args):
            if product.endswith(".json"):
                stamp_json(Path(product), common)
        made = {product: content_md5(Path(product), hashes) for product in step.outputs(args)}
    for product, md5 in made.items():
        record = {"product": product, "md5": md5, **common}
        write_text(record_path(product), json.dumps(record, indent=1, sort_keys=True) + "\n")
    note_made_here(Path("."), made)


# --- verifying records ---


def current_value(config: dict[str, Any], key: str) -> Any:
    """The value params.yaml (defaults filled in) gives a record's key now."""
    if key.startswith("precision:"):
        from cafe.compute import ComputeConfig
        from cafe.config import parse_section

        return parse_section(ComputeConfig, config["compute"], "compute").for_step(key.split(":", 1)[1])
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def differences(recorded: Any, current: Any, key: str) -> Iterator[str]:
    """Keys whose recorded value differs from the current one (a record may hold a subset of a section)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        for name, value in recorded.items():
            yield from differences(value, current.get(name), f"{key}.{name}")
    elif recorded != current:
        yield f"params changed: {key} was {json.dumps(recorded)}, is {json.dumps(current)}"


@dataclass
class Verifier:
    """Compares records under a project folder with the current params, inputs and code; memoised per product."""

    root: Path
    config: dict[str, Any]
    hashes: HashCache

    def __post_init__(self) -> None:
        self.records = {
            str(path.relative_to(self.root))[: -len(SUFFIX)]: path
            for path in sorted((self.root / "results").rglob(f"*{SUFFIX}"))
        }
        self.found: dict[str, list[str]] = {}

    def load(self, product: str) -> dict[str, Any]:
        try:
            return json.loads(self.records[product].read_text())
        except (OSError, ValueError) as exc:
            raise CafeError(f"{self.records[product]}: not a readable provenance record ({exc})") from exc

    def reasons(self, product: str) -> list[str]:
        """Why `product` is not current (empty: current)."""
        if product not in self.found:
            self.found[product] = ["depends on itself"]  # a cycle would be a broken record
            self.found[product] = list(self._reasons(product))
        return self.found[product]

    def _reasons(self, product: str) -> Iterator[str]:
        record = self.load(product)
        path = self.root / product
        if path.exists() and content_md5(path, self.hashes) != record["md5"]:
            yield "bytes differ from its record (made or changed by something else)"
        for key, value in record["params"].items():
            yield from differences(value, current_value(self.config, key), key)
        for name, md5 in code_md5s(record["code"], self.hashes).items():
            if md5 != record["code"][name]:
                yield f"code changed: {name}" if md5 else f"code removed: {name}"
        for name, md5 in record["inputs"].items():
            yield from self.input_reasons(name, md5)

    def input_reasons(self, name: str, md5: str) -> Iterator[str]:
        path = self.root / name
        if path.exists():
            if content_md5(path, self.hashes) != md5:
                yield f"input changed: {name}"
        elif name not in self.records:
            yield f"input missing: {name}"
        elif self.load(name)["md5"] != md5:
            yield f"input changed: {name} (absent; its record is of other content)"
        upstream = [p for p in self.records if p == name or p.startswith(name.rstrip("/") + "/")]
        if any(self.reasons(p) for p in upstream):
            yield f"input not current: {name}"


def load_config(root: Path, params: str = "params.yaml", configfiles: Iterable[str] = ()) -> dict[str, Any]:
    """params.yaml (and further config files), checked and with every default filled in."""
    import yaml

    from cafe.params import merge, validate_config

    config: dict[str, Any] = {}
    for name in [params, *configfiles]:
        try:
            config = merge(config, yaml.safe_load((root / name).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise CafeError(f"{name}: cannot read params ({exc})") from exc
    return validate_config(config, root / "workflow/schemas/params.schema.yaml")


def verify(root: Path, config: dict[str, Any], paths: Iterable[str] = ()) -> dict[str, list[str]]:
    """Every product with a record under `paths` (default results/), and why it is not current (empty: current)."""
    with HashCache(root / HASH_CACHE) as hashes:
        verifier = Verifier(root, config, hashes)
        wanted = [str(Path(p)).rstrip("/") for p in paths] or ["results"]
        chosen = [p for p in verifier.records if any(p == w or p.startswith(w + "/") for w in wanted)]
        return {product: verifier.reasons(product) for product in chosen}


def run_verify(args: argparse.Namespace) -> int:
    """CLI: list every product that disagrees with its record (exit 1), or say all is current."""
    root = Path(args.root)
    found = verify(root, load_config(root, args.params, args.configfile), args.paths)
    stale = {product: reasons for product, reasons in found.items() if reasons}
    absent = [product for product in found if not (root / product).exists()]
    for product, reasons in stale.items():
        print(f"NOT CURRENT {product}")
        for reason in reasons:
            print(f"    {reason}")
    if not found:
        print("no products with a record here")
    elif not stale:
        print(f"all {len(found)} products current ({len(absent)} absent, stood for by their records)")
    else:
        print(f"{len(stale)} of {len(found)} products not current")
    return 1 if stale else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cafe verify`."""
    parser = subparsers.add_parser("verify", help="check every product against what made it (params, inputs, code)")
    parser.add_argument("paths", nargs="*", help="products or folders to check (default: results/)")
    parser.add_argument("--params", default="params.yaml", help="the params file (default params.yaml)")
    parser.add_argument("--configfile", nargs="*", default=[], help="further params files merged on top")
    parser.add_argument("--root", default=".", help="the project folder")
    parser.set_defaults(func=run_verify)
