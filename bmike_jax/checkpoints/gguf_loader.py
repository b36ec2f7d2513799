"""GGUF (llama.cpp) -> LlamaConfig and Flax params: dequantized exactly (gguf.quants), q/k rows
un-permuted from llama.cpp's interleaved rotary order back to HF's split-half order.

The tokenizer of a GGUF lives in its metadata (`tokenizer.ggml.*`); `bmike_jax.tokenizer`
builds it (through transformers' GGUF converter) from the same file.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gguf
import numpy as np

from bmike_jax.checkpoints.assemble import assemble
from bmike_jax.checkpoints.errors import CheckpointError
from bmike_jax.model import ConfigError, LlamaConfig


def is_gguf_file(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(".gguf")


def open_reader(path: str) -> gguf.GGUFReader:
  """The file's reader, parsed once per process while the file is unchanged (same size and
  mtime): parsing SmolLM2's metadata (its 49k-token vocabulary, field by field) takes ~3 s, and a
  run reads the config and the weights from the same file."""
  try:
    stat = os.stat(path)
  except OSError as e:
    raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e
  return _reader(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int) -> gguf.GGUFReader:
  del size, mtime_ns  # part of the cache key only
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except  (gguf raises ValueError/struct errors)
    raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e


def read_metadata(reader: gguf.GGUFReader, keep_arrays: tuple[str, ...] = ()) -> dict[str, Any]:
  """key -> value; arrays -> their length unless named in `keep_arrays` (token lists are big)."""
  meta = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    is_array = field.types and field.types[0] == gguf.GGUFValueType.ARRAY
    meta[key] = field.contents() if not is_array or key in keep_arrays else len(field.data)
  return meta


class GGUFSource:
  """The `assemble.TensorSource` of a GGUF file."""

  fmt = "gguf"

  def __init__(self, path: str, reader: gguf.GGUFReader):
    self.path = path
    self.tensors = {t.name: t for t in reader.tensors}

  def names(self):
    return self.tensors.keys()

  def where(self, name: str) -> str:
    return self.path

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))  # ne reversed

  def read(self, name: str) -> np.ndarray:
    tensor = self.tensors[name]
    try:
      array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, KeyError, ValueError) as e:
      raise CheckpointError(
          f"{self.path}: tensor {name!r} has type {tensor.tensor_type.name}, "
          f"which cannot be dequantized to float ({e})"
      ) from e
    if not np.issubdtype(array.dtype, np.floating):
      raise CheckpointError(
          f"{self.path}: tensor {name!r} has type {tensor.tensor_type.name}, "
          "expected a float or quantized float type"
      )
    return array.reshape(self.shape(name))


def load_config(path: str, reader: gguf.GGUFReader) -> LlamaConfig:
  meta = read_metadata(reader)
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise CheckpointError(
        f"{path}: has rope_freqs.weight (llama3-style rope scaling stored as "
        "per-frequency factors), which this loader does not map; convert the "
        "HF checkpoint instead"
    )
  try:
    return LlamaConfig.from_gguf_metadata(meta, tied="output.weight" not in names)
  except ConfigError as e:
    raise CheckpointError(f"{path}: {e}") from e


def load(path: str, dtype="float32") -> tuple[LlamaConfig, dict]:
  reader = open_reader(path)
  config = load_config(path, reader)
  return config, assemble(GGUFSource(path, reader), config, dtype)
