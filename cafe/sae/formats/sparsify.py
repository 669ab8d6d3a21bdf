"""EleutherAI's sparsify (`SparseCoder.save_to_disk`; PyPI `eai-sparsify`, not the unrelated `sparsify`): one
folder per hookpoint (named after the module, e.g. `layers.10`) with `cfg.json` and `sae.safetensors`.

    cfg.json     d_in, num_latents (or expansion_factor x d_in), k, activation (topk), transcode
    weights      encoder.weight [M, d_in], encoder.bias [M], W_dec [M, d_in], b_dec [d_in]

Its encode: the k largest of ReLU((x - b_dec) W_enc^T + b_enc) (no b_dec subtraction for a transcoder, which
cafe refuses: it reads one site and writes another). The block is read from the folder's name when it ends in
`layers.N` (module index N: the output of block N).
"""

from __future__ import annotations

import re
from pathlib import Path

from cafe.errors import CafeError
from cafe.sae.encoder import SAEEncoder
from cafe.sae.formats.base import (
    POSITIONS_OPTION,
    RESIDUAL,
    Imported,
    Options,
    TrainedAt,
    read_json,
    read_safetensors,
    tensor,
)

OPTIONS = POSITIONS_OPTION
LAYERS = re.compile(r"(?:^|\.)(?:layers|blocks|resblocks)\.(\d+)$")


def read(path: Path, options: Options) -> Imported:
    """The encoder of one sparsify hookpoint folder."""
    folder = path.parent if path.is_file() else path
    cfg = read_json(folder / "cfg.json")
    if cfg.get("activation", "topk") != "topk" or cfg.get("transcode"):
        kind = f"{cfg.get('activation')} coder (transcode {cfg.get('transcode')})"
        raise CafeError(f"{folder}: sparsify {kind}: only TopK SAEs are supported")
    state = read_safetensors(folder / "sae.safetensors")
    d_in = int(cfg["d_in"])
    n = int(cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32)))
    encoder = SAEEncoder(
        tensor(state, "encoder.weight", folder, (n, d_in)),
        tensor(state, "encoder.bias", folder, (n,)),
        tensor(state, "b_dec", folder, (d_in,)),
        activation="topk",
        k=int(cfg.get("k", 32)),
        positions=options.positions(),
    )
    match = LAYERS.search(folder.name)
    block = int(match.group(1)) if match else None
    return Imported(encoder, TrainedAt(block, RESIDUAL, encoder.positions, None, folder.name), {"k": encoder.k})
