"""Precision plumbing (cafe.compute): each mode reaches the places it should, seen from inside the blocks."""

from __future__ import annotations

import logging

import pytest
import torch
from layer_files import write_layer

import cafe.compute as compute
import cafe.erf.lrp as lrp
from cafe.compute import PRECISIONS, ComputeConfig, precision_scope
from cafe.config import parse_section
from cafe.erf import ErfConfig, make_method
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget
from cafe.sae import SAEConfig
from cafe.sae.evaluate import input_stats
from cafe.sae.feed import TokenStream
from cafe.sae.resume import run_key
from cafe.sae.train import Trainer

MATMUL_DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def test_steps_override_the_section_and_bad_modes_name_their_key():
    config = parse_section(ComputeConfig, {"precision": "tf32", "steps": {"sae": "bf16"}}, "compute")
    assert config.for_step("sae") == "bf16" and config.for_step("erf") == "tf32"
    assert ComputeConfig().for_step("activations") == "fp32"
    with pytest.raises(CafeError, match="compute.steps.erf.*'fp16'"):
        parse_section(ComputeConfig, {"steps": {"erf": "fp16"}}, "compute")


@pytest.mark.parametrize("mode", PRECISIONS)
def test_tower_forward_runs_matmuls_in_the_mode_and_keeps_norms_and_residual_float32(tiny_backbone, mode):
    block = tiny_backbone.visual.transformer.resblocks[1]
    seen = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.dtype))
        for name, module in (("c_fc", block.mlp.c_fc), ("ln_1", block.ln_1), ("block", block))
    ]
    try:
        with torch.no_grad(), precision_scope(mode, "cpu"):
            resid = tiny_backbone.forward_to(tiny_backbone.normalize(torch.rand(2, 3, 32, 32)), 3)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"c_fc": MATMUL_DTYPE[mode], "ln_1": torch.float32, "block": torch.float32}
    assert resid.dtype == torch.float32


def test_tf32_sets_only_the_matmul_precision_flags_and_restores_them():
    before = torch.get_float32_matmul_precision()
    with precision_scope("tf32", "cpu"):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        assert not torch.is_autocast_enabled("cpu")
    with precision_scope("fp32", "cpu"):
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_attnlrp_rules_see_the_modes_matmuls_and_return_float32_relevance(tiny_backbone, tiny_sae, monkeypatch, mode):
    outputs = []

    def spy(real):
        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            outputs.append(out.dtype)
            return out

        return call

    monkeypatch.setattr(lrp, "linear_rule", spy(lrp.linear_rule))
    monkeypatch.setattr(lrp, "linear_act_rule", spy(lrp.linear_act_rule))  # fc1 + activation, fused under autocast
    method = make_method("attnlrp", FeatureTarget(tiny_backbone, tiny_sae, 2), ErfConfig())
    with precision_scope(mode, "cpu"):
        out = method.explain(torch.rand(2, 3, 32, 32), torch.tensor([1, 4]), torch.tensor([0, 1]))
    assert set(outputs) == {MATMUL_DTYPE[mode]} and len(outputs) == 2 * 4  # qkv, out, c_fc, c_proj per block
    assert out.maps.dtype == out.value.dtype == torch.float32 and torch.isfinite(out.maps).all()


def test_sae_training_autocasts_the_forward_and_keeps_float32_master_weights(tmp_path):
    rng = torch.Generator().manual_seed(0)
    tokens = (torch.randn(2048, 16, generator=rng) + 3).half().numpy()
    path = write_layer(tmp_path / "layer2.h5", tokens, tokens[: 4 * 17].reshape(4, 17, 16), layer=2)
    config = SAEConfig(expansion=2, steps=3, batch_size=64, checkpoint_every=100)
    stream = TokenStream(path, config.batch_size, config.seed)
    trainer = Trainer(
        config,
        stream,
        input_stats(stream.sample(512)),
        torch.device("cpu"),
        tmp_path / "p",
        run_key(config, "t"),
        "bf16",
    )
    seen, encode = [], trainer.sae.encode_train
    trainer.sae.encode_train = lambda h: seen.append(encode(h).dtype) or encode(h)
    trainer.run()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.sae.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())


@pytest.mark.parametrize(("flags", "warned"), [("fpu avx2 fma", True), ("avx2 avx512f avx512_bf16", False)])
def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(tmp_path, monkeypatch, caplog, flags, warned):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    read = compute.cpu_flags
    monkeypatch.setattr(compute, "cpu_flags", lambda: read(cpuinfo))
    compute._warn_if_slow_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="cafe.compute"):
        for _ in range(2):
            with precision_scope("bf16", "cpu"):
                pass
    assert sum("emulated" in r.message for r in caplog.records) == (1 if warned else 0)
    compute._warn_if_slow_bf16.cache_clear()
