#!/usr/bin/env bash
# A short check for a machine with an NVIDIA GPU: CUDA works, every method runs on cuda,
# and time and memory per method x truncation x device, with BPTT / Neumann-RBP ratios.
# With a data root (RBPBENCH_DATA_DIR, holding MNIST/ and Planetoid/ as ../shared/data does)
# the quick suite's hopfield, cora and hyperopt cells run on both devices as well.
# Usage: tools/gpu-check.sh   (results go to ${OUT:-/tmp}/gpu-check)
# GPU_CHECK_DEVICES=cpu tries the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "gpu-check: no nvidia-smi"; fi

if ! python3 -c 'import rbpbench' 2>/dev/null; then
  # System site-packages let a preinstalled torch serve, as such machines may be offline.
  venv="${RBPBENCH_GPU_VENV:-/tmp/rbpbench-gpu-venv}"
  python3 -m venv --system-site-packages "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  python3 -m pip install -q -e .
fi

devices="${GPU_CHECK_DEVICES:-cpu,cuda}"
if [[ "$devices" == *cuda* ]]; then
  python3 -c 'import torch; assert torch.cuda.is_available(), "CUDA is not available"; print("gpu-check: torch", torch.__version__, "on", torch.cuda.get_device_name(0))'
fi

out="${OUT:-/tmp}/gpu-check"
rm -rf "$out"  # this script's own scratch folder; rbpbench refuses a non-empty --out
python3 -m rbpbench run --tasks contractive-rnn --methods bptt,tbptt,rbp,cg-rbp,neumann-rbp \
  --truncation 10,50 --seeds 0-1 --device "$devices" --out "$out"
if [[ -n "${RBPBENCH_DATA_DIR:-}" ]]; then
  # Same folder: the table below then holds every task's cells.
  python3 -m rbpbench run --suite quick --tasks hopfield,cora,hyperopt --seeds 0 \
    --device "$devices" --out "$out"
else
  echo "gpu-check: RBPBENCH_DATA_DIR unset: hopfield, cora and hyperopt not checked"
fi

python3 - "$out/results.parquet" <<'PY'
import sys

import pandas as pd

df = pd.read_parquet(sys.argv[1])
df["peak_memory_bytes"] = df["peak_memory_bytes"].astype("float64")
cells = df.groupby(["task", "method", "truncation", "device"]).agg(
    wall_time_s=("wall_time_s", "median"),
    peak_memory_bytes=("peak_memory_bytes", "median"),
    memory_method=("memory_method", lambda s: ",".join(sorted(set(s.dropna())))),
    status=("status", lambda s: ",".join(sorted(set(s)))),
)
pd.set_option("display.width", 200)
print(cells.to_string())
wide = cells[["wall_time_s", "peak_memory_bytes"]].unstack("method")
ratio = pd.DataFrame({
    "time bptt/neumann-rbp": wide[("wall_time_s", "bptt")] / wide[("wall_time_s", "neumann-rbp")],
    "memory bptt/neumann-rbp": wide[("peak_memory_bytes", "bptt")] / wide[("peak_memory_bytes", "neumann-rbp")],
}).swaplevel().sort_index()
print(ratio.to_string())
bad = df[df["status"] != "ok"]
if len(bad):
    print(bad[["task", "method", "truncation", "seed", "device", "status", "error"]].to_string(), file=sys.stderr)
    sys.exit(f"gpu-check: {len(bad)} cells are not ok")
print("gpu-check: every cell is ok")
PY
