"""The backbone: truncated forwards equal the full tower's residual stream, one pass serves every layer, and
each way of naming weights (tag, local checkpoint, random seed) loads or fails with a message that says what
to do."""

from __future__ import annotations

import copy
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch

from cafe.backbone import Backbone, BackboneConfig, tower_shape
from cafe.errors import CafeError


@pytest.fixture(scope="module")
def pixels(tiny_backbone: Backbone) -> torch.Tensor:
    return tiny_backbone.normalize(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def hooked_residuals(backbone: Backbone, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's output from a full forward of the tower with hooks (the straightforward way)."""
    outputs: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        for block in backbone.visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            final = backbone.visual(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, final


def test_truncated_forward_equals_the_full_towers_residual_stream(tiny_backbone, pixels):
    expected, _ = hooked_residuals(tiny_backbone, pixels)
    for layer in range(1, tiny_backbone.depth + 1):
        with torch.no_grad():
            got = tiny_backbone.forward_to(pixels, layer)
        assert got.shape == (3, tiny_backbone.n_tokens, tiny_backbone.width)
        torch.testing.assert_close(got, expected[layer - 1])


def test_one_pass_serves_every_layer_and_stops_at_the_deepest(tiny_backbone, pixels):
    calls: list[int] = []
    blocks = tiny_backbone.visual.transformer.resblocks
    handles = [block.register_forward_hook(lambda _m, _i, _o, i=i: calls.append(i)) for i, block in enumerate(blocks)]
    try:
        with torch.no_grad():
            streams = tiny_backbone.forward_layers(pixels, [2, 1])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0, 1]  # block 3 never runs
    for layer, stream in streams.items():
        torch.testing.assert_close(stream, tiny_backbone.forward_to(pixels, layer))


class Wrapped(torch.nn.Module):
    """A block of another kind (here: a standard one behind a wrapper), which the one-token path must run whole."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.inner = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.parametrize("wrapped", [False, True], ids=["standard", "other-block"])
def test_the_one_token_last_block_equals_the_full_forward_at_that_token(tiny_backbone, pixels, wrapped):
    backbone = Backbone(tiny_backbone.visual, (0.5,) * 3, (0.5,) * 3, "tiny", "test")
    if wrapped:
        backbone.visual = copy.deepcopy(tiny_backbone.visual)
        blocks = backbone.visual.transformer.resblocks
        backbone.visual.transformer.resblocks = torch.nn.ModuleList(Wrapped(b) for b in blocks)
    tokens = torch.tensor([0, 5, tiny_backbone.n_tokens - 1])
    rows = torch.arange(3)
    for layer in range(1, tiny_backbone.depth + 1):
        x = pixels.clone().requires_grad_(True)
        full = backbone.forward_to(x, layer)[rows, tokens]
        (grad_full,) = torch.autograd.grad(full.square().sum(), x)
        one = backbone.forward_at(x, layer, tokens)
        (grad_one,) = torch.autograd.grad(one.square().sum(), x)
        torch.testing.assert_close(one, full)
        torch.testing.assert_close(grad_one, grad_full)  # IG and gradient attributions go through it too


def test_the_one_token_last_block_skips_other_tokens_work(tiny_backbone, pixels):
    """Block L's second LayerNorm and MLP see one row per image, not all T tokens: the saving is real, not just
    a re-indexing."""
    seen: list[tuple[int, ...]] = []
    norm2 = tiny_backbone.visual.transformer.resblocks[1].ln_2  # what the MLP reads
    handle = norm2.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            tiny_backbone.forward_at(pixels, 2, torch.tensor([0, 1, 2]))
    finally:
        handle.remove()
    assert seen == [(3, tiny_backbone.width)]


def test_a_layer_outside_the_tower_is_named(tiny_backbone, pixels):
    with pytest.raises(CafeError, match=r"layer 4 does not exist: cafe-tiny-vit has blocks 1..3"):
        tiny_backbone.forward_to(pixels, 4)


def test_shape_is_known_without_weights():
    shape = tower_shape("ViT-L-14")
    assert (shape.depth, shape.width, shape.grid, shape.n_tokens) == (24, 1024, 16, 257)


def test_unknown_model_name_is_named():
    with pytest.raises(CafeError, match="backbone.model: unknown OpenCLIP model 'ViT-Q-99'"):
        Backbone.load(BackboneConfig("ViT-Q-99"))


def test_local_checkpoint_loads_the_saved_weights(tiny_backbone, pixels, tmp_path: Path):
    torch.manual_seed(0)
    model = open_clip.create_model("cafe-tiny-vit")
    path = tmp_path / "tower.pt"
    torch.save(model.state_dict(), path)
    loaded = Backbone.load(BackboneConfig("cafe-tiny-vit", pretrained=str(path), seed=123, device="cpu"))
    assert loaded.tag == str(path)
    for mine, saved in zip(loaded.visual.state_dict().values(), model.visual.state_dict().values()):
        torch.testing.assert_close(mine, saved)


def test_missing_checkpoint_file_is_named(tmp_path: Path):
    missing = tmp_path / "nowhere" / "tower.pt"
    with pytest.raises(CafeError, match="checkpoint file .*nowhere/tower.pt.* not found"):
        Backbone.load(BackboneConfig("cafe-tiny-vit", pretrained=str(missing)))


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(CafeError, match=r"'laion9000' is not a tag of ViT-L-14 \(tags: .*laion2b_s32b_b82k"):
        Backbone.load(BackboneConfig("ViT-L-14", pretrained="laion9000"))


def test_pretrained_tag_offline_without_a_cache_fails_fast_and_says_how_to_fix_it(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CafeError) as error:
        Backbone.load(BackboneConfig("ViT-L-14", pretrained="laion2b_s32b_b82k"))
    message = str(error.value)
    assert "ViT-L-14/laion2b_s32b_b82k" in message and "no network and no cached copy" in message
    assert "backbone.pretrained to its local path" in message


@pytest.mark.parametrize("seed", range(8))
def test_a_stamp_matches_its_own_unchanged_tensors_and_nothing_else(seed):
    """Stamp.matches holds for the same tensors unchanged since `of`, and fails after an in-place write, a dtype or
    device change, a replaced tensor, a None moved or a list of another length (random shapes and positions)."""
    from cafe.blocks import Stamp

    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=gen))
    draws = torch.rand(n, generator=gen)
    tensors = [None if float(u) < 0.3 else torch.randn(3, 2, generator=gen) for u in draws]
    tensors[0] = torch.randn(4, generator=gen)
    stamp = Stamp.of(tensors)
    assert stamp.matches(tensors) and stamp.matches(list(tensors))
    assert not stamp.matches(tensors + [None]) and not stamp.matches(tensors[:-1])
    i = int(torch.randint(0, n, (1,), generator=gen))
    if tensors[i] is None:
        assert not stamp.matches([*tensors[:i], torch.zeros(1), *tensors[i + 1 :]])
    else:
        assert not stamp.matches([*tensors[:i], None, *tensors[i + 1 :]])
        assert not stamp.matches([*tensors[:i], tensors[i].clone(), *tensors[i + 1 :]])  # same values, new storage
        assert not stamp.matches([*tensors[:i], tensors[i].view(torch.int32), *tensors[i + 1 :]])  # same address
        tensors[i].mul_(1)  # an in-place write, even one that changes no value
        assert not stamp.matches(tensors)


def test_a_stamp_pins_its_sources_so_a_freed_address_cannot_match_a_new_tensor():
    """The address-reuse hole: a stamp of (data_ptr, version) alone matches a new tensor that the allocator puts where
    a freed source was. Stamp's detached aliases keep the source's storage alive, so no new tensor gets that address.
    64 MiB tensors: above glibc's largest mmap threshold (32 MiB) an unmapped block's address comes straight back
    (a small block goes to a free list that other allocations in the process, such as a test worker's, may take)."""
    from cafe.blocks import Stamp

    reused, SIZE = 0, 1 << 24
    for _ in range(10):
        source = torch.empty(SIZE)
        address, stamp = source.data_ptr(), Stamp.of([source])
        del source
        fresh = torch.empty(SIZE)
        assert fresh.data_ptr() != address and not stamp.matches([fresh])
        del fresh
        loose = torch.empty(SIZE)  # the same without a stamp: the allocator may well reuse the address
        address = loose.data_ptr()
        del loose
        reused += torch.empty(SIZE).data_ptr() == address
    assert reused > 0, "the allocator never reused an address here: the pinning check above proves nothing"
