#!/usr/bin/env bash
# Cloud TPU VM or pod slice through queued resources; data, checkpoint and outputs on gs://.
# Usage: bash launch/tpu_pod.sh [--dry-run] STEP
#   create   queue the slice (gcloud compute tpus queued-resources create; SPOT=1 for spot)
#   wait     until the queued resource is ACTIVE
#   code     upload this checkout to $BUCKET/code.tgz; every worker fetches and unpacks it
#   install  bash launch/install.sh tpu on every worker
#   data     copy a local BMIKE53 folder ($DATA_SRC) to $DATA once (workers read it from gs://)
#   convert  convert $HF_SOURCE to $CKPT once, on worker 0 (a local HF folder there, or a hub id
#            already in its HF cache: `hf download ID` on worker 0 first)
#   run      the benchmark on every worker (jax.distributed joins them; process 0 writes $OUTPUT)
#   report   python -m bmike_jax.report --results_dir=$OUTPUT, here
#   fetch    copy $OUTPUT to ./outputs/ here
#   delete   delete the queued resource and its slice
# --dry-run prints every command (shell-quoted, one per line) instead of running it.
# Settings (environment): TPU_NAME, ZONE, BUCKET (gs://...), PROJECT (optional), ACCELERATOR
# (v5litepod-8, v4-16, ...), RUNTIME (default from ACCELERATOR), FLAGFILE (configs/8b.flags),
# DATA ($BUCKET/bmike53), CKPT ($BUCKET/checkpoints/llama-3.1-8b), OUTPUT ($BUCKET/runs/NAME),
# EXTRA_FLAGS (more runner flags), REMOTE_DIR (bmike-jax).
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
step="${1:-}"
usage="usage: bash launch/tpu_pod.sh [--dry-run] {create|wait|code|install|data|convert|run|report|fetch|delete}"
case "$step" in
  create|wait|code|install|data|convert|run|report|fetch|delete) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET (gs://your-bucket)}"
case "$BUCKET" in gs://*) ;; *) echo "BUCKET must be a gs:// path, got '$BUCKET'" >&2; exit 2 ;; esac
BUCKET="${BUCKET%/}"
ACCELERATOR="${ACCELERATOR:-v5litepod-8}"
case "$ACCELERATOR" in
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
RUNTIME="${RUNTIME:-$default_runtime}"
FLAGFILE="${FLAGFILE:-configs/8b.flags}"
DATA="${DATA:-$BUCKET/bmike53}"
CKPT="${CKPT:-$BUCKET/checkpoints/llama-3.1-8b}"
OUTPUT="${OUTPUT:-$BUCKET/runs/$(basename "$FLAGFILE" .flags)}"
REMOTE_DIR="${REMOTE_DIR:-bmike-jax}"
QUEUED="${QUEUED_RESOURCE:-$TPU_NAME-qr}"
project=()
[ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")

# Runs (or with --dry-run prints) one command.
cmd() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}
on_workers() {  # on_workers WORKER COMMAND: WORKER is all or 0
  cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker="$1" \
    --command="$2"
}
runner_flags="--flagfile=$FLAGFILE --data_dir=$DATA --checkpoint=$CKPT --output_dir=$OUTPUT"

case "$step" in
  create)
    spot=()
    [ "${SPOT:-0}" = 1 ] && spot=(--spot)
    cmd gcloud compute tpus queued-resources create "$QUEUED" --node-id="$TPU_NAME" \
      --zone="$ZONE" "${project[@]}" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" "${spot[@]}" ;;
  wait)
    describe=(gcloud compute tpus queued-resources describe "$QUEUED" --zone="$ZONE"
              "${project[@]}" --format=value\(state.state\))
    if [ "$dry_run" = 1 ]; then cmd "${describe[@]}"; exit 0; fi
    while state=$("${describe[@]}"); [ "$state" != ACTIVE ]; do
      case "$state" in FAILED|SUSPENDED) echo "queued resource $QUEUED: $state" >&2; exit 1 ;; esac
      echo "queued resource $QUEUED: ${state:-?}; waiting" >&2; sleep 30
    done ;;
  code)
    cmd git archive --format=tar.gz -o /tmp/bmike-jax-code.tgz HEAD
    cmd gcloud storage cp /tmp/bmike-jax-code.tgz "$BUCKET/code.tgz"
    on_workers all "mkdir -p $REMOTE_DIR && cd $REMOTE_DIR && gcloud storage cp $BUCKET/code.tgz . && tar xzf code.tgz" ;;
  install)
    on_workers all "cd $REMOTE_DIR && bash launch/install.sh tpu" ;;
  data)
    : "${DATA_SRC:?set DATA_SRC (a local BMIKE53 folder: zsRE/, CounterFact/, ...)}"
    cmd gcloud storage cp -r "${DATA_SRC%/}/*" "$DATA/" ;;
  convert)
    : "${HF_SOURCE:?set HF_SOURCE (HF Llama folder on worker 0, or a hub id in its HF cache)}"
    on_workers 0 "cd $REMOTE_DIR && .venv/bin/python -m bmike_jax.convert --source=$HF_SOURCE --output=$CKPT --dtype=bfloat16" ;;
  run)
    on_workers all "cd $REMOTE_DIR && .venv/bin/python -m bmike_jax.main $runner_flags --distributed=true --progress=false${EXTRA_FLAGS:+ $EXTRA_FLAGS}" ;;
  report)
    cmd .venv/bin/python -m bmike_jax.report --results_dir="$OUTPUT" ;;
  fetch)
    cmd mkdir -p outputs
    cmd gcloud storage cp -r "$OUTPUT" outputs/ ;;
  delete)
    cmd gcloud compute tpus queued-resources delete "$QUEUED" --zone="$ZONE" "${project[@]}" \
      --force --quiet ;;
esac
