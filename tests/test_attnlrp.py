"""AttnLRP: relevance is conserved, the maps agree with lxt's reference implementation, and nothing outside the
ERF computation changes (no class patched, no hook left, other models' forwards identical)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from cafe.backbone import Backbone, BackboneConfig
from cafe.bench.lxt import agreement
from cafe.config import parse_section
from cafe.erf import ErfConfig, make_method
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget

LAYER = 3  # all three blocks of the tiny tower
TOKENS = torch.tensor([0, 3, 7, 16])  # CLS and patch tokens
CONSERVATION_RTOL = 1e-9  # float64, epsilon 1e-12: exact up to rounding


def attnlrp(target: FeatureTarget, **rules) -> object:
    return make_method("attnlrp", target, parse_section(ErfConfig, {"attnlrp": rules}, "erf"))


def active_features(target: FeatureTarget, images: torch.Tensor) -> torch.Tensor:
    """The most active feature at each target token, so that every z is clearly positive."""
    latents = target.latents(target.backbone.normalize(images))
    return latents[torch.arange(len(images)), TOKENS].argmax(-1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(len(TOKENS), 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def bias_free(tiny_backbone: Backbone, tiny_sae: nn.Module) -> FeatureTarget:
    """The tiny tower and SAE in float64 with every bias, CLS and positional embedding and b_d set to zero."""
    backbone, sae = copy.deepcopy(tiny_backbone), copy.deepcopy(tiny_sae).double()
    backbone.visual.double()
    with torch.no_grad():
        for name, p in backbone.visual.named_parameters():
            if name.endswith("bias") or name in ("class_embedding", "positional_embedding"):
                p.zero_()
        sae.b_d.zero_()
    return FeatureTarget(backbone, sae, LAYER)


@pytest.mark.parametrize("gamma", [0.0, 0.25, {"attention": 0.0, "mlp": 1.0}])
def test_relevance_is_conserved_onto_the_patches_of_a_bias_free_tower(bias_free, images, gamma):
    # Every rule but the softmax rule is conservative; with no biases and no embeddings to absorb relevance,
    # the patches hold all of z. (AttnLRP's softmax rule itself leaves a Taylor bias: see absorbed.)
    images = images.double()
    method = attnlrp(bias_free, attention="cp", epsilon=1e-12, gamma=gamma)
    out = method.explain(images, TOKENS, active_features(bias_free, images))
    assert (out.value > 0).all()
    torch.testing.assert_close(out.maps.sum((1, 2)), out.value, rtol=CONSERVATION_RTOL, atol=0)
    torch.testing.assert_close(out.absorbed, torch.zeros_like(out.absorbed), rtol=0, atol=CONSERVATION_RTOL * 10)


def test_lrp0_fast_path_equals_the_epsilon_rule_in_the_limit(bias_free, images):
    """epsilon = 0 runs linear layers as plain F.linear (LRP-0 is the plain gradient); it must agree with the
    rule's own backward at a vanishing epsilon, and stay conservative."""
    images = images.double()
    features = active_features(bias_free, images)
    fast = attnlrp(bias_free, attention="cp", epsilon=0.0).explain(images, TOKENS, features)
    rule = attnlrp(bias_free, attention="cp", epsilon=1e-300).explain(images, TOKENS, features)
    torch.testing.assert_close(fast.maps, rule.maps, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast.maps.sum((1, 2)), fast.value, rtol=CONSERVATION_RTOL, atol=0)


def test_absorbed_is_what_the_patches_leave_of_z(tiny_backbone, tiny_sae, images):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    features = active_features(target, images)
    out = attnlrp(target).explain(images, TOKENS, features)
    torch.testing.assert_close(
        out.value, target(tiny_backbone.normalize(images), TOKENS, features), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(out.maps.sum((1, 2)) + out.absorbed, out.value, rtol=1e-5, atol=1e-6)


def test_targets_in_one_batch_get_the_maps_they_get_alone(tiny_backbone, tiny_sae, images):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    features, method = active_features(target, images), attnlrp(target)
    batched = method.attribute(images, TOKENS, features)
    alone = torch.cat(
        [method.attribute(images[i : i + 1], TOKENS[i : i + 1], features[i : i + 1]) for i in range(len(images))]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("lxt") is None or importlib.util.find_spec("zennit") is None,
    reason="the reference extra (lxt, zennit) is not installed",
)
def test_maps_agree_with_lxt_reference(tiny_backbone, tiny_sae, images, tmp_path):
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    features, gamma = active_features(target, images), 0.25
    blob = dict(
        model="cafe-tiny-vit",
        visual=tiny_backbone.visual.state_dict(),
        sae=tiny_sae.state_dict(),
        sae_shape=(tiny_sae.d_in, tiny_sae.n_latents),
        layer=LAYER,
        pixels=tiny_backbone.normalize(images),
        tokens=TOKENS,
        features=features,
        gamma=gamma,
    )
    torch.save(blob, tmp_path / "in.pt")
    script = Path(__file__).with_name("lxt_reference.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reference = torch.load(tmp_path / "out.pt")
    settings = {"attnlrp": {}, "cp": {"attention": "cp"}, "cp_gamma": {"attention": "cp", "gamma": {"mlp": gamma}}}
    for name, rules in settings.items():
        agree = agreement(attnlrp(target, **rules).attribute(images, TOKENS, features), reference[name])
        assert agree["holds"] and agree["nonzero"] == len(TOKENS), (name, agree)
    assert not torch.allclose(reference["cp"], reference["cp_gamma"]), "gamma changed nothing: the check is void"


def test_computing_an_erf_leaves_every_other_forward_untouched(tiny_backbone, tiny_sae, images):
    other = open_clip.create_model("cafe-tiny-vit").eval()
    classes = (nn.MultiheadAttention, nn.GELU, nn.LayerNorm, open_clip.transformer.LayerNorm, nn.Linear)
    forwards = {cls: cls.forward for cls in classes}
    with torch.no_grad():
        before, tower_before = (
            other.encode_image(images),
            tiny_backbone.forward_to(tiny_backbone.normalize(images), LAYER),
        )
    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    for rules in ({}, {"attention": "cp", "gamma": 0.5}):
        attnlrp(target, **rules).attribute(images, TOKENS, active_features(target, images))
    with torch.no_grad():
        assert torch.equal(other.encode_image(images), before)
        assert torch.equal(tiny_backbone.forward_to(tiny_backbone.normalize(images), LAYER), tower_before)
    assert all(cls.forward is forwards[cls] for cls in classes)
    modules = list(tiny_backbone.visual.modules()) + list(other.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules)


def test_a_tower_the_rules_do_not_cover_is_refused_by_name(tiny_sae):
    backbone = Backbone.load(BackboneConfig("cafe-tiny-vit", device="cpu"))
    backbone.visual.transformer.resblocks[1].attn.batch_first = False
    with pytest.raises(CafeError, match="not a standard OpenCLIP ResidualAttentionBlock"):
        attnlrp(FeatureTarget(backbone, tiny_sae, 1))


@pytest.mark.parametrize("epsilon", [1e-6, 0.5, 1e-300])
def test_the_epsilon_rule_divides_the_relevance_by_the_stabilised_output(epsilon):
    """R_x = x * W^T (R / (y + epsilon sign y)) with R = y * grad: relevance 0 at y = 0, shrunk where |y| is small."""
    from cafe.erf.rules import linear_rule, stabilize

    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    weight = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bias = torch.tensor([0.0, 1e-3, -2.0], dtype=torch.float64)
    with torch.no_grad():
        x[0] = 0.0  # y = bias: one output exactly 0
    y = linear_rule(x, weight, bias, epsilon)
    grad = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (modified,) = torch.autograd.grad(y, x, grad)
    expected = (grad * y.detach() / stabilize(y.detach(), epsilon)) @ weight
    torch.testing.assert_close(modified, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("epsilon", [1e-6, 0.5, 1e-300])
def test_the_16_bit_epsilon_rule_is_the_float32_one_up_to_rounding_and_exact_at_zero(epsilon):
    """bf16's three-pass form of the epsilon rule (autocast) gives 0 where y = 0 and otherwise the float32 form's
    value within bf16's rounding of the factor (outputs over eleven decades, random gradients)."""
    from cafe.erf.rules import epsilon_scale

    gen = torch.Generator().manual_seed(0)
    y = torch.randn(4096, generator=gen) * 10.0 ** torch.randint(-9, 2, (4096,), generator=gen)
    y[:64] = 0.0
    grad = torch.randn(4096, generator=gen).bfloat16()
    low = epsilon_scale(grad, y.bfloat16(), epsilon)
    high = epsilon_scale(grad.float(), y.bfloat16().float(), epsilon)
    assert low.dtype == torch.bfloat16 and (low[:64] == 0).all()
    assert ((low.float() - high).abs() <= 2**-7 * grad.float().abs()).all()


def test_stabilize_keeps_a_tiny_epsilon_in_float64():
    from cafe.erf.rules import stabilize

    y = torch.tensor([0.0, -0.0, 1e-310, -3.0], dtype=torch.float64)
    assert (stabilize(y, 1e-300).abs() >= 1e-300).all()


@pytest.mark.parametrize("seed", range(9))
def test_packed_attention_is_sdpa_with_each_factors_share_of_the_gradient(seed):
    """The bf16 CPU attention (explicit matmuls on the packed q/k/v projection, own backward) is SDPA over the heads,
    and its gradient is SDPA's times the share of q and k, and of v (float64, random shapes, scales and shares, cp's
    zero share included: only rounding may differ)."""
    from cafe.erf.mixed_precision import packed_attention

    gen = torch.Generator().manual_seed(seed)
    b, heads, t, d = (int(v) for v in torch.randint(1, 6, (4,), generator=gen) * torch.tensor([1, 1, 7, 4]))
    shares = [(1.0, 1.0), (0.25, 0.5), (0.0, 1.0)][seed % 3]
    qkv = float(torch.rand(1, generator=gen)) * 4 * torch.randn(b, t, 3 * heads * d, dtype=torch.float64, generator=gen)
    grad = torch.randn(b, t, heads * d, dtype=torch.float64, generator=gen)

    def sdpa(packed: torch.Tensor) -> torch.Tensor:
        q, k, v = packed.view(b, t, 3, heads, d).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, heads * d)

    inputs = [qkv.clone().requires_grad_(True) for _ in range(2)]
    ours, theirs = packed_attention(inputs[0], heads, shares), sdpa(inputs[1])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)
    (got,), (plain,) = (torch.autograd.grad(out, x, grad) for out, x in zip((ours, theirs), inputs, strict=True))
    share = torch.tensor([shares[0], shares[0], shares[1]], dtype=torch.float64)
    expected = (plain.view(b, t, 3, heads * d) * share[:, None]).view_as(plain)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_weights_cast_once_follow_in_place_changes(tiny_backbone):
    """CastViews casts each block's linear weights once per dtype, and casts again after a weight changes in place."""
    from cafe.erf.mixed_precision import CastViews

    backbone = copy.deepcopy(tiny_backbone)
    views = CastViews(backbone)
    first = views.view(1, torch.bfloat16)
    assert views.view(1, torch.bfloat16) is first and views.view(1, None) is not first
    assert first.mlp.fc1_weight.dtype == torch.bfloat16 and first.norm1 is backbone.view(1).norm1
    torch.testing.assert_close(first.attn.qkv_weight, backbone.view(1).attn.qkv_weight.bfloat16(), rtol=0, atol=0)
    with torch.no_grad():
        backbone.view(1).mlp.fc2_weight.mul_(2)
    again = views.view(1, torch.bfloat16)
    assert again is not first
    torch.testing.assert_close(again.mlp.fc2_weight, backbone.view(1).mlp.fc2_weight.bfloat16(), rtol=0, atol=0)
    mlp = backbone.visual.transformer.resblocks[0].mlp
    for _ in range(5):  # a replaced weight, its predecessor freed: recast, whatever address the new one gets
        mlp.c_fc.weight = nn.Parameter(torch.randn_like(mlp.c_fc.weight), requires_grad=False)
        recast = views.view(1, torch.bfloat16).mlp.fc1_weight
        torch.testing.assert_close(recast, mlp.c_fc.weight.bfloat16(), rtol=0, atol=0)


def test_bf16_maps_rank_patches_as_the_fp32_maps_do(tiny_backbone, tiny_sae, images):
    """Under bf16 autocast (cast weights, matmul attention on a CPU) AttnLRP's maps keep fp32's patch ranking."""
    from cafe.compute import precision_scope
    from cafe.stats import spearman

    target = FeatureTarget(tiny_backbone, tiny_sae, LAYER)
    features, method = active_features(target, images), attnlrp(target)
    fp32 = method.attribute(images, TOKENS, features)
    with precision_scope("bf16", "cpu"):
        bf16 = method.attribute(images, TOKENS, features)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # bf16 really ran
    assert (spearman(bf16.flatten(1).numpy(), fp32.flatten(1).numpy()) > 0.95).all()


@pytest.mark.parametrize("seed", range(8))
def test_the_fused_linear_activation_rule_is_the_epsilon_rule_then_the_identity_rule(seed):
    """bf16's fc1 + activation as one rule gives the modified gradient of the two rules apart (float64, random
    shapes, activations, epsilons, and outputs exactly 0)."""
    from cafe.erf.mixed_precision import linear_act_rule
    from cafe.erf.rules import identity_rule, linear_rule

    gen = torch.Generator().manual_seed(seed)
    n, d_in, d_out = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
    fn = [nn.functional.gelu, nn.functional.silu, torch.relu, lambda t: t * torch.sigmoid(1.702 * t)][seed % 4]
    epsilon = [1e-6, 0.3, 1e-300][seed % 3]
    x = torch.randn(n, d_in, dtype=torch.float64, generator=gen).requires_grad_(True)
    weight = torch.randn(d_out, d_in, dtype=torch.float64, generator=gen)
    bias = torch.randn(d_out, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        x[0] = 0.0
        bias[0] = 0.0  # h[0, 0] = 0 exactly
    grad = torch.randn(n, d_out, dtype=torch.float64, generator=gen)
    fused = linear_act_rule(x, weight, bias, fn, epsilon)
    apart = identity_rule(fn, linear_rule(x, weight, bias, epsilon))
    torch.testing.assert_close(fused, apart, rtol=0, atol=0)
    ours, theirs = (torch.autograd.grad(y, x, grad)[0] for y in (fused, apart))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_the_fused_rule_keeps_an_epsilon_below_bf16s_range_from_dividing_by_zero():
    from cafe.erf.mixed_precision import linear_act_rule

    x = torch.zeros(2, 3, dtype=torch.bfloat16, requires_grad=True)
    out = linear_act_rule(x, torch.ones(4, 3, dtype=torch.bfloat16), None, nn.functional.gelu, 1e-300)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and (grad == 0).all()
