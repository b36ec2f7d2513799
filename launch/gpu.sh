#!/usr/bin/env bash
# One NVIDIA GPU machine (local or reached over ssh): install, convert weights, run.
# Usage: bash launch/gpu.sh {install|convert|run|bench}
# Settings: FLAGFILE (configs/8b.flags), HF_SOURCE (HF Llama directory), CKPT (converted dir,
# as in the flagfile), EXTRA_FLAGS (more flags; for several nodes --coordinator_address=HOST0:PORT
# --num_processes=N --process_id=I). 8B in bf16 fits one 80 GB GPU with --mesh_model=1.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGFILE="${FLAGFILE:-configs/8b.flags}"
CKPT="${CKPT:-checkpoints/llama-3.1-8b}"
case "${1:-}" in
  install) bash launch/install.sh cuda ;;
  convert)
    : "${HF_SOURCE:?set HF_SOURCE}"
    .venv/bin/python -m bmike_jax.convert --source="$HF_SOURCE" --output="$CKPT" --dtype=bfloat16 ;;
  run) .venv/bin/python -m bmike_jax.main --flagfile="$FLAGFILE" --mesh_model=1 ${EXTRA_FLAGS:-} ;;
  bench) .venv/bin/python -m bmike_jax.bench --gpu_synthetic_8b ${EXTRA_FLAGS:-} ;;
  *) echo "usage: bash launch/gpu.sh {install|convert|run|bench}" >&2; exit 2 ;;
esac
