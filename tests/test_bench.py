"""`cafe bench --quick` on the demo tower: every stage is measured and described; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from cafe.bench.harness import OVERRIDE, Harness, Probe, Sample
from cafe.cli import main

STAGES = [
    "extraction",
    "extraction.per_layer",
    "extraction.feed.cpu",
    "extraction.feed.device",
    "extraction.forward",
    "target.truncated",
    "target.hooked",
    "insertion",
    "insertion.per_step",
    "reference.autograd",
    *[f"erf.{m}{suffix}" for m in ("attnlrp", "ig", "kernelshap", "gradient") for suffix in ("", ".one_at_a_time")],
]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    assert main(["bench", "--quick", "--models", "demo", "--out", str(out), "--allow-busy", "--wait", "0"]) == 0
    assert out.with_suffix(".md").read_text().startswith("# cafe bench")
    return json.loads(out.read_text())


def test_quick_bench_measures_every_stage_with_throughput_and_utilisation(quick_results: dict) -> None:
    stages = quick_results["models"]["cafe-demo-vit"]["stages"]
    streamed = [r for name, r in stages.items() if name.startswith("sae.train[")]
    resident = [r for name, r in stages.items() if name.startswith("sae.train.resident[")]
    assert set(STAGES) <= set(stages) and len(streamed) == len(resident) == 2
    assert [r["params"]["feed"] for r in streamed + resident] == ["stream"] * 2 + ["resident"] * 2
    assert all(r["params"]["loop_tokens_per_s"] > 0 for r in streamed + resident)
    for name, record in stages.items():
        assert record["throughput"] > 0 and record["peak_memory_mb"] > 0, name
        if record["flops"]:  # the feed (decode + resize) does no matmul work: utilisation 0
            assert 0 < record["utilisation"] <= 1.5, (name, record["utilisation"])
        else:
            assert name.startswith("extraction.feed.") and record["utilisation"] == 0, name


def test_quick_bench_describes_the_machine_and_its_peak(quick_results: dict) -> None:
    machine = quick_results["machine"]
    assert {"cpu", "cores", "torch", "threads", "device", "memory"} <= set(machine)
    assert quick_results["peak"]["flop_per_s"] > 0


def test_quick_bench_compares_with_baselines_and_fits_depth(quick_results: dict) -> None:
    model = quick_results["models"]["cafe-demo-vit"]
    assert {c["baseline"] for c in model["comparisons"]} >= {
        "extraction.per_layer",
        "target.hooked",
        "insertion.per_step",
    }
    assert all(c["speedup"] > 0 for c in model["comparisons"])
    assert len(model["erf_depth"]["points"]) >= 2 and "seconds_per_target_per_block" in model["erf_depth"]["fit"]
    assert "versus" in model["stages"].get("erf.attnlrp.lxt", {}) or model["skipped"]["erf.attnlrp.lxt"]
    quiet = quick_results["machine"]["admission"]["quiet"]
    assert all(c["void"] == OVERRIDE or quiet for c in model["comparisons"])  # never "not interleaved"


class QuietProbe(Probe):
    """This machine's clock and this process tree's CPU use, with no other process running: a quiet machine."""

    def sample(self) -> Sample:
        now = super().sample()
        return replace(now, machine_cpu=now.own_cpu, load=0.0)


@pytest.mark.skipif(importlib.util.find_spec("lxt") is None, reason="the reference extra (lxt) is not installed")
def test_cafe_and_lxt_run_in_alternating_pairs_hold_on_a_quiet_machine_and_agree(tmp_path) -> None:
    """Each side in a worker process of its own, driven turn by turn: lxt's record is a pair record like every
    other (median, min and max of the per-pair speed-ups of 5 pairs), holds on a quiet machine, the same thread
    count on both sides, and the maps of the two agree."""
    from cafe.bench.context import Context
    from cafe.bench.fixtures import load_tower, random_sae
    from cafe.bench.lxt import lxt_attnlrp
    from cafe.bench.measure import Timer
    from cafe.bench.profiles import profile
    from cafe.bench.suite import comparisons

    cpu, p, harness = torch.device("cpu"), profile("demo", quick=True), Harness(wait_s=0, probe=QuietProbe())
    harness.admit()
    backbone = load_tower(p.model, cpu)
    sae = random_sae(backbone.width, p.sae_expansion, cpu)
    stages = lxt_attnlrp(Context(p, backbone, sae, Timer(harness, cpu, repeats=1, warmup=0, pairs=5), tmp_path))
    cafe, lxt = stages["erf.attnlrp.cp"], stages["erf.attnlrp.lxt"]
    speedup = lxt["versus"]["speedup"]
    assert lxt["versus"]["order"] == "ABBAABBAAB" and len(speedup["runs"]) == 5
    assert speedup["min"] <= speedup["median"] <= speedup["max"] and lxt["versus"]["void"] is None
    assert cafe["params"]["threads"] == lxt["params"]["threads"] == torch.get_num_threads()
    assert lxt["agreement"]["holds"] and lxt["agreement"]["nonzero"] == p.erf_targets
    (row,) = comparisons(stages)
    assert row["void"] is None and row["speedup"] == speedup["median"]


def test_a_gpu_gets_larger_sizes_and_its_erf_batch_size() -> None:
    """On a GPU the CPU sizes would time kernel launches: the ERF targets and their batch grow there."""
    from cafe.bench.erf import erf_config
    from cafe.bench.profiles import profile

    cpu, gpu = profile("vitl", quick=False), profile("vitl", quick=False, gpu=True)
    assert gpu.erf_targets > cpu.erf_targets and gpu.model == cpu.model
    assert erf_config(gpu).batch_size == gpu.erf_batch
    assert erf_config(cpu).batch_size == 16  # params.yaml's erf.batch_size where the profile sets none
    assert profile("vitl", quick=True, gpu=True) == profile("vitl", quick=True)


def test_the_cli_offers_every_stage_of_the_suite_and_runs_only_those_asked(tmp_path) -> None:
    from cafe.bench import STAGE_NAMES
    from cafe.bench.suite import STAGES

    assert list(STAGES) == STAGE_NAMES
    out = tmp_path / "target.json"
    argv = [
        "bench",
        "--quick",
        "--models",
        "demo",
        "--stages",
        "target",
        "--out",
        str(out),
        "--allow-busy",
        "--wait",
        "0",
    ]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results["models"]["cafe-demo-vit"]["stages"]) == {"target.truncated", "target.hooked"}
    (comparison,) = results["models"]["cafe-demo-vit"]["comparisons"]
    assert comparison["speedup_min"] <= comparison["speedup"] <= comparison["speedup_max"]
    assert comparison["void"] == "load-override: figures void" or results["machine"]["admission"]["quiet"]


def test_a_busy_machine_is_refused_by_cafe_bench_with_what_to_do(tmp_path, monkeypatch, capsys) -> None:
    from cafe.bench import harness

    monkeypatch.setattr(harness.Harness, "_quiet_now", lambda self: (False, 9.0, 2.0))
    assert main(["bench", "--quick", "--models", "demo", "--out", str(tmp_path / "x.json"), "--wait", "0"]) == 2
    assert "machine busy" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
