"""Imported SAEs (cafe/sae/formats/): cafe's z equals the tool's own z (within 1e-5 of scale) for every format, the
AttnLRP rule through an imported encoder conserves relevance, and a file that does not fit the study is refused
with both sides named.

How each format's reference z is made:
    SAELens, saev (0.1.0: the old header), dictionary_learning, sparsify (eai-sparsify), overcomplete
        the tool's own package (tests/sae_tools.py: installed without dependencies, run in a subprocess) writes
        the checkpoint with its own save routine and encodes with its own encode.
    saev's current header schemas, ViT-Prisma, PatchSAE
        from source: saev's current code is not on PyPI (0.1.0 predates it), ViT-Prisma's PyPI release (0.1.4) has
        no SAE module, and PatchSAE is not a package; the test writes the file as the tool's save routine does
        (saev `dump`, their `save_model`'s pickled {"cfg", "state_dict"}) and encodes by the formula of the tool's
        `encode` (the module docstrings in cafe/sae/formats/ cite them).
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sae_tools
import torch
from sae_tools import TOOLS

from cafe.erf.rules import sae_rule
from cafe.errors import CafeError
from cafe.sae.encoder import ACTIVATIONS, NORMS, SAEEncoder
from cafe.sae.formats import read_sae
from cafe.sae.formats.base import RESIDUAL, Imported, TrainedAt
from cafe.sae.importer import backbone_signature, check_trained_at
from cafe.sae.model import load_sae, save_import

D, N, K = 16, 48, 5
Z_TOLERANCE = 1e-5  # max |z_cafe - z_tool| / max |z_tool|


def activations(seed: int = 0, n: int = 64) -> np.ndarray:
    return sae_tools.activations(seed, n, D)


def z_difference(z: torch.Tensor, reference: torch.Tensor) -> float:
    assert (reference != 0).any(), "a reference with no active latent tests nothing"
    return ((z - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture(scope="module", params=sorted(TOOLS))
def tool_cases(request, sae_tool_run) -> tuple[str, Path, dict]:
    return request.param, *sae_tool_run(request.param)


def test_z_equals_the_tools_own_encode(tool_cases):
    tool, workdir, cases = tool_cases
    acts = torch.from_numpy(np.load(workdir / "acts.npy"))
    differences = {}
    for case, spec in cases.items():
        imported = read_sae(spec["format"], spec["path"], spec["options"])
        reference = torch.from_numpy(np.load(workdir / case / "z.npy"))
        differences[case] = z_difference(imported.encoder.encode(acts), reference)
    print(f"{tool}: largest z difference per case {differences}")
    assert max(differences.values()) <= Z_TOLERANCE, differences


# --- from source: files written as the tool's save routine writes them, z by the formula of its encode ---------


def random_state(seed: int, **shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * 0.4 for name, shape in shapes.items()}


def saelens_like_state(seed: int) -> dict[str, torch.Tensor]:
    return random_state(seed, W_enc=(D, N), b_enc=(N,), W_dec=(N, D), b_dec=(D,))


def relu_topk(pre: torch.Tensor, k: int, relu_values: bool = True) -> torch.Tensor:
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu_values else values)


def saev_dump(path: Path, header: dict, state: dict) -> Path:
    """saev.nn.modeling.dump: one JSON line, then torch.save(state_dict) into the same file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(json.dumps(header).encode() + b"\n" + buffer.getvalue())
    return path


SAEV_CURRENT = {  # header activation -> saev's encode of pre (current code: no b_dec subtraction)
    "Relu": ({"cls": "Relu", "params": {"key": "relu"}}, lambda pre, t: pre.relu()),
    "TopK": ({"cls": "TopK", "params": {"key": "top-k", "top_k": K}}, lambda pre, t: relu_topk(pre, K, False)),
    "BatchTopK": (
        {"cls": "BatchTopK", "params": {"key": "batch-top-k", "top_k": K}},
        lambda pre, t: torch.where(pre > t, pre, 0) if t > 0 else torch.where(pre > 0, pre, 0),
    ),
}


@pytest.mark.parametrize("kind", sorted(SAEV_CURRENT))
@pytest.mark.parametrize("schema", [1, 5])
def test_saev_current_headers_from_source(tmp_path, kind, schema):
    activation, encode = SAEV_CURRENT[kind]
    state = saelens_like_state(3)
    threshold = torch.tensor(0.2)
    if kind == "BatchTopK":
        state["activation.threshold"] = threshold
    cfg = {"d_model": D, "d_sae": N, "activation": activation}
    header = {"schema": schema, "cfg": cfg, "commit": "unknown", "lib": "x"}
    path = saev_dump(tmp_path / "sae.pt", header, state)
    x = torch.from_numpy(activations(1))
    reference = encode(x @ state["W_enc"] + state["b_enc"], threshold)
    imported = read_sae("saev", path, {})
    assert imported.trained_at.positions == "patches" and not imported.needs_input_scaling
    assert z_difference(imported.encoder.encode(x), reference) <= Z_TOLERANCE


def test_saev_old_scaling_is_folded_from_given_or_estimated_constants(tmp_path):
    state = saelens_like_state(4)
    header = {"d_vit": D, "exp_factor": N // D, "sparsity_coeff": 4e-4}  # pre-schema: old code, b_dec subtracted
    path = saev_dump(tmp_path / "old.pt", header, state)
    tokens = activations(2, n=300) * 3 + 1
    mean = torch.from_numpy(tokens).double().mean(0)
    scalar = float((torch.from_numpy(tokens).double() - mean).norm(dim=1).mean() / D**0.5)
    x = torch.from_numpy(tokens)
    reference = (((x - mean.float()) / scalar - state["b_dec"]) @ state["W_enc"] + state["b_enc"]).relu()
    torch.save(mean.float(), tmp_path / "mean.pt")
    given = {"scaling": "given", "scale_mean": str(tmp_path / "mean.pt"), "scale_scalar": scalar}
    assert z_difference(read_sae("saev", path, given).encoder.encode(x), reference) <= Z_TOLERANCE

    from cafe.sae.formats.saev import estimate_input_scaling, fold_input_scaling

    imported = read_sae("saev", path, {})  # auto: an old file, scaling to estimate
    assert imported.needs_input_scaling
    fold_input_scaling(imported.encoder, *estimate_input_scaling(tokens))  # all 300 tokens: the exact mean
    assert z_difference(imported.encoder.encode(x), reference) <= Z_TOLERANCE


def tool_class(monkeypatch, module: str, name: str, fields: dict) -> type:
    """A stand-in for a tool's config class at its real module path, so that torch.save pickles it by that name;
    gone again before cafe reads the file (cafe must read it without the tool)."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    field = lambda v: dataclasses.field(default_factory=lambda: v)  # noqa: E731
    cls = dataclasses.make_dataclass(name, [(k, type(v), field(v)) for k, v in fields.items()])
    cls.__module__ = module
    setattr(sys.modules[module], name, cls)
    return cls


def layer_norm_in(x: torch.Tensor) -> torch.Tensor:
    """SAELens's and ViT-Prisma's run_time_activation_ln_in."""
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.std(-1, keepdim=True) + 1e-5)


PRISMA = {  # (activation_fn_str, normalize_activations, cls_token_only, use_patches_only) -> positions
    ("relu", "layer_norm", False, False): "all",
    ("topk", "none", False, True): "patches",
    ("relu", "constant_norm_rescale", True, False): "cls",
}


@pytest.mark.parametrize("setting", list(PRISMA))
@pytest.mark.parametrize("stored", ["pickled_cfg", "config_json"])
def test_prisma_from_source(tmp_path, monkeypatch, setting, stored):
    activation, norm, cls_only, patches_only = setting
    fields = {
        "d_in": D,
        "expansion_factor": N // D,
        "activation_fn_str": activation,
        "activation_fn_kwargs": {"k": K} if activation == "topk" else {},
        "normalize_activations": norm,
        "hook_point_layer": 1,
        "layer_subtype": "hook_resid_post",
        "cls_token_only": cls_only,
        "use_patches_only": patches_only,
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "architecture": "standard",
    }
    state = saelens_like_state(5)
    if stored == "pickled_cfg":
        cfg = tool_class(monkeypatch, "vit_prisma.sae.config", "VisionModelSAERunnerConfig", fields)()
        torch.save({"cfg": cfg, "state_dict": state}, tmp_path / "sae.pt")
        monkeypatch.delitem(sys.modules, "vit_prisma.sae.config")
    else:
        (tmp_path / "config.json").write_text(json.dumps(fields))
        torch.save(state, tmp_path / "sae.pt")
    x = torch.from_numpy(activations(6))
    normed = {
        "layer_norm": layer_norm_in,
        "none": lambda h: h,
        "constant_norm_rescale": lambda h: h * D**0.5 / h.norm(dim=-1, keepdim=True),
    }[norm](x)
    pre = (normed - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    reference = relu_topk(pre, K) if activation == "topk" else pre.relu()
    imported = read_sae("prisma", tmp_path / "sae.pt", {})
    assert z_difference(imported.encoder.encode(x), reference) <= Z_TOLERANCE
    assert imported.trained_at == TrainedAt(
        1, RESIDUAL, PRISMA[setting], fields["model_name"], "blocks.1.hook_resid_post"
    )


def test_patchsae_from_source(tmp_path, monkeypatch):
    fields = {
        "d_in": D,
        "expansion_factor": N // D,
        "block_layer": -2,
        "module_name": "resid",
        "class_token": True,
        "model_name": "openai/clip-vit-base-patch16",
        "gated_sae": False,
    }
    cfg = tool_class(monkeypatch, "sae_training.config", "ViTSAERunnerConfig", fields)()
    state = saelens_like_state(7)
    torch.save({"cfg": cfg, "state_dict": state}, tmp_path / "patchsae.pt")
    monkeypatch.delitem(sys.modules, "sae_training.config")
    x = torch.from_numpy(activations(8))
    reference = ((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]).relu()
    imported = read_sae("patchsae", tmp_path / "patchsae.pt", {})
    assert z_difference(imported.encoder.encode(x), reference) <= Z_TOLERANCE
    assert imported.trained_at.layer(12) == 11 and imported.trained_at.positions == "all"


def test_a_pickled_config_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"cfg": Evil(), "state_dict": saelens_like_state(0)}, tmp_path / "evil.pt")
    with pytest.raises(CafeError, match="not allowed"):
        read_sae("patchsae", tmp_path / "evil.pt", {})


# --- the encoder every format becomes: checkpoint, n_first, the AttnLRP rule --------------------------------------


def random_encoder(seed: int, norm: str, activation: str) -> SAEEncoder:
    state = random_state(seed, W=(N, D), b_e=(N,), b_d=(D,), t=(N,))
    return SAEEncoder(
        state["W"],
        state["b_e"],
        state["b_d"],
        scale=0.7,
        norm=norm,
        activation=activation,
        k=K,
        threshold=state["t"].abs() * 0.3,
        topk_relu=seed % 2 == 0,
    )


SETTINGS = [(norm, activation) for norm in NORMS for activation in ACTIVATIONS]


@pytest.mark.parametrize("norm,activation", SETTINGS)
def test_relevance_through_an_imported_encoder_is_conserved(norm, activation):
    """The epsilon rule on the affine map and the layer-norm rule on the per-token norm: the input's relevance plus
    the bias's share is z, exactly (float64, epsilon 1e-12), and the rule's forward is `encode`'s z."""
    for seed in range(6):
        encoder = random_encoder(seed, norm, activation).double()
        h = torch.from_numpy(activations(seed, n=12)).double().requires_grad_()
        z_all = encoder.encode(h.detach())
        features = z_all.abs().argmax(-1)  # an active latent of each token
        z = sae_rule(h, encoder, features, 1e-12)
        z.sum().backward()
        weight, offset = encoder.row_weights(features)
        pre = (encoder.rule_input(h.detach()) * weight).sum(-1) + offset
        torch.testing.assert_close(z.detach(), z_all[torch.arange(len(h)), features], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close((h * h.grad).sum(-1), z.detach() * (pre - offset) / pre, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm,activation", SETTINGS)
def test_checkpoint_and_first_latents_keep_z(tmp_path, norm, activation):
    encoder = random_encoder(1, norm, activation)
    save_import(tmp_path / "layer2.pt", encoder, {"layer": 2})
    loaded, meta = load_sae(tmp_path / "layer2.pt")
    x = torch.from_numpy(activations(3))
    assert torch.equal(loaded.encode(x), encoder.encode(x)) and meta["layer"] == 2
    assert torch.equal(loaded.encode(x, n_first=7), encoder.encode(x)[:, :7])


# --- where it was trained: refused with both sides named ----------------------------------------------------------


LAYER_FILE = {"width": D, "layer": 2, "backbone": "ViT-B-16", "pretrained": "openai"}


def imported(**trained_at) -> Imported:
    where = {
        "block": 1,
        "site": RESIDUAL,
        "positions": "all",
        "backbone": "ViT-B-16",
        "hook": "blocks.1.x",
    } | trained_at
    return Imported(random_encoder(0, "none", "relu"), TrainedAt(**where), {})


@pytest.mark.parametrize(
    "trained_at,message",
    [
        ({"site": "hook_mlp_out"}, r"hook_mlp_out site.*residual stream"),
        ({"block": 4}, r"trained on layer 5.*is layer 2"),
        ({"block": -11}, None),  # -11 of 12 blocks is block index 1: layer 2, fits
        ({"backbone": "openai/clip-vit-base-patch32"}, r"B/32.*ViT-B-16 \(B/16\)"),
        ({"backbone": "ViT-L-14"}, r"L/14"),
        ({"backbone": "facebook/dinov2-base", "block": None}, None),  # no patch size in the name: not comparable
    ],
)
def test_trained_at_is_checked_against_the_layer_file(trained_at, message):
    if message is None:
        check_trained_at(imported(**trained_at), LAYER_FILE, Path("sae"), Path("layer2.h5"))
        return
    with pytest.raises(CafeError, match=message):
        check_trained_at(imported(**trained_at), LAYER_FILE, Path("sae"), Path("layer2.h5"))


def test_a_width_mismatch_names_both_sides():
    with pytest.raises(CafeError, match=r"width 16.*has width 32"):
        check_trained_at(imported(), LAYER_FILE | {"width": 32}, Path("sae"), Path("layer2.h5"))


def test_backbone_names_of_each_tool_are_understood():
    assert backbone_signature("ViT-B-16") == backbone_signature("openai/clip-vit-base-patch16") == ("B", 16)
    assert backbone_signature("open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K") == ("B", 32)
    assert backbone_signature("cafe-demo-vit") is None


def test_unknown_formats_options_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(CafeError, match="unknown format 'sae_lens'; known"):
        read_sae("sae_lens", tmp_path, {})
    with pytest.raises(CafeError, match=r"no saelens SAE there"):
        read_sae("saelens", tmp_path / "missing", {})
    with pytest.raises(CafeError, match=r"\['top_k'\] not options of the overcomplete format; known: architecture"):
        read_sae("overcomplete", tmp_path, {"top_k": 3})
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N, "architecture": "gated"}))
    with pytest.raises(CafeError, match="architecture 'gated' is not supported"):
        read_sae("saelens", tmp_path, {})


def test_an_sae_of_cafe_is_imported_with_its_fingerprint(tmp_path, tiny_sae):
    from cafe.sae.importer import _write
    from cafe.sae.model import SAEConfig, save_checkpoint

    fingerprint = save_checkpoint(tmp_path / "other.pt", tiny_sae, SAEConfig(), {"layer": 2, "manifest_hash": "x"})
    imported = read_sae("cafe", tmp_path / "other.pt", {})
    assert imported.trained_at.layer(3) == 2
    _write(tmp_path / "layer2.pt", imported, {"source": {"path": str(tmp_path / "other.pt"), "format": "cafe"}})
    sae, meta = load_sae(tmp_path / "layer2.pt")
    x = torch.randn(5, tiny_sae.d_in)
    assert meta["fingerprint"] == fingerprint and "manifest_hash" not in meta and meta["source"]["format"] == "cafe"
    assert torch.equal(sae.encode(x), tiny_sae.encode(x))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"data": {"n_train": 5}}, "set data.n_train: 0"),
        ({"sae": {"source": {"format": "saelens", "path": {"1": "a"}}}}, "names no SAE for layer 2"),
        ({"sae": {"source": {"format": "sae-lens", "path": "a"}}}, "sae.source.format"),
    ],
)
def test_import_params_are_checked_as_the_dag_loads(change, message):
    from cafe.params import merge, validate_config

    base = {"layers": [2], "data": {"n_train": 0}, "sae": {"source": {"format": "saelens", "path": "s/{layer}"}}}
    validate_config(base, Path("workflow/schemas/params.schema.yaml").resolve())
    with pytest.raises(CafeError, match=message):
        validate_config(merge(base, change), Path("workflow/schemas/params.schema.yaml").resolve())


def test_a_path_pattern_names_each_layer_and_block():
    from cafe.sae.formats import SAESource

    source = SAESource("prisma", "saes/layer{layer}-block{block}", download="get {block}")
    assert source.path_for(3) == "saes/layer3-block2"
    assert "get 2" in source.absent([3]) and "layer 3: saes/layer3-block2" in source.absent([3])
