"""SAE training (tokens/s) through `cafe.sae.train`, streaming from activation files of growing size: the peak
resident memory must stay flat once a file outgrows the stream's shuffle window."""

from __future__ import annotations

from typing import Any

from cafe.bench.context import Context
from cafe.bench.fixtures import layer_file
from cafe.bench.flops import sae_train_flops
from cafe.sae import SAEConfig, train
from cafe.sae.feed import DEFAULT_BUFFER_TOKENS

ANALYSIS_IMAGES = 4  # held-out images the evaluation reads (kept small: it is not what is measured)


def sae_training(ctx: Context) -> dict[str, dict[str, Any]]:
    """One record per activation-file size, `sae.train[<tokens>]`."""
    p, width = ctx.profile, ctx.backbone.width
    config = SAEConfig(
        expansion=p.sae_expansion, steps=p.sae_steps, batch_size=p.sae_batch, checkpoint_every=p.sae_steps
    )
    tokens = p.sae_steps * p.sae_batch
    device = str(ctx.timer.device)
    records = {}
    for file_tokens in p.sae_tokens:
        folder = ctx.workdir / f"sae{file_tokens}"
        path = layer_file(folder, width, ctx.backbone.n_tokens, file_tokens, ANALYSIS_IMAGES)
        params = {
            "file_tokens": file_tokens,
            "file_mb": path.stat().st_size / 2**20,
            "width": width,
            "latents": p.sae_expansion * width,
            "steps": p.sae_steps,
            "batch_size": p.sae_batch,
            "shuffle_window_tokens": DEFAULT_BUFFER_TOKENS,
        }
        records[f"sae.train[{file_tokens}]"] = ctx.measure(
            "train(): input statistics, Adam steps streamed from HDF5, evaluation, checkpoint",
            "tokens",
            tokens,
            lambda path=path, folder=folder: train(path, folder / "sae.pt", folder / "sae.json", config, device),
            sae_train_flops(width, p.sae_expansion * width, tokens),
            params,
        )
        path.unlink()
    return records
