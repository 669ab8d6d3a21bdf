"""How insertion AUC of AttnLRP moves with LRP-gamma on the demo: reruns `cafe erf` and `cafe insertion` for a few
gammas on the layers of a finished demo run (results/), into a scratch folder, and prints the AUC table.

    python benchmarks/gamma_sweep.py --gammas 0 0.1 0.25 1 --out benchmarks/results/gamma_sweep.csv

The rest of the run (features, SAEs, other methods) is read from results/ and left untouched.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from cafe.insertion.summary import auc_table, read_curve_aucs
from cafe.io import write_csv
from cafe.params import defaults, merge


def run(*args: str) -> None:
    subprocess.run(["cafe", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sweep(params: dict, gammas: list[float], scratch: Path) -> pd.DataFrame:
    """AUC table rows (layer x canvas x kind) for AttnLRP at each gamma."""
    frames = []
    for gamma in gammas:
        erf = {"batch_size": params["erf"]["batch_size"], "attnlrp": {**params["erf"]["attnlrp"], "gamma": gamma}}
        for layer in params["layers"]:
            common = [
                "--backbone",
                json.dumps(params["backbone"]),
                "--layer",
                str(layer),
                "--features",
                f"results/features/layer{layer}.h5",
                "--sae",
                f"results/sae/layer{layer}.pt",
                "--manifest",
                "results/data/manifest.csv",
                "--images-root",
                params["data"]["images"],
            ]
            maps, curves = scratch / f"erf_{gamma}_{layer}.h5", scratch / f"curves_{gamma}_{layer}.csv"
            run("erf", "--method", "attnlrp", "--params", json.dumps(erf), *common, "--out", str(maps))
            run(
                "insertion",
                "--method",
                "attnlrp",
                "--erf",
                str(maps),
                "--params",
                json.dumps(params["insertion"]),
                *common,
                "--out",
                str(curves),
            )
            table = auc_table(read_curve_aucs([curves]), params["insertion"]["bootstrap"])
            frames.append(table.assign(gamma=gamma))
            print(table.assign(gamma=gamma).to_string(index=False, header=not frames[:-1]), flush=True)
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.1, 0.25, 1.0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gamma_sweep.csv"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        params = merge(defaults(), yaml.safe_load(args.params.read_text()))  # empty sections = the defaults
        table = sweep(params, args.gammas, Path(scratch))
    write_csv(args.out, table)
    print(table.pivot_table(index=["canvas", "kind", "layer"], columns="gamma", values="auc_mean").round(3))


if __name__ == "__main__":
    main()
