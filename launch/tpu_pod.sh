#!/usr/bin/env bash
# Cloud TPU VM or pod slice: create, copy the code, install, convert weights, run on all workers.
# Usage: bash launch/tpu_pod.sh {create|copy|install|convert|run|fetch|delete}
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v5litepod-8, v4-16), RUNTIME
# (e.g. v2-alpha-tpuv5-lite / tpu-ubuntu2204-base), FLAGFILE (configs/8b.flags), HF_SOURCE (a HF
# Llama directory on the workers, or gs:// copied there first), CKPT (converted checkpoint dir,
# must match --checkpoint of the flagfile), DATA_SRC (a local BMIKE53 folder to copy up).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5litepod-8}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
FLAGFILE="${FLAGFILE:-configs/8b.flags}"
CKPT="${CKPT:-checkpoints/llama-3.1-8b}"
REMOTE_DIR="${REMOTE_DIR:-bmike-jax}"
tpu=(gcloud compute tpus tpu-vm)
on_all() { "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"; }

case "${1:-}" in
  create)
    "${tpu[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ;;
  copy)
    on_all "mkdir -p $REMOTE_DIR"
    git ls-files -z | tar --null -czf /tmp/bmike-jax-src.tgz -T -
    "${tpu[@]}" scp /tmp/bmike-jax-src.tgz "$TPU_NAME:$REMOTE_DIR/" --zone="$ZONE" --worker=all
    on_all "cd $REMOTE_DIR && tar xzf bmike-jax-src.tgz"
    if [ -n "${DATA_SRC:-}" ]; then
      tar -C "$(dirname "$DATA_SRC")" -czf /tmp/bmike53.tgz "$(basename "$DATA_SRC")"
      "${tpu[@]}" scp /tmp/bmike53.tgz "$TPU_NAME:$REMOTE_DIR/" --zone="$ZONE" --worker=all
      on_all "cd $REMOTE_DIR && mkdir -p data && tar -C data -xzf bmike53.tgz && ls data"
    fi ;;
  install)
    on_all "cd $REMOTE_DIR && bash launch/install.sh tpu" ;;
  convert)
    : "${HF_SOURCE:?set HF_SOURCE (a HF Llama directory present on every worker)}"
    on_all "cd $REMOTE_DIR && .venv/bin/python -m bmike_jax.convert --source=$HF_SOURCE --output=$CKPT --dtype=bfloat16" ;;
  run)
    # Every worker runs the same command; jax.distributed joins them; process 0 writes outputs.
    on_all "cd $REMOTE_DIR && .venv/bin/python -m bmike_jax.main --flagfile=$FLAGFILE --distributed=true --progress=false ${EXTRA_FLAGS:-}" ;;
  fetch)
    out=$(grep -E '^--output_dir=' "$FLAGFILE" | cut -d= -f2)
    mkdir -p "$out"
    "${tpu[@]}" scp --recurse "$TPU_NAME:$REMOTE_DIR/$out/*" "$out/" --zone="$ZONE" --worker=0 ;;
  delete)
    "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    echo "usage: bash launch/tpu_pod.sh {create|copy|install|convert|run|fetch|delete}" >&2; exit 2 ;;
esac
