"""SAE training (tokens/s) through `cafe.sae.train` from activation files of growing size, with each feed in the same
run: streamed from HDF5 (peak resident memory must stay flat once a file outgrows the stream's shuffle window) and
resident on the device (loaded once, the same batches gathered there). Each record also carries the training loop's
own rate (`tokens_per_s` of `cafe sae`'s metrics: the Adam steps, without input statistics, loading, evaluation and
checkpoint) and its achieved FLOP/s, which the report sets against the matmul peak."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cafe.bench.context import Context, Stage
from cafe.bench.fixtures import layer_file
from cafe.bench.flops import sae_train_flops
from cafe.sae.config import SAEConfig
from cafe.sae.feed import DEFAULT_BUFFER_TOKENS
from cafe.sae.train import train

ANALYSIS_IMAGES = 4  # held-out images the evaluation reads (kept small: it is not what is measured)
FEEDS = {  # sae.resident mode: (record name, what is timed)
    "never": ("sae.train", "train(): input statistics, Adam steps streamed from HDF5, evaluation, checkpoint"),
    "always": (
        "sae.train.resident",
        "train(): input statistics, tokens loaded onto the device once, Adam steps on batches gathered there, "
        "evaluation, checkpoint",
    ),
}


def sae_training(ctx: Context) -> dict[str, dict[str, Any]]:
    """Two records per activation-file size, `sae.train[<tokens>]` (streamed) and `sae.train.resident[<tokens>]`,
    timed in alternating pairs."""
    p, width = ctx.profile, ctx.backbone.width
    config = SAEConfig(
        expansion=p.sae_expansion, steps=p.sae_steps, batch_size=p.sae_batch, checkpoint_every=p.sae_steps
    )
    records = {}
    for file_tokens in p.sae_tokens:
        folder = ctx.workdir / f"sae{file_tokens}"
        path = layer_file(folder, width, ctx.backbone.layout, file_tokens, ANALYSIS_IMAGES)
        params = {
            "file_tokens": file_tokens,
            "file_mb": path.stat().st_size / 2**20,
            "width": width,
            "latents": p.sae_expansion * width,
            "steps": p.sae_steps,
            "batch_size": p.sae_batch,
            "shuffle_window_tokens": DEFAULT_BUFFER_TOKENS,
        }
        stages = {
            mode: feed_stage(ctx, path, replace(config, resident=mode), what, params)
            for mode, (_, what) in FEEDS.items()
        }
        names = {mode: f"{name}[{file_tokens}]" for mode, (name, _) in FEEDS.items()}
        pair = ctx.compare(names["always"], stages["always"][0], names["never"], stages["never"][0])
        for mode, (_, runs) in stages.items():
            records[names[mode]] = with_loop_rate(pair[names[mode]], runs, width, params["latents"])
        path.unlink()
    return records


def feed_stage(
    ctx: Context, path: Path, config: SAEConfig, what: str, params: dict[str, Any]
) -> tuple[Stage, list[dict[str, Any]]]:
    """train() on one layer file with the config's feed as a stage, and the list its runs' metrics go to."""
    latents, tokens = config.expansion * ctx.backbone.width, config.steps * config.batch_size
    runs: list[dict[str, Any]] = []  # the metrics of every run, warm-up included
    outputs = (path.with_suffix(".pt"), path.with_suffix(".json"))

    def run() -> None:
        runs.append(train(path, *outputs, config, str(ctx.timer.device), ctx.precision))

    flops = sae_train_flops(ctx.backbone.width, latents, tokens)
    return Stage(what, "tokens", tokens, run, flops, dict(params)), runs


def with_loop_rate(record: dict[str, Any], runs: list[dict[str, Any]], width: int, latents: int) -> dict[str, Any]:
    """The record with its feed and the training loop's own best rate (the Adam steps alone) in its params."""
    loop = max(r["tokens_per_s"] for r in runs)
    record["params"].update(
        feed=runs[-1]["feed"], loop_tokens_per_s=loop, loop_flop_per_s=sae_train_flops(width, latents, loop)
    )
    return record
