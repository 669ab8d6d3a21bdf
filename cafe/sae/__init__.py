"""Matryoshka SAEs, one per layer: the model and checkpoint (`model`), streaming training (`train`)."""

from cafe.sae.model import MatryoshkaSAE, SAEConfig, load_sae, save_checkpoint

__all__ = ["MatryoshkaSAE", "SAEConfig", "load_sae", "save_checkpoint"]
