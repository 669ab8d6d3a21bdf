"""Matryoshka SAEs, one per layer: the model and checkpoint (`model`), streaming training and the `cafe sae`
command (`train`), held-out metrics (`evaluate`)."""

from cafe.sae.model import MatryoshkaSAE, SAEConfig, load_sae, save_checkpoint
from cafe.sae.train import register, train

__all__ = ["MatryoshkaSAE", "SAEConfig", "load_sae", "register", "save_checkpoint", "train"]
