#!/usr/bin/env bash
# The prepared GPU check: given one H100 or H200 for at most 8 minutes, install cafe from this checkout and write
# benchmarks/results/gpu-<device>.json: the fidelity gates of every ERF method, insertion and SAE training in bf16
# and tf32 against fp32 on ViT-L/14 (random weights), the rates per precision (extraction: device JPEG decode vs
# PIL, feed vs forward; SAE training resident vs streamed; ERF; insertion), and the demo DAG with --resources
# gpu=1. `cafe bench --budget benchmarks/results/gpu-<device>.json` then prints the paper-scale budget per precision.
#
#   bash benchmarks/gpu_check.sh          # on the GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_check.sh --dry    # CPU, tiny tower, the current python: the plumbing only (tests run it)
#
# Each part is written as it ends, so a run cut short by the 8 minutes keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=${GPU_CHECK_SECONDS:-470}  # 8 minutes, less a margin for the copy back
started=$SECONDS
# seconds left, less a reserve, at least 30
left() { local s=$((BUDGET_S - (SECONDS - started) - $1)); echo $((s < 30 ? 30 : s)); }

if [[ "${1:-}" == "--dry" ]]; then
    exec "${PYTHON:-python}" -m cafe.bench.gpu_check --dry --out "${OUT:-benchmarks/results/gpu-dry.json}" \
        --allow-busy --wait 0
fi

# Install from the project's files: where this python already has torch and cafe (an installed checkout), use it;
# otherwise a venv over the machine's own torch and wheels (no network needed where they are there), pip resolving
# the rest from its cache or index when it can reach one.
PY=python3
if ! { "$PY" -c "import cafe, torch, snakemake" 2>/dev/null && command -v cafe >/dev/null; }; then
    [[ -x .venv-gpu/bin/python ]] || python3 -m venv --system-site-packages .venv-gpu
    # shellcheck disable=SC1091
    . .venv-gpu/bin/activate
    pip install -q -e . || pip install -q --no-deps -e .
    PY=python
fi
echo "installed in $((SECONDS - started)) s"

device=$("$PY" -c "import torch; n = torch.cuda.get_device_name(0).lower(); \
print(next((k for k in ('h200', 'h100', 'a100', 'l40s') if k in n), n.split()[-1]))")
out=benchmarks/results/gpu-$device.json
# the bench first (fidelity, then rates per precision), the DAG with what is left (it took 2 min 41 s on an H100)
timeout "$(left 150)" "$PY" -m cafe.bench.gpu_check --out "$out" --wait 30 \
    || echo "gpu check cut short or failed: $out holds the parts done"
dag=$(mktemp)
if timeout "$(left 5)" "$PY" benchmarks/dag_timing.py --cores "$(nproc)" --resources gpu=1 --out "$dag" \
    --wait 30; then
    "$PY" - "$out" "$dag" <<'MERGE'
import json, sys
results = json.load(open(sys.argv[1]))
results["dag"] = json.load(open(sys.argv[2]))
json.dump(results, open(sys.argv[1], "w"), indent=1)
MERGE
else
    echo "demo DAG cut short or failed: $out has no 'dag'"
fi
"$PY" -m cafe.cli bench --budget "$out" || true
echo "gpu check done in $((SECONDS - started)) s: $out"
