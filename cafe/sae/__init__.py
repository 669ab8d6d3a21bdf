"""Matryoshka SAEs, one per layer: the params (`config`, torch-free), the model and its checkpoint (`model`), the
training loop (`train`) with its data feed (`feed`) and resumable state (`resume`), held-out metrics (`evaluate`),
and the commands (`command`); or an SAE another tool trained, read by `formats` into one `encoder` form and checked
by `importer` (`cafe sae-import`). The names below load their module when first asked for (not `train`: it is
the module cafe.sae.train once that is imported, so `from cafe.sae.train import train`)."""

from __future__ import annotations

from cafe.lazy import lazy_names

__all__ = ["MatryoshkaSAE", "SAEConfig", "SAEEncoder", "load_sae", "register", "save_checkpoint"]
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "MatryoshkaSAE": "cafe.sae.model",
        "SAEConfig": "cafe.sae.config",
        "SAEEncoder": "cafe.sae.encoder",
        "load_sae": "cafe.sae.model",
        "register": "cafe.sae.command",
        "save_checkpoint": "cafe.sae.model",
    },
)
