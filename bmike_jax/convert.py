"""Convert an HF safetensors directory or a .gguf file to a self-describing orbax directory.

    python -m bmike_jax.convert --source=PATH --output=DIR [--dtype=float32|bfloat16]

DIR may be gs://BUCKET/PATH: convert once there, and every host of a pod restores from it.

DIR gets params/ (orbax, tensorstore), config.json and the tokenizer files; `--checkpoint=DIR`
is then all the runner needs.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags, logging

from bmike_jax import checkpoints, paths
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.checkpoints import hub, orbax_io

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "source",
    None,
    "HF directory (config.json + safetensors), a .gguf file, or a "
    "Hugging Face id (org/name) in the local HF cache (never downloaded).",
)
flags.DEFINE_string(
    "output",
    None,
    "Output directory, local or gs://BUCKET/PATH (created; must " "not hold a checkpoint).",
)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")


def convert(source: str, output: str, dtype: str = "float32") -> str:
  """Writes OUTPUT (a local folder or gs://BUCKET/PATH) from SOURCE (local path or hub id)."""
  paths.check(source, flag="source")
  if paths.is_remote(source):
    raise checkpoints.CheckpointError(
        f"--source={source}: read from local disk only (copy it "
        "there first, or pass a Hugging Face id in the local cache)"
    )
  source = hub.resolve(source, flag="source")
  paths.check_access(output, flag="output")
  kind = checkpoints.source_kind(source)
  if kind == "orbax":
    raise checkpoints.CheckpointError(f"{source}: already a converted checkpoint")
  config, params = checkpoints.load_model(source, dtype)
  tokenizer = tokenizer_lib.load_tokenizer(source)
  checkpoints.check_vocab(config, tokenizer, source, source)
  orbax_io.save_params(
      output, params, config, extra={"source": os.path.abspath(source), "dtype": dtype}
  )
  if kind == "hf":  # the original files, verbatim
    for name in tokenizer_lib.CONFIG_FILES:
      path = os.path.join(source, name)
      if os.path.isfile(path):
        paths.copy_file(path, paths.join(output, name))
  else:
    with tempfile.TemporaryDirectory() as folder:
      tokenizer.save(folder)
      for name in sorted(os.listdir(folder)):
        paths.copy_file(os.path.join(folder, name), paths.join(output, name))
  logging.info("converted %s (%s, %d params) to %s", source, kind, config.num_params, output)
  return output


def main(argv):
  del argv
  if not FLAGS.source or not FLAGS.output:
    raise app.UsageError("--source and --output are required")
  try:
    convert(FLAGS.source, FLAGS.output, FLAGS.dtype)
  except (checkpoints.CheckpointError, paths.PathError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def entry() -> None:
  """The console script (setup.py entry_points)."""
  app.run(main)


if __name__ == "__main__":
  app.run(main)
