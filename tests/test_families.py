"""Every backbone family (OpenCLIP, timm, Hugging Face) at tiny size with random weights: the block view equals
the library's own block, AttnLRP conserves relevance at every layer, the same weights in two implementations
give the same activations and ERF maps, and the planted cause is found through every implementation (OpenCLIP,
timm with CLS, registers or neither, HF CLIP, DINOv2, DINOv2 with registers, SigLIP)."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from family_towers import (
    HF_SMALL,
    TOWERS,
    openclip_to_hf_clip,
    openclip_to_hf_no_prenorm,
    openclip_to_timm,
    timm_dinov2_as_hub,
    timm_dinov2_to_hf,
    timm_from_file,
    timm_siglip_to_hf,
)
from planted import planted_world
from scipy import stats

from cafe.backbone import Backbone, BackboneConfig, tower_shape
from cafe.backbone.registry import family_of
from cafe.blocks import block_at_tokens, block_forward
from cafe.config import is_local_checkpoint, parse_section
from cafe.erf import ErfConfig, make_method
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.sae import MatryoshkaSAE
from cafe.tokens import TokenLayout

CONSERVATION_RTOL = 1e-9  # float64, epsilon 1e-12, no biases or embeddings: exact up to rounding
CONSERVATION_ATOL = 1e-10  # what the epsilon stabilisers (1e-12 at each linear output) may absorb
ACTIVATIONS_RTOL = 1e-4  # max |a - b| / max |a| between implementations
MIN_SPEARMAN = 0.999  # ERF maps between implementations, per map
FAST = {"ig": {"steps": 16}, "kernelshap": {"samples": 96}}
METHODS = ("attnlrp", "ig", "kernelshap", "gradient")


@pytest.fixture(scope="module", params=sorted(TOWERS))
def tower(request) -> tuple[str, Backbone]:
    return request.param, TOWERS[request.param]()


def sae_for(backbone: Backbone, dtype=torch.float32) -> MatryoshkaSAE:
    torch.manual_seed(0)
    return MatryoshkaSAE(backbone.width, 64).to(dtype).eval().requires_grad_(False)


def readable_tokens(backbone: Backbone) -> torch.Tensor:
    """CLS (if any), the first, a middle and the last patch."""
    layout = backbone.layout
    patches = [layout.patch_token(0, 0), layout.patch_token(1, 2), layout.n_tokens - 1]
    return torch.tensor(([layout.cls] if layout.has_cls else [layout.patch_token(2, 1)]) + patches)


def images_for(backbone: Backbone, n: int, seed: int = 1) -> torch.Tensor:
    size = backbone.image_size
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def active_features(target: FeatureTarget, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        latents = target.latents(target.backbone.normalize(images))
    return latents[torch.arange(len(images)), tokens].argmax(-1)


def test_the_block_view_is_the_librarys_own_block(tower):
    name, backbone = tower
    x = backbone.normalize(images_for(backbone, 2))
    tokens = torch.tensor([0, backbone.n_tokens - 1])
    with torch.no_grad():
        h = backbone.embed(x)
        assert h.shape == (2, backbone.n_tokens, backbone.width), name
        for layer, block in enumerate(backbone.blocks, start=1):
            expected = backbone.family.run_block(block, h)
            view = backbone.view(layer)
            torch.testing.assert_close(block_forward(view, h), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(block_at_tokens(view, h, tokens), expected[torch.arange(2), tokens])
            h = expected


def bias_free(backbone: Backbone) -> Backbone:
    """A float64 copy with every bias, CLS / register / positional embedding set to zero."""
    backbone = copy.deepcopy(backbone)
    backbone.visual.double()
    with torch.no_grad():
        for name, p in backbone.visual.named_parameters():
            if name.endswith("bias") or any(k in name for k in ("token", "position", "pos_embed", "class_embed")):
                p.zero_()
    return backbone


def test_attnlrp_conserves_relevance_at_every_layer_of_every_family(tower):
    name, backbone = tower
    backbone = bias_free(backbone)
    sae = sae_for(backbone, torch.float64)
    sae.b_d.zero_()
    tokens = readable_tokens(backbone)
    images = images_for(backbone, len(tokens)).double()
    config = parse_section(ErfConfig, {"attnlrp": {"attention": "cp", "epsilon": 1e-12}}, "erf")
    for layer in range(1, backbone.depth + 1):
        target = FeatureTarget(backbone, sae, layer)
        out = make_method("attnlrp", target, config).explain(images, tokens, active_features(target, images, tokens))
        assert (out.value > 0).all(), (name, layer)
        torch.testing.assert_close(out.maps.sum((1, 2)), out.value, rtol=CONSERVATION_RTOL, atol=CONSERVATION_ATOL)


def test_attnlrp_value_and_absorbed_add_up_on_every_family(tower):
    """With biases and embeddings, what the map leaves is `absorbed`, and z is the target's own forward."""
    _, backbone = tower
    sae, tokens = sae_for(backbone), readable_tokens(backbone)
    images = images_for(backbone, len(tokens))
    target = FeatureTarget(backbone, sae, backbone.depth)
    features = active_features(target, images, tokens)
    out = make_method("attnlrp", target).explain(images, tokens, features)
    expected = target(backbone.normalize(images), tokens, features)
    torch.testing.assert_close(out.value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.maps.sum((1, 2)) + out.absorbed, out.value, rtol=1e-5, atol=1e-6)


def _same_tokens(source: Backbone, other: Backbone, resid: torch.Tensor) -> torch.Tensor:
    """`other`'s residual stream at `source`'s token positions (layouts may differ only by registers)."""
    keep = [t + other.layout.n_prefix - source.layout.n_prefix if t >= source.layout.n_prefix else t
            for t in range(source.n_tokens)]  # fmt: skip
    return resid[:, keep]


PAIRS = {
    "openclip-timm": lambda: (TOWERS["openclip-tiny"](), openclip_to_timm),
    "openclip-hf-clip": lambda: (TOWERS["openclip-tiny"](), openclip_to_hf_clip),
    "timm-hf-dinov2": lambda: (TOWERS["timm-dinov2"](), timm_dinov2_to_hf),
    "timm-hf-dinov2-reg4": lambda: (TOWERS["timm-dinov2-reg4"](), timm_dinov2_to_hf),
    "timm-hf-siglip": lambda: (TOWERS["timm-siglip"](), timm_siglip_to_hf),
}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request) -> tuple[Backbone, Backbone]:
    source, convert = PAIRS[request.param]()
    return source, convert(source)


def test_the_same_weights_give_the_same_activations_in_both_implementations(pair):
    source, other = pair
    assert other.layout == source.layout
    x = source.normalize(images_for(source, 3))
    with torch.no_grad():
        mine, theirs = (
            source.forward_layers(x, list(range(1, source.depth + 1))),
            other.forward_layers(x, list(range(1, source.depth + 1))),
        )
    for layer, resid in mine.items():
        diff = (resid - _same_tokens(source, other, theirs[layer])).abs().max() / resid.abs().max()
        assert diff <= ACTIVATIONS_RTOL, (layer, diff.item())


@pytest.mark.parametrize("method", METHODS)
def test_the_same_weights_give_the_same_erf_maps_in_both_implementations(pair, method):
    source, other = pair
    sae, tokens = sae_for(source), readable_tokens(source)
    images = images_for(source, len(tokens))
    config = parse_section(ErfConfig, FAST, "erf")
    target = FeatureTarget(source, sae, source.depth)
    features = active_features(target, images, tokens)
    mine = make_method(method, target, config).attribute(images, tokens, features)
    theirs = make_method(method, FeatureTarget(other, sae, other.depth), config).attribute(images, tokens, features)
    for a, b in zip(mine.flatten(1).numpy(), theirs.flatten(1).numpy()):
        assert stats.spearmanr(a, b).statistic >= MIN_SPEARMAN


CONVERSIONS = {
    "openclip": lambda b: b,
    "timm": openclip_to_timm,
    "timm-registers": lambda b: openclip_to_timm(b, reg_tokens=4),
    "timm-no-cls": lambda b: openclip_to_timm(b, class_token=False),
    "hf-clip": openclip_to_hf_clip,
    "hf-dinov2": lambda b: openclip_to_hf_no_prenorm(b, "dinov2"),
    "hf-dinov2-reg4": lambda b: openclip_to_hf_no_prenorm(b, "dinov2-reg4"),
    "hf-siglip": lambda b: openclip_to_hf_no_prenorm(b, "siglip"),
}


@pytest.mark.parametrize("implementation", sorted(CONVERSIONS))
@pytest.mark.parametrize("method", METHODS)
def test_every_implementation_finds_the_planted_cause(implementation, method):
    planted = planted_world()
    backbone = CONVERSIONS[implementation](planted.backbone)
    shift = backbone.layout.n_prefix - planted.backbone.layout.n_prefix  # registers push the patches on
    target = FeatureTarget(backbone, planted.sae, planted.layer)
    token, feature = torch.tensor([planted.token + shift]), torch.tensor([planted.feature])
    maps = make_method(method, target, parse_section(ErfConfig, FAST, "erf")).attribute(planted.images, token, feature)
    source = planted.source - planted.backbone.layout.n_prefix
    assert torch.isfinite(maps).all() and maps.flatten().argmax().item() == source
    with torch.no_grad():  # the same feature value as the OpenCLIP tower's (about 7): the same planted tower
        z, expected = (
            FeatureTarget(b, planted.sae, planted.layer)(b.normalize(planted.images), t, feature)
            for b, t in ((backbone, token), (planted.backbone, torch.tensor([planted.token])))
        )
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("ViT-B-32", "openclip"),
        ("cafe-demo-vit", "openclip"),
        ("vit_base_patch14_reg4_dinov2", "timm"),
        ("vit_so400m_patch14_siglip_384", "timm"),
        ("vit_base_patch16_clip_224", "timm"),
        ("facebook/dinov2-with-registers-small", "hf"),
        ("google/siglip-base-patch16-224", "hf"),
    ],
)
def test_the_family_is_inferred_from_the_name(model, family):
    assert family_of(model) == family


def test_shape_and_layout_are_known_without_weights():
    shape = tower_shape(BackboneConfig("vit_base_patch14_reg4_dinov2", image_size=224))
    assert (shape.depth, shape.width, shape.grid, shape.layout.n_registers, shape.n_tokens) == (12, 768, 16, 4, 261)
    siglip = tower_shape("vit_base_patch16_siglip_224")
    assert siglip.layout.cls is None and siglip.n_tokens == 196


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (BackboneConfig("vit_base_patch14_dinov2", pretrained="lvd142m"), "cannot get timm weights"),
        (BackboneConfig("facebook/dinov2-small-cafe-test", pretrained="main"), "cannot get Hugging Face model"),
        (BackboneConfig("vit_nonexistent_patch3", family="timm"), "backbone.model"),
    ],
)
def test_offline_without_weights_is_a_clear_error_within_seconds(monkeypatch, cfg, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    began = time.perf_counter()
    with pytest.raises(CafeError, match=message):
        Backbone.load(cfg)
    assert time.perf_counter() - began < 60  # generous on a loaded machine; without the probe it is minutes


def test_planning_an_hf_tower_needs_its_config_only_and_offline_says_what_to_fetch(monkeypatch, tmp_path):
    """`snakemake -n` checks params against the tower's shape: timm and OpenCLIP know it from the name, a Hugging
    Face model from its config.json (a folder with nothing else plans); offline without it, a CafeError within
    seconds names the files."""
    import transformers

    from cafe.params import check_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers.Dinov2Config(**HF_SMALL).save_pretrained(tmp_path)
    plan = {"layers": [2], "demo": {"enabled": False}, "data": {"images": str(tmp_path)}}
    check_config({**plan, "backbone": {"model": str(tmp_path), "pretrained": str(tmp_path / "weights")}})
    with pytest.raises(CafeError, match="layers .3. do not exist"):
        check_config({**plan, "layers": [3], "backbone": {"model": str(tmp_path)}})
    began = time.perf_counter()
    hub_id = "facebook/dinov2-small-cafe-test"
    with pytest.raises(CafeError, match=f"planning .* `hf download {hub_id} config.json preprocessor_config.json`"):
        check_config({**plan, "backbone": {"model": hub_id, "pretrained": "main"}})
    assert time.perf_counter() - began < 60  # generous on a loaded machine; a download's retries take minutes


def test_one_rule_decides_what_a_local_checkpoint_is():
    assert all(map(is_local_checkpoint, ["results/demo/backbone.pt", "/abs/dir", "w.safetensors", "./x"]))
    assert not any(map(is_local_checkpoint, [None, "", "laion2b_s34b_b79k", "lvd142m", "main"]))


def test_attnlrp_refuses_a_block_it_has_no_rules_for():
    backbone = TOWERS["timm-dinov2"]()
    backbone.visual.blocks[0].attn.q_norm = torch.nn.LayerNorm(16)
    with pytest.raises(CafeError, match="not a plain pre-norm ViT block"):
        make_method("attnlrp", FeatureTarget(backbone, sae_for(backbone), 1))


def test_register_tokens_are_never_features_or_sae_rows():
    from cafe.activations.extract import token_subsample
    from cafe.features import TopImages

    layout = TokenLayout(3, n_registers=4)
    readable = np.array(layout.readable())
    assert set(readable) == {0, *range(5, 14)}
    for image in range(20):
        assert not set(token_subsample(image, readable, 4, 0)) & set(layout.registers)
    z = torch.zeros(2, layout.n_tokens, 3)
    z[:, 2, :] = 9.0  # a register fires strongly
    z[0, 7, 1] = 1.0  # a patch fires weakly
    top = TopImages(3, 2, layout)
    top.update(0, z)
    arrays = top.arrays(np.arange(2))
    assert arrays["token"][1, 0] == 7 and arrays["n_active_images"].tolist() == [0, 1, 0]
    assert (arrays["act_map"][..., 1:5] == 0).all()


def test_naming_families_imports_no_model_library():
    """Start-up cost: the backbone, the target, the LRP rules and the token layout load no family's library
    until a tower of that family is built."""
    code = (
        "import sys, cafe.backbone, cafe.backbone.registry, cafe.feature_target, cafe.erf.lrp, cafe.features; "
        "print(sorted(m for m in ('open_clip', 'timm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_local_checkpoints_of_timm_and_hf_load_the_saved_weights(tmp_path):
    tiny = Backbone.load(BackboneConfig("vit_cafe_tiny_patch8_reg4_dinov2", seed=3, device="cpu"))
    torch.save(tiny.visual.state_dict(), tmp_path / "tiny.pth")
    loaded = Backbone.load(BackboneConfig("vit_cafe_tiny_patch8_reg4_dinov2", pretrained=str(tmp_path / "tiny.pth")))
    hf = TOWERS["hf-dinov2-reg4"]()
    hf.visual.save_pretrained(tmp_path / "hf")
    hf_loaded = Backbone.load(BackboneConfig(str(tmp_path / "hf"), pretrained=str(tmp_path / "hf"), device="cpu"))
    assert hf_loaded.family.name == "hf" and hf_loaded.layout == hf.layout
    for a, b in [(tiny, loaded), (hf, hf_loaded)]:
        for mine, saved in zip(b.visual.state_dict().values(), a.visual.state_dict().values()):
            torch.testing.assert_close(mine, saved)


@pytest.mark.parametrize("tower", ["timm-dinov2", "timm-dinov2-reg4", "timm-dinov2-giant-swiglu"])
def test_a_torch_hub_dinov2_checkpoint_loads_through_timm(tmp_path, tower):
    """torch.hub's DINOv2 (facebookresearch/dinov2) needs the network for its code; its state dict loads through
    the timm family as a local checkpoint (timm's filter maps mask/register tokens, the CLS position, SwiGLU's
    w12/w3): a random tower saved in the hub's layout comes back with the same activations."""
    source = TOWERS[tower]()
    torch.save(timm_dinov2_as_hub(source.visual), tmp_path / "hub.pth")
    loaded = timm_from_file(tower, tmp_path / "hub.pth")
    x = source.normalize(images_for(source, 2))
    with torch.no_grad():
        mine, theirs = (b.forward_layers(x, [source.depth])[source.depth] for b in (source, loaded))
    assert loaded.layout == source.layout
    torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)


def test_the_models_eval_crop_reaches_the_images(tmp_path):
    """A crop_pct < 1 (AugReg's 0.9: resize to 248, crop 224) keeps the center only: a frame an eighth of the image
    wide shows in the plain crop of the shorter side and not in the model's crop."""
    from PIL import Image

    from cafe.images import Crop, load_images

    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:8], frame[-8:], frame[:, :8], frame[:, -8:] = 255, 255, 255, 255
    Image.fromarray(frame).save(tmp_path / "frame.png")
    whole, center = (load_images(tmp_path, ["frame.png"], size)[0] for size in (32, Crop(32, 48)))
    assert whole.amax() == 1.0 and center.amax() < 0.05
    assert torch.equal(load_images(tmp_path, ["frame.png"], Crop(32, 32)), whole[None])
    augreg = tower_shape("vit_base_patch16_224.augreg_in21k")
    assert (augreg.image_size, augreg.resize) == (224, 248)


IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
PROCESSORS = {  # config class -> (its image processor, settings as a hub folder's preprocessor_config.json has them)
    "SiglipVisionConfig": ("SiglipImageProcessor", {"size": {"height": 28, "width": 28}}),  # squash, no crop
    "CLIPVisionConfig": (
        "CLIPImageProcessor",
        {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}},
    ),
    "Dinov2Config": (
        "BitImageProcessor",
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28}, **IMAGENET},
    ),
}


def _random_photos(folder, n: int, seed: int) -> list[str]:
    """`n` smooth random RGB images of random sizes (20-119 px a side) saved as PNG; their names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n):
        width, height = (int(side) for side in rng.integers(20, 120, 2))
        fields = rng.integers(0, 256, (height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8)
        Image.fromarray(fields).resize((width, height), Image.Resampling.BICUBIC).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


@pytest.mark.parametrize("config_class", sorted(PROCESSORS))
def test_hf_preprocessing_is_the_models_own_image_processors(tmp_path, config_class):
    """A folder with config.json and preprocessor_config.json: cafe's images, normalised, equal the processor's
    pixel_values (SigLIP squashes to a square, CLIP and DINOv2 resize the shorter side and crop). The one
    difference allowed: where the crop's margin is odd, torchvision (cafe, OpenCLIP, timm) rounds the crop's
    offset half to even, the processor floors it, a window one pixel apart on that axis."""
    import transformers
    from PIL import Image

    from cafe.images import Crop, load_images

    processor_class, settings = PROCESSORS[config_class]
    processor = getattr(transformers, processor_class)(**settings)
    getattr(transformers, config_class)(**HF_SMALL).save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    backbone = Backbone.load(BackboneConfig(str(tmp_path / "model"), device="cpu"))
    crop = Crop(backbone.image_size, backbone.resize)
    names = _random_photos(tmp_path / "images", 12, seed=len(config_class))
    mine = backbone.normalize(load_images(tmp_path / "images", names, crop))
    theirs = processor([Image.open(tmp_path / "images" / name) for name in names], return_tensors="pt")
    for name, a, b in zip(names, mine, theirs["pixel_values"]):
        with Image.open(tmp_path / "images" / name) as image:
            margins = [side - crop.size for side in crop.resized(image.height, image.width)]
        offsets_agree = all(round(m / 2) == m // 2 for m in margins)
        assert offsets_agree == bool(torch.allclose(a, b, atol=1e-5)), (name, margins, (a - b).abs().max())


@pytest.mark.parametrize("tower", ["timm-dinov2-reg4", "hf-siglip"])
def test_the_families_bench_times_attnlrp_beside_autograd_on_the_same_targets(tower, tmp_path):
    """On a timm tower and an HF one built from its config through the hf family (the bench's --quick towers)."""
    from cafe.bench.families import QUICK, family_ratio, load_family_tower, run_families
    from cafe.bench.harness import Harness
    from cafe.bench.measure import Timer

    cpu = torch.device("cpu")
    backbone = TOWERS[tower]() if tower.startswith("timm") else load_family_tower(*QUICK[tower], cpu)
    assert backbone.family.name == tower.split("-")[0]
    timer = Timer(Harness(wait_s=0, override=True), cpu, repeats=1, pairs=3)
    records = family_ratio(backbone, timer, 2, 1)
    assert records["attnlrp"]["count"] == records["gradient"]["count"] == 2
    speed = records["attnlrp_vs_autograd"]
    assert len(speed["runs"]) == 3 and speed["min"] <= speed["median"] <= speed["max"]
    with pytest.raises(CafeError, match="unknown .'hf-vit'.; known"):
        run_families(tmp_path / "out.json", cpu, True, Harness(wait_s=0, override=True), 2, ["hf-vit"])


def test_sae_evaluation_reads_no_register_tokens(tmp_path):
    import h5py

    from cafe.io.activations import LayerInfo, LayerWriter
    from cafe.sae.evaluate import evaluate

    layout = TokenLayout(2, n_registers=4)
    info = LayerInfo("synthetic", "none", 1, 16, 8, 2, layout.n_tokens, 8, "0" * 16, 1, 0, 1, 4)
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "layer1.h5", "w") as handle:
        writer = LayerWriter(handle, info, 4, 3)
        writer.add_train(np.arange(4), np.zeros((4, 1), np.int16), rng.standard_normal((4, 1, 8)).astype(np.float16))
        writer.add_analysis(np.arange(3) + 4, rng.standard_normal((3, layout.n_tokens, 8)).astype(np.float16))
        writer.finish()
    torch.manual_seed(0)
    sae = MatryoshkaSAE(8, 16).eval()
    assert evaluate(sae, tmp_path / "layer1.h5", torch.device("cpu"))["eval_tokens"] == 3 * len(layout.readable())


@pytest.mark.parametrize("layout", [TokenLayout(3), TokenLayout(2, n_registers=4), TokenLayout(4, has_cls=False)])
def test_a_token_layout_names_every_position_once(layout):
    """CLS, registers and patches partition the sequence; patches are row-major; attrs round-trip."""
    masks = {which: np.array(layout.mask(which)) for which in ("all", "readable", "patches", "cls")}
    registers = np.isin(np.arange(layout.n_tokens), list(layout.registers))
    assert (masks["cls"].astype(int) + registers + masks["patches"] == 1).all() and masks["all"].all()
    assert (masks["readable"] == ~registers).all() and masks["cls"].sum() == int(layout.has_cls)
    per_token = np.arange(layout.n_tokens)
    grid = layout.token_grid(per_token)
    for row, col in np.ndindex(layout.grid, layout.grid):
        token = layout.patch_token(row, col)
        assert grid[row, col] == token and layout.label(token) == f"({row},{col})"
    assert TokenLayout.from_attrs(layout.attrs()) == layout
    with pytest.raises(CafeError, match="n_tokens"):
        TokenLayout.from_attrs({**layout.attrs(), "n_tokens": layout.n_tokens + 1})
