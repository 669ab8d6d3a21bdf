"""The training loop of one layer's Matryoshka SAE: fed from disk or device memory (`feed`), resumable (`resume`).

Loss per batch, with x = s*h the scaled input and v the fixed total variance of x (from a sample):

    sum over nested prefixes p of  mean_batch ||x - x_hat_p||^2 / v   (+ l1 * mean_batch sum_k z_k for relu)

where x_hat_p decodes only the first p latents; each term is a fraction of variance unexplained, so the
Matryoshka sum and l1 mean the same across layers and widths. Decoder columns are unit-norm (the gradient
along each column is removed before the Adam step, and the columns renormalised after), so the L1 of z is the
L1 of its decoded contributions. Every `checkpoint_every` steps the training state is saved beside the output
(`<out>.partial`); a new run with the same config and activation file resumes from it. The token stream is a
pure function of (file, seed, step), whichever feed serves it, so a resumed run sees exactly the batches an
uninterrupted one would.
A NaN/Inf loss or weight stops training with the step and the cause (non-finite activations, or divergence),
before any state or checkpoint of it is written.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cafe.compute import precision_scope
from cafe.devices import resolve_device
from cafe.errors import CafeError
from cafe.io import write_json
from cafe.io.activations import layer_attrs, open_layer
from cafe.sae.evaluate import EVAL_TOKENS, InputStats, estimate_threshold, evaluate, input_stats
from cafe.sae.feed import TokenStream, open_stream, read_ahead
from cafe.sae.model import MatryoshkaSAE, SAEConfig, save_checkpoint
from cafe.sae.resume import load_state, partial_path, run_key, save_state

log = logging.getLogger(__name__)

STATS_TOKENS = 1 << 15  # train tokens sampled for the input scale, mean and variance
THRESHOLD_BATCHES = 16  # batches after training that estimate the BatchTopK threshold
LOSS_WINDOW = 50  # final loss = mean over the last steps
LOSS_READ_EVERY = 50  # steps between reading losses back: each read waits for the device to finish
# What a run measures of itself (its wall-clock rate, whether it resumed, the feed that free memory chose) goes to
# the metrics file and the log only: the checkpoint's bytes depend on the inputs and params alone, so that a rerun
# with the same ones leaves it, and every product and provenance record made from it, unchanged.
RUN_KEYS = ("resumed_from", "tokens_per_s", "feed")


def init_sae(config: SAEConfig, stats: InputStats) -> MatryoshkaSAE:
    """A seeded SAE with n_latents = expansion * d_in, the input scale set and both biases at the mean."""
    torch.manual_seed(config.seed)
    d_in = stats.mean.numel()
    sae = MatryoshkaSAE(d_in, config.expansion * d_in, config.activation, config.k)
    with torch.no_grad():
        sae.scale.fill_(stats.scale)
        sae.b_d.copy_(stats.mean)
        sae.b_h.copy_(stats.mean)
    return sae


def matryoshka_loss(
    sae: MatryoshkaSAE, h: torch.Tensor, prefixes: list[int], variance: float, l1: float
) -> torch.Tensor:
    """The training loss of a batch of raw tokens h (B, d_in); see the module docstring."""
    x, z = h * sae.scale, sae.encode_train(h)
    x_hat, start, loss = sae.b_h, 0, h.new_zeros(())
    for end in prefixes:
        x_hat = x_hat + z[:, start:end] @ sae.W_d[:, start:end].T
        loss = loss + (x - x_hat).pow(2).sum(1).mean() / variance
        start = end
    if sae.nonlinearity.l1_penalty:
        loss = loss + l1 * z.sum(1).mean()
    return loss


@torch.no_grad()
def remove_parallel_gradient(sae: MatryoshkaSAE) -> None:
    """Drop the gradient component along each unit decoder column (it would only change the column's norm)."""
    sae.W_d.grad -= sae.W_d * (sae.W_d * sae.W_d.grad).sum(0, keepdim=True)


class Trainer:
    """The SAE, its optimizer and the stream; `run` trains up to config.steps, saving state on the way."""

    def __init__(
        self,
        config: SAEConfig,
        stream: TokenStream,
        stats: InputStats,
        device: torch.device,
        state_path: Path,
        key: dict[str, Any],
        precision: str = "fp32",
    ):
        self.config, self.stream, self.stats, self.device = config, stream, stats, device
        self.precision = precision
        self.state_path, self.key = state_path, key
        self.sae = init_sae(config, stats).to(device)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=config.lr)
        self.prefixes = config.prefix_sizes(self.sae.n_latents)
        self.step, self.tokens_seen, self.resumed_from = 0, 0, 0
        self.earlier_losses: list[float] = []  # the last steps' losses before a resume
        state = load_state(state_path, key, config.steps)
        if state is not None:
            self.sae.load_state_dict(state["sae"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = self.resumed_from = state["step"]
            self.tokens_seen = state["tokens_seen"]
            self.earlier_losses = list(state.get("losses", []))
            log.info("resuming from step %d of %d (%s)", self.step, config.steps, state_path)

    def train_step(self, h: torch.Tensor) -> torch.Tensor:
        """One Adam step on a batch of raw tokens; returns the loss, left on the device (reading it would wait).
        The forward and loss run in the trainer's precision (bf16: autocast); weights, gradients and Adam's
        state stay float32 (master weights), and the backward runs outside autocast, as torch recommends."""
        with precision_scope(self.precision, self.device):
            loss = matryoshka_loss(self.sae, h, self.prefixes, self.stats.variance, self.config.l1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_gradient(self.sae)
        self.optimizer.step()
        self.sae.normalize_decoder()
        return loss.detach()

    def run(self) -> list[float]:
        """Train to config.steps from the current step; returns the per-step losses (those before a resume that the
        state kept included)."""
        losses: list[float] = list(self.earlier_losses)
        pending: list[torch.Tensor] = []  # losses not yet read back from the device
        batches = self.stream.batches(start=self.step)
        # read ahead only for a GPU fed from disk: on the CPU the reader would take cores from training (1.7x slower)
        if self.device.type == "cuda" and not self.stream.resident:
            batches = read_ahead(batches, self.device)
        inputs_ok: list[torch.Tensor] = []  # per step: were the batch's activations all finite (read with the loss)
        with tqdm(total=self.config.steps, initial=self.step, desc="sae", unit="step") as bar, closing(batches):
            while self.step < self.config.steps:
                h = next(batches).to(self.device, non_blocking=True)
                inputs_ok.append(torch.isfinite(h).all())
                pending.append(self.train_step(h))
                self.step, self.tokens_seen = self.step + 1, self.tokens_seen + len(h)
                bar.update(1)
                checkpoint = self.step % self.config.checkpoint_every == 0 and self.step < self.config.steps
                if checkpoint or self.step % LOSS_READ_EVERY == 0 or self.step == self.config.steps:
                    losses.extend(self.read_back(pending, inputs_ok))
                    pending.clear()
                    inputs_ok.clear()
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if checkpoint:
                    self.check_weights()
                    save_state(
                        self.state_path,
                        self.sae,
                        self.optimizer,
                        self.step,
                        self.tokens_seen,
                        self.key,
                        losses[-LOSS_WINDOW:],
                    )
                    log.info("step %d: loss %.4f, state saved to %s", self.step, losses[-1], self.state_path)
        return losses

    def read_back(self, pending: list[torch.Tensor], inputs_ok: list[torch.Tensor]) -> list[float]:
        """The losses of the last steps; a non-finite one is a CafeError with its step and cause."""
        losses, ok = torch.stack(pending).tolist(), torch.stack(inputs_ok).tolist()
        first = self.step - len(losses) + 1
        for i, (loss, finite_input) in enumerate(zip(losses, ok)):
            if not math.isfinite(loss):
                cause = (
                    "the activation batch holds NaN/Inf values: the activation file is damaged, delete it and "
                    "re-run the `activations` step"
                    if not finite_input
                    else f"training diverged: lower sae.lr (now {self.config.lr})"
                )
                raise CafeError(f"sae: loss is {loss} at step {first + i}; {cause}. No checkpoint was written")
        return losses

    def check_weights(self) -> None:
        """Stop, before saving, if any weight is NaN/Inf (an update after the last loss read can make them so)."""
        bad = [name for name, p in self.sae.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise CafeError(
                f"sae: weights {bad} are NaN/Inf after step {self.step}; training diverged: lower sae.lr "
                f"(now {self.config.lr}). No checkpoint was written"
            )

    def finish(self) -> MatryoshkaSAE:
        """Set the BatchTopK threshold from the batches after training; the frozen SAE."""
        sae = self.sae.eval().requires_grad_(False)
        if sae.nonlinearity.learns_threshold:
            after = self.stream.batches(start=self.config.steps)
            sae.threshold.fill_(
                estimate_threshold(sae, (next(after).to(self.device) for _ in range(THRESHOLD_BATCHES)))
            )
        return sae


def train(
    activations: str | os.PathLike,
    out: str | os.PathLike,
    metrics_path: str | os.PathLike,
    config: SAEConfig,
    device: str = "auto",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train the SAE of one layer file (forward in `precision`, cafe.compute), write checkpoint + metrics JSON
    (metrics always in float32), remove the training state."""
    with open_layer(activations) as handle:
        attrs = layer_attrs(handle)
    where = resolve_device(device)
    stream = open_stream(activations, config.batch_size, config.seed, where, config.resident)
    sample = stream.sample(STATS_TOKENS)
    if not torch.isfinite(sample).all():
        raise CafeError(
            f"{activations}: {int((~torch.isfinite(sample)).sum())} NaN/Inf values among {sample.numel()} sampled "
            f"activation values; the file is damaged: delete it and re-run the `activations` step"
        )
    stats = input_stats(sample)
    key = {**run_key(config, attrs["content_hash"]), "precision": precision}
    trainer = Trainer(config, stream, stats, where, partial_path(out), key, precision)
    log.info(
        "layer %d: SAE %d -> %d latents (%s), %d steps of %d tokens from %s (%d tokens)",
        attrs["layer"],
        trainer.sae.d_in,
        trainer.sae.n_latents,
        config.activation,
        config.steps,
        config.batch_size,
        activations,
        stream.n_tokens,
    )
    start, first_tokens = time.perf_counter(), trainer.tokens_seen
    losses = trainer.run()
    seconds = time.perf_counter() - start
    trainer.check_weights()
    sae = trainer.finish()
    tail = losses[-LOSS_WINDOW:]
    metrics = {
        "layer": attrs["layer"],
        **evaluate(sae, activations, trainer.device, EVAL_TOKENS),
        "loss": sum(tail) / len(tail) if tail else None,
        "steps": trainer.step,
        "resumed_from": trainer.resumed_from,
        "tokens_seen": trainer.tokens_seen,
        "tokens_per_s": (trainer.tokens_seen - first_tokens) / max(seconds, 1e-9),
        "feed": "resident" if stream.resident else "stream",
    }
    meta = {
        "layer": attrs["layer"],
        "backbone": attrs["backbone"],
        "pretrained": attrs["pretrained"],
        "manifest_hash": attrs["manifest_hash"],
        "activations_hash": attrs["content_hash"],
        "precision": precision,
        "normalisation": {
            "input_scale": stats.scale,
            "variance": stats.variance,
            "loss": "sum over prefixes of mean ||s h - h_hat||^2 / variance (+ l1 * sum z)",
        },
        "metrics": {key: value for key, value in metrics.items() if key not in RUN_KEYS},
    }
    fingerprint = save_checkpoint(out, sae.cpu(), config, meta)
    write_json(metrics_path, metrics)
    partial_path(out).unlink(missing_ok=True)
    log.info(
        "layer %d: explained variance %.3f, L0 %.1f, dead %.1f%%, %.0f tokens/s -> %s (%s)",
        attrs["layer"],
        metrics["explained_variance"],
        metrics["l0"],
        100 * metrics["dead_fraction"],
        metrics["tokens_per_s"],
        out,
        fingerprint,
    )
    return metrics
