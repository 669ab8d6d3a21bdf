"""CaFE: effective receptive fields of vision-SAE features (Han, Kim & Kwak)."""

__version__ = "0.1.0"
