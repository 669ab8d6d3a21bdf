"""Run in a subprocess by tests/sae_tools.py, with one SAE tool's own package on PYTHONPATH (never cafe):
`python sae_tools_run.py TOOL WORKDIR` builds that tool's SAEs with random weights, saves each with the tool's own
save routine under WORKDIR/<case>/, encodes WORKDIR/acts.npy with the tool's own encode into WORKDIR/<case>/z.npy,
and lists the cases (cafe's format name and options) in WORKDIR/cases.json."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

STANDINS = {  # third-party modules a tool's import chain names but its SAE classes never call
    "saelens": ("datasets", "wandb", "plotly", "plotly_express", "nltk", "babe", "dotenv", "tenacity"),
    "saev": ("datasets",),
    "dictionary_learning": ("datasets", "nnsight"),
    "sparsify": ("datasets", "schedulefree"),
    "overcomplete": (),
}
K = 5


def _anything(name: str) -> type:
    """A class whose attributes, calls and instances are all more of the same: what a stand-in module hands out."""
    body = {"__init__": lambda self, *a, **k: None, "__getattr__": lambda self, n: _anything(n)}
    return _AnyMeta(name, (), body)


class _AnyMeta(type):
    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _anything(name)


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _anything(name)


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: tuple[str, ...]):
        self.roots = set(roots)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _bare_package(name: str) -> types.ModuleType:
    """Register a package without running its __init__ (its submodules still load from its folder)."""
    parent, _, leaf = name.rpartition(".")
    where = [str(Path(sys.modules[parent].__path__[0]) / leaf)] if parent else None
    where = where or list(importlib.util.find_spec(name).submodule_search_locations)
    module = types.ModuleType(name)
    module.__path__ = where
    sys.modules[name] = module
    return module


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn at random (biases too, so that a mishandled bias shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.4)


def dense(values: torch.Tensor, indices: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(*values.shape[:-1], n).scatter(-1, indices, values)


class Cases:
    """Where each case's files go, and the list of them."""

    def __init__(self, workdir: Path):
        self.workdir, self.cases = workdir, {}
        self.acts = torch.from_numpy(np.load(workdir / "acts.npy"))
        self.d = self.acts.shape[1]
        self.n = 3 * self.d

    def folder(self, case: str) -> Path:
        (self.workdir / case).mkdir(parents=True, exist_ok=True)
        return self.workdir / case

    def add(self, case: str, format: str, path: Path, z: torch.Tensor, options: dict | None = None) -> None:
        np.save(self.folder(case) / "z.npy", z.detach().float().numpy())
        self.cases[case] = {"format": format, "path": str(path), "options": options or {}}

    def finish(self) -> None:
        (self.workdir / "cases.json").write_text(json.dumps(self.cases))


def saelens(c: Cases) -> None:
    from sae_lens import JumpReLUSAE, StandardSAE, TopKSAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAEConfig

    meta = SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="ViT-B-16")
    settings = {
        "standard_none": (StandardSAE, StandardSAEConfig, {"normalize_activations": "none"}),
        "standard_no_b_dec_layer_norm": (
            StandardSAE,
            StandardSAEConfig,
            {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False},
        ),
        "standard_expected_average": (
            StandardSAE,
            StandardSAEConfig,
            {"normalize_activations": "expected_average_only_in"},
        ),
        "standard_whitening_folded": (
            StandardSAE,
            StandardSAEConfig,
            {"normalize_activations": "covariance_whitening"},
        ),
        "topk_unit_norm_rescaled": (
            TopKSAE,
            TopKSAEConfig,
            {"normalize_activations": "constant_norm_rescale", "k": K, "rescale_acts_by_decoder_norm": True},
        ),
        "topk_layer_norm": (TopKSAE, TopKSAEConfig, {"normalize_activations": "layer_norm", "k": K}),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    }
    for seed, (case, (cls, cfg_cls, kwargs)) in enumerate(settings.items()):
        sae = cls(cfg_cls(d_in=c.d, d_sae=c.n, metadata=meta, **kwargs))
        randomize(sae, seed)
        if case == "jumprelu":
            with torch.no_grad():
                sae.threshold.copy_(torch.rand(c.n, generator=torch.Generator().manual_seed(9)))
        sae.save_model(c.folder(case))
        c.add(case, "saelens", c.folder(case), sae.encode(c.acts))


def saev(c: Cases) -> None:
    from saev import config, nn

    sae = nn.SparseAutoencoder(config.SparseAutoencoder(d_vit=c.d, exp_factor=c.n // c.d, n_reinit_samples=0))
    randomize(sae, 0)
    path = c.folder("relu_pre_schema") / "sae.pt"
    nn.dump(str(path), sae)
    c.add("relu_pre_schema", "saev", path, sae(c.acts)[1], {"scaling": "none"})


def dictionary_learning(c: Cases) -> None:
    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    models = {
        "AutoEncoder": AutoEncoder(c.d, c.n),
        "AutoEncoderTopK": AutoEncoderTopK(c.d, c.n, K),
        "BatchTopKSAE": BatchTopKSAE(c.d, c.n, K),
        "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE(c.d, c.n, K, [c.n // 3, c.n - c.n // 3]),
        "JumpReluAutoEncoder": JumpReluAutoEncoder(c.d, c.n),
    }
    for seed, (name, ae) in enumerate(models.items()):
        randomize(ae, seed)
        if hasattr(ae, "threshold"):
            with torch.no_grad():  # a trained threshold: positive (per latent for JumpReLU)
                ae.threshold.copy_(torch.rand(ae.threshold.shape, generator=torch.Generator().manual_seed(7)) * 0.6)
        folder = c.folder(name)
        torch.save(ae.state_dict(), folder / "ae.pt")  # as its training loop saves: the state dict, and the config
        trainer = {"dict_class": name, "layer": 1, "lm_name": "ViT-B-16", "submodule_name": "resid_post_layer_1"}
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
        c.add(name, "dictionary_learning", folder / "ae.pt", ae.encode(c.acts))


def sparsify(c: Cases) -> None:
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder

    coder = SparseCoder(c.d, SparseCoderConfig(num_latents=c.n, k=K))
    randomize(coder, 0)
    folder = c.folder("topk") / "layers.1"
    coder.save_to_disk(folder)
    out = coder.encode(c.acts)
    c.add("topk", "sparsify", folder, dense(out.top_acts, out.top_indices, c.n))


def overcomplete(c: Cases) -> None:
    _bare_package("overcomplete")
    sae_package = _bare_package("overcomplete.sae")
    sae_package.SAE = importlib.import_module("overcomplete.sae.base").SAE
    from overcomplete.sae.base import SAE
    from overcomplete.sae.batchtopk_sae import BatchTopKSAE
    from overcomplete.sae.jump_sae import JumpSAE
    from overcomplete.sae.topk_sae import TopKSAE

    models = {
        "SAE": (SAE(c.d, c.n), {}),
        "TopKSAE": (TopKSAE(c.d, c.n, top_k=K), {"k": K}),
        "JumpSAE": (JumpSAE(c.d, c.n), {}),
        "BatchTopKSAE": (BatchTopKSAE(c.d, c.n, top_k=K * 8), {"threshold": 0.3}),
    }
    for seed, (name, (sae, options)) in enumerate(models.items()):
        randomize(sae, seed)
        sae.eval()
        if name == "BatchTopKSAE":
            sae.running_threshold = torch.tensor(0.3)  # not in its state dict: given to cafe as an option
        path = c.folder(name) / "sae.pt"
        torch.save(sae.state_dict(), path)
        with torch.no_grad():
            c.add(name, "overcomplete", path, sae.encode(c.acts)[1], {"architecture": name, **options})


def main() -> None:
    tool, workdir = sys.argv[1], Path(sys.argv[2])
    sys.meta_path.insert(0, _StandIns(STANDINS[tool]))
    cases = Cases(workdir)
    globals()[tool](cases)
    cases.finish()


if __name__ == "__main__":
    main()
