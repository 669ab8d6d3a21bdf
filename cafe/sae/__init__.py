"""Matryoshka SAEs, one per layer: the model and its checkpoint (`model`), the training loop (`train`) with its data
feed (`feed`) and resumable state (`resume`), held-out metrics (`evaluate`), and the commands (`command`); or an
SAE another tool trained, read by `formats` into one `encoder` form and checked by `importer` (`cafe sae-import`)."""

from cafe.sae.command import register
from cafe.sae.encoder import SAEEncoder
from cafe.sae.model import MatryoshkaSAE, SAEConfig, load_sae, save_checkpoint
from cafe.sae.train import train

__all__ = ["MatryoshkaSAE", "SAEConfig", "SAEEncoder", "load_sae", "register", "save_checkpoint", "train"]
