"""The ground floor: atomic writes and guarded readers (`atomic`), writes on a background thread (`background`),
and one module per file contract, each the only place that writes and reads its file: `manifest`, `activations`,
`features`, `erf_maps`.
"""

from cafe.io.atomic import (
    atomic_path,
    current_umask,
    file_hash,
    open_h5,
    save_figure,
    save_torch,
    write_csv,
    write_json,
    write_text,
)

__all__ = [
    "atomic_path",
    "current_umask",
    "file_hash",
    "open_h5",
    "save_figure",
    "save_torch",
    "write_csv",
    "write_json",
    "write_text",
]
