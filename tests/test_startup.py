"""Start-up cost: every Snakefile load (each `snakemake` call, each DVC stage's `cafe sync`) validates the params, and
each of the DAG's jobs is a fresh `cafe` process. So the params path imports no torch and no model, HDF5, table or
plotting library; each command imports only what it uses; and a tower of one library loads no other's."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from workflow_utils import REPO

import cafe
from cafe.backbone import BackboneConfig
from cafe.backbone.openclip import _json_configs, library, needs_transformers
from cafe.backbone.tower import Backbone
from cafe.cli import COMMANDS

HEAVY = ("torch", "open_clip", "timm", "transformers", "h5py", "pandas", "matplotlib", "scipy", "sklearn")
MODEL_LIBRARIES = ("open_clip", "timm", "transformers")
TORCH_COMMANDS = {  # their step runs torch; the model libraries load with the tower, not with the command
    "train-demo-backbone", "activations", "sae", "sae-import", "features", "erf", "insertion",
    "greedy", "counterfactuals",
}  # fmt: skip
BARE_COMMANDS = {"params", "verify", "sync", "bench"}  # read params and records only: none of HEAVY


def run_python(code: str, *args: str) -> str:
    """stdout of `code` run in a fresh interpreter (this checkout's cafe)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def smk_imports() -> list[str]:
    """The `from cafe... import` lines of the workflow's rule files (what a Snakefile load imports of cafe)."""
    lines = (line for smk in sorted((REPO / "workflow/rules").glob("*.smk")) for line in smk.read_text().splitlines())
    return [line for line in lines if re.match(r"(from|import) cafe[\w.]* ", line)]


def test_the_dag_loads_and_syncs_without_torch_or_any_heavy_library(tmp_path: Path) -> None:
    """What a Snakefile load runs of cafe (its imports, validating every OpenCLIP study's params) and `cafe sync` on
    a project with nothing made load none of HEAVY: the tiny demo's ~20 DAG loads and syncs cost no torch."""
    for name in ("params.yaml", "workflow/schemas/params.schema.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    configs = [p for p in sorted((REPO / "workflow/configs").glob("*.yaml")) if "dinov2" not in p.name]  # timm's
    # towers are the exception: their shape is known from timm's code, so validating their params imports it
    assert len(configs) >= 4
    code = "\n".join(
        [
            *smk_imports(),
            "import sys, yaml",
            "from pathlib import Path",
            "from cafe.params import merge",
            "from cafe.workspace_sync import sync",
            "base = yaml.safe_load(Path('params.yaml').read_text())",
            "for path in sys.argv[2:]:",
            "    study = merge(base, yaml.safe_load(Path(path).read_text()))",
            "    validate_config(study, sys.argv[1] + '/params.schema.yaml')",
            "assert sync(Path(sys.argv[1]).parent.parent) == {'removed': [], 'marked': []}",
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))",
        ]
    )
    assert len(smk_imports()) >= 5 and any("cafe.params" in line for line in smk_imports())
    out = run_python(code, str(tmp_path / "workflow/schemas"), *map(str, configs))
    assert out.strip() == "[]"


FORKED_IMPORTS = """
import json, os, sys
for name in filter(None, sys.argv[1].split(",")):
    __import__(name)
from cafe.cli import build_parser
seen = {}
for command in sys.argv[3:]:
    read, write = os.pipe()
    if os.fork() == 0:  # a child per command: it imports that command's module on top of what the parent holds
        build_parser(command)
        os.write(write, json.dumps([m for m in sys.argv[2].split(",") if m in sys.modules]).encode())
        os._exit(0)
    os.close(write)
    seen[command] = json.loads(os.read(read, 1 << 16))
    os.wait()
print(json.dumps(seen))
"""


def imported_by(commands: list[str], watched: tuple[str, ...], preloaded: tuple[str, ...] = ()) -> dict[str, list]:
    """Per command, which of `watched` are in sys.modules once its module is imported (the CLI imports only that
    one), each in a forked child of one fresh interpreter that has imported `preloaded` (so torch is paid once)."""
    out = run_python(FORKED_IMPORTS, ",".join(preloaded), ",".join(watched), *commands)
    return json.loads(out)


def test_each_command_imports_only_what_its_step_uses() -> None:
    assert set(COMMANDS) >= TORCH_COMMANDS | BARE_COMMANDS
    light = sorted(set(COMMANDS) - TORCH_COMMANDS)
    seen = imported_by(light, HEAVY)
    assert {c: s for c, s in seen.items() if {"torch", *MODEL_LIBRARIES} & set(s)} == {}
    assert {c: s for c, s in seen.items() if c in BARE_COMMANDS and s} == {}
    assert "h5py" not in seen["manifest"] and "matplotlib" not in seen["manifest"]  # a CSV of paths
    assert seen["sae-summary"] == []  # JSON files in, one out
    heavy = imported_by(sorted(TORCH_COMMANDS), MODEL_LIBRARIES, preloaded=("torch", "numpy", "h5py", "pandas"))
    assert {c: s for c, s in heavy.items() if s} == {}


TOWER_JOB = """
import sys, torch
from cafe.backbone import BackboneConfig
from cafe.backbone.openclip import library
from cafe.backbone.tower import Backbone
tower = Backbone.load(BackboneConfig("cafe-tiny-vit", seed=3, device="cpu"))
torch.manual_seed(0)
pixels = torch.rand(2, 3, tower.image_size, tower.image_size)
out = tower.forward_to(tower.normalize(pixels), 2)
loaded = sorted(m for m in ("transformers", "sklearn", "scipy", "pandas") if m in sys.modules)
print(repr(out.double().sum().item()), loaded)
try:
    library("roberta-ViT-B-32")  # an HF text tower, in a process whose open_clip has no transformers
except Exception as exc:
    print(type(exc).__name__)
import transformers  # the Hugging Face family still loads in the same process
"""


def test_an_openclip_tower_job_imports_no_transformers_and_builds_the_same_tower() -> None:
    """open_clip's import pulls in transformers (and through it sklearn, scipy, pandas) for CoCa and HF text towers;
    a tower that needs none builds without it, the same tower as with it (this process has it loaded)."""
    lines = run_python(TOWER_JOB).strip().splitlines()
    total, loaded = lines[-2].split(" ", 1)
    error = lines[-1]
    tower = Backbone.load(BackboneConfig("cafe-tiny-vit", seed=3, device="cpu"))
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, tower.image_size, tower.image_size)
    assert float(total) == tower.forward_to(tower.normalize(pixels), 2).double().sum().item()
    assert loaded == "[]" and error == "CafeError"


def test_openclip_configs_are_read_as_open_clip_reads_them() -> None:
    """The torch-free reader of OpenCLIP's model configs (what validating params uses) agrees with open_clip on
    every model it knows, cafe's demo towers included; only HF text towers need transformers."""
    open_clip = library()
    names = sorted(_json_configs())  # open_clip may know more: configs a caller added (tests/family_towers.py)
    assert "cafe-demo-vit" in names and len(names) > 100 and set(names) <= set(open_clip.list_models())
    assert {name: _json_configs()[name] for name in names} == {n: open_clip.get_model_config(n) for n in names}
    hf_text = {name for name in names if "hf_model_name" in open_clip.get_model_config(name)["text_cfg"]}
    assert {"roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32"} <= hf_text
    assert {name for name in names if needs_transformers(name)} == hf_text
    assert needs_transformers("hf-hub:timm/ViT-B-16-SigLIP")  # fetched by OpenCLIP: assumed to


def lazy_packages() -> list[str]:
    """cafe's packages whose names load lazily (`cafe.lazy.lazy_names`)."""
    inits = Path(cafe.__file__).parent.rglob("__init__.py")
    found = [p for p in inits if "lazy_names(" in p.read_text()]
    return sorted(".".join(p.parent.relative_to(Path(cafe.__file__).parent.parent).parts) for p in found)


@pytest.mark.parametrize("package", lazy_packages())
def test_lazy_package_names_resolve_and_never_turn_into_a_submodule(package: str) -> None:
    """Importing a submodule sets the package's attribute of that name: a lazy name that were also a submodule's
    would then be the module. With every submodule imported, each lazy name is still what its module defines."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")
    lazy = [name for name in dir(module) if name not in vars(module)]
    assert lazy and not [name for name in lazy if isinstance(getattr(module, name), types.ModuleType)]
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018
