#!/usr/bin/env bash
# NVIDIA GPU machines: one node (this machine) or several (reached over ssh, each with this
# checkout at $REMOTE_DIR); data, checkpoint and outputs local or on gs:// (every node reads
# the same gs:// paths; no copies per node).
# Usage: bash launch/gpu.sh [--dry-run] STEP
#   install  bash launch/install.sh cuda (on every node)
#   convert  convert $HF_SOURCE to $CKPT once (here, or on the first node)
#   run      the benchmark; with several nodes every node runs it, joined by jax.distributed
#            (--coordinator_address=FIRST_NODE:$PORT --num_processes=N --process_id=I)
#   report   python -m bmike_jax.report --results_dir=$OUTPUT, here
#   bench    python -m tools.bench_gpu (random 8B-shaped weights; one node, from the repo root)
# --dry-run prints every command (shell-quoted, one per line) instead of running it.
# Settings (environment): NODES (comma list of ssh hosts; empty: this machine only), PORT
# (12355), REMOTE_DIR (bmike-jax), FLAGFILE (configs/8b.flags), HF_SOURCE, DATA, CKPT, OUTPUT
# (default: the flagfile's), MESH_MODEL (default: the flagfile's, auto), EXTRA_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
step="${1:-}"
case "$step" in
  install|convert|run|report|bench) ;;
  *) echo "usage: bash launch/gpu.sh [--dry-run] {install|convert|run|report|bench}" >&2; exit 2 ;;
esac
FLAGFILE="${FLAGFILE:-configs/8b.flags}"
PORT="${PORT:-12355}"
REMOTE_DIR="${REMOTE_DIR:-bmike-jax}"
IFS=, read -r -a nodes <<< "${NODES:-}"
paths=""
[ -n "${DATA:-}" ] && paths+=" --data_dir=$DATA"
[ -n "${CKPT:-}" ] && paths+=" --checkpoint=$CKPT"
[ -n "${OUTPUT:-}" ] && paths+=" --output_dir=$OUTPUT"
runner_flags="--flagfile=$FLAGFILE$paths${MESH_MODEL:+ --mesh_model=$MESH_MODEL}${EXTRA_FLAGS:+ $EXTRA_FLAGS}"

cmd() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}
on_node() {  # on_node HOST COMMAND (in $REMOTE_DIR there)
  cmd ssh "$1" "cd $REMOTE_DIR && $2"
}

case "$step" in
  install)
    if [ ${#nodes[@]} = 0 ]; then cmd bash launch/install.sh cuda
    else for node in "${nodes[@]}"; do on_node "$node" "bash launch/install.sh cuda"; done; fi ;;
  convert)
    : "${HF_SOURCE:?set HF_SOURCE (HF Llama folder, or a hub id in the local HF cache)}"
    : "${CKPT:?set CKPT (converted checkpoint: a local folder, or gs://... for several nodes)}"
    convert="--source=$HF_SOURCE --output=$CKPT --dtype=bfloat16"
    if [ ${#nodes[@]} = 0 ]; then cmd .venv/bin/python -m bmike_jax.convert $convert
    else on_node "${nodes[0]}" ".venv/bin/python -m bmike_jax.convert $convert"; fi ;;
  run)
    if [ ${#nodes[@]} = 0 ]; then
      cmd .venv/bin/python -m bmike_jax.main $runner_flags
    else
      coordinator="${nodes[0]#*@}:$PORT"
      pids=()
      for i in "${!nodes[@]}"; do
        line=".venv/bin/python -m bmike_jax.main $runner_flags --progress=false"
        line+=" --coordinator_address=$coordinator --num_processes=${#nodes[@]} --process_id=$i"
        if [ "$dry_run" = 1 ]; then on_node "${nodes[$i]}" "$line"; continue; fi
        on_node "${nodes[$i]}" "$line" &
        pids+=($!)
      done
      status=0
      for pid in "${pids[@]}"; do wait "$pid" || status=1; done
      exit $status
    fi ;;
  report)
    : "${OUTPUT:?set OUTPUT (--output_dir of the run)}"
    cmd .venv/bin/python -m bmike_jax.report --results_dir="$OUTPUT" ;;
  bench)
    cmd .venv/bin/python -m tools.bench_gpu ${EXTRA_FLAGS:-} ;;
esac
