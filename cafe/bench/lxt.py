"""cafe's AttnLRP against the authors' library lxt with the same rule (CP-LRP in attention, lxt's ViT recipe), on the
same targets and thread count. lxt patches torch classes process-wide, so each side runs in a worker process of its
own (cafe.bench.lxt_worker), and the harness drives the two turn by turn in alternating pairs: the speed-up is a
median (min-max) of per-pair ratios like every other, and the maps of both must agree. Where lxt cannot run, cafe's
record stands alone and the reason is recorded in lxt's place."""

from __future__ import annotations

import importlib.util
import json
import select
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from cafe.bench.context import Context, Stage
from cafe.bench.erf import erf_config, erf_inputs
from cafe.bench.measure import Timing
from cafe.errors import CafeError
from cafe.feature_target import FeatureTarget

TIMEOUT_S = 600  # for any one answer of a worker
MIN_CORRELATION = 0.9999  # per map, cafe's against lxt's (tests/test_attnlrp.py holds lxt 2.1 to these too)
MAX_DIFF = 2e-3  # max |cafe - lxt| / max |lxt| per map (lxt's unsigned epsilon stabilisers differ slightly)
CAFE, LXT = "erf.attnlrp.cp", "erf.attnlrp.lxt"


class Worker:
    """One side in a process of its own: `run` is one call (what the harness times), `maps` the maps it gives."""

    def __init__(self, side: str, inputs: Path):
        self.side, self.log = side, inputs.with_name(f"{side}.log")
        self.peaks: list[float] = []  # the memory high-water of each run, in the worker
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cafe.bench.lxt_worker", side, str(inputs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    @cached_property
    def hello(self) -> dict[str, Any]:
        """Its first answer, once set up: its thread count and start memory, or why it cannot run."""
        return self._answer()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the worker: stdin closed, it returns; killed if it has not within 30 s."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _answer(self) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            tail = (self.log.read_text().strip().splitlines() or ["no output"])[-1]
            raise CafeError(f"bench: the {self.side} worker of the lxt comparison stopped answering: {tail}")
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def run(self) -> None:
        self.peaks.append(self.ask("run")["peak_memory_mb"])

    def maps(self) -> torch.Tensor:
        path = self.log.with_suffix(".maps.pt")
        self.ask(f"maps {path}")
        return torch.load(path)

    def timing(self, timing: Timing) -> Timing:
        """The harness's timing of this side, with the worker's own memory figures in place of the parent's."""
        return replace(timing, peak_memory_mb=max(self.peaks), start_memory_mb=self.hello["start_memory_mb"])


def write_inputs(ctx: Context) -> Path:
    """The tower, SAE, targets, rules and thread count both workers load: at each target token its most active
    feature, so that every map is non-zero and the agreement of the maps compares something."""
    p, config = ctx.profile, erf_config(ctx.profile)
    layer = ctx.layer(p.erf_layer)
    images, tokens, _ = erf_inputs(ctx, p.erf_targets)
    target = FeatureTarget(ctx.backbone, ctx.sae, layer)
    with torch.no_grad():
        features = target.latents(ctx.backbone.normalize(images))[torch.arange(len(tokens)), tokens].argmax(-1)
    blob = {
        "model": p.model,
        "device": str(ctx.timer.device),
        "threads": torch.get_num_threads(),
        "visual": ctx.backbone.visual.state_dict(),
        "sae": ctx.sae.state_dict(),
        "sae_shape": (ctx.sae.d_in, ctx.sae.n_latents),
        "layer": layer,
        "config": replace(config, attnlrp=replace(config.attnlrp, attention="cp")),
        "images": images,
        "tokens": tokens,
        "features": features.cpu(),
    }
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path := ctx.workdir / "lxt_inputs.pt")
    return path


def side_stage(ctx: Context, worker: Worker, what: str, params: dict[str, Any]) -> Stage:
    """One side's stage: AttnLRP with CP-LRP for the profile's ERF targets, a call of `worker` each run."""
    layer, n = ctx.layer(ctx.profile.erf_layer), ctx.profile.erf_targets
    return Stage(
        f"{what}, {n} targets, in a worker process",
        "targets",
        n,
        worker.run,
        n * ctx.arch.forward_backward(layer, cp=True),
        {"layer": layer, "targets": n, "threads": worker.hello["threads"], **params},
    )


def cafe_stage(ctx: Context, ours: Worker) -> Stage:
    batch = erf_config(ctx.profile).batch_size
    params = {"attention": "cp", "batch_size": batch}
    return side_stage(ctx, ours, "attnlrp with CP-LRP inside attention, one batched attribute() call", params)


def lxt_stage(ctx: Context, theirs: Worker) -> Stage:
    what = "lxt: gradient x input under lxt's global ViT patches (CP-LRP in attention)"
    return side_stage(ctx, theirs, what, {"patched": theirs.hello["patched"]})


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """How closely cafe's maps match lxt's, map by map: the lowest correlation (over maps that are not all zero),
    the largest difference relative to the map's largest |lxt| value, and whether both are within the bounds."""
    a, b = ours.flatten(1).double(), theirs.flatten(1).double()
    scale = b.abs().amax(1)
    difference = float(((a - b).abs().amax(1) / scale.clamp_min(torch.finfo(b.dtype).tiny)).max())
    live = [torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y, s in zip(a, b, scale) if s > 0]
    correlation = float(min(live)) if live else 1.0
    holds = correlation > MIN_CORRELATION and difference <= MAX_DIFF
    return {"maps": len(a), "nonzero": len(live), "min_correlation": correlation, "max_difference": difference,
            "holds": holds}  # fmt: skip


def compare(ctx: Context, ours: Worker, theirs: Worker) -> dict[str, dict[str, Any]]:
    """Both records from alternating pairs, lxt's with the per-pair speed-up of cafe and the maps' agreement (a
    speed-up between maps that differ is void)."""
    cafe, lxt = cafe_stage(ctx, ours), lxt_stage(ctx, theirs)
    t_ours, t_theirs, ratio = ctx.timer.pair(cafe.fn, lxt.fn)
    records = ctx.paired(CAFE, cafe, LXT, lxt, ours.timing(t_ours), theirs.timing(t_theirs), ratio)
    agree = records[LXT]["agreement"] = agreement(ours.maps(), theirs.maps())
    if not agree["holds"]:
        why = (
            f"the maps differ: correlation {agree['min_correlation']:.6f} (bound > {MIN_CORRELATION}), difference "
            f"{agree['max_difference']:.2e} of the largest value (bound {MAX_DIFF})"
        )
        versus = records[LXT]["versus"]
        versus["void"] = "; ".join(filter(None, [versus["void"], why]))
    return records


def lxt_attnlrp(ctx: Context) -> dict[str, dict[str, Any] | str]:
    """`erf.attnlrp.cp` and `erf.attnlrp.lxt` in alternating pairs; where lxt cannot run, cafe's record alone and
    why in lxt's place (nothing where the profile skips lxt)."""
    if not ctx.profile.lxt:
        return {}
    inputs = write_inputs(ctx)
    sides = ["cafe", "lxt"] if importlib.util.find_spec("lxt") else ["cafe"]
    with ExitStack() as stack:
        ours, *theirs = [stack.enter_context(Worker(side, inputs)) for side in sides]  # both set up at once
        if "error" in ours.hello:
            raise CafeError(f"bench: {ours.hello['error']}")
        why = theirs[0].hello.get("error") if theirs else "lxt is not installed here (pip install -e '.[reference]')"
        return alone(ctx, ours, why) if why else compare(ctx, ours, theirs[0])


def alone(ctx: Context, ours: Worker, why: str) -> dict[str, dict[str, Any] | str]:
    """cafe's record timed by itself, and why lxt's is missing."""
    cafe = cafe_stage(ctx, ours)
    timing = ours.timing(ctx.timer.measure(cafe.fn))
    return {CAFE: ctx.record(cafe.what, cafe.unit, cafe.count, timing, cafe.flops, cafe.params), LXT: why}
