"""HF safetensors directory (single or sharded) -> LlamaConfig and Flax params; numpy only.

Tensors are read lazily, one at a time, with `safe_open(framework="numpy")`; bfloat16 (which
numpy cannot name) is read from the raw bytes at the offsets of the file header, as ml_dtypes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from bmike_jax.checkpoints.assemble import assemble
from bmike_jax.checkpoints.errors import CheckpointError
from bmike_jax.model import ConfigError, LlamaConfig

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors dtype name -> numpy dtype; anything else (ints, fp8, bool) is not a float weight.
FLOAT_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
}


def is_hf_dir(path: str) -> bool:
  return os.path.isdir(path) and (
      os.path.isfile(os.path.join(path, SINGLE)) or os.path.isfile(os.path.join(path, INDEX))
  )


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def load_config(directory: str) -> LlamaConfig:
  """config.json, with eos ids from generation_config.json when it names them: that file is what
  HF `generate` stops on (it replaces the model config's eos_token_id, it is not merged)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory}: no config.json")
  cfg = _read_json(path)
  model_type = cfg.get("model_type", "llama")
  if model_type != "llama":
    raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (supported: llama)")
  for flag in ("attention_bias", "mlp_bias"):
    if cfg.get(flag):
      raise CheckpointError(f"{path}: {flag}=true is not supported")
  if cfg.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (silu)")
  try:
    config = LlamaConfig.from_hf_dict(cfg)
  except ConfigError as e:
    raise CheckpointError(f"{path}: {e}") from e
  gen_path = os.path.join(directory, "generation_config.json")
  if os.path.isfile(gen_path):
    eos = _read_json(gen_path).get("eos_token_id")
    if eos is not None:
      eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
      config = dataclasses.replace(config, eos_token_ids=eos_ids)
  return config


def _header(path: str) -> tuple[dict, int]:
  """(safetensors JSON header, byte offset of the data section)."""
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(size)), 8 + size


class SafetensorsSource:
  """The `assemble.TensorSource` of an HF safetensors directory."""

  fmt = "hf"

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
      weight_map = _read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map")
      self.index_path = index
    else:
      self.index_path = os.path.join(directory, SINGLE)
      with safe_open(self.index_path, framework="numpy") as f:
        weight_map = {name: SINGLE for name in f.keys()}
    self.files = {name: os.path.join(directory, file) for name, file in weight_map.items()}
    self._headers: dict[str, tuple[dict, int]] = {}

  def _entry(self, name: str) -> dict:
    path = self.files[name]
    if path not in self._headers:
      if not os.path.isfile(path):
        raise CheckpointError(f"{path}: shard named in {self.index_path} is missing")
      self._headers[path] = _header(path)
    header = self._headers[path][0]
    if name not in header:
      raise CheckpointError(f"{path}: missing tensor {name!r} (listed in {self.index_path})")
    return header[name]

  def names(self):
    return self.files.keys()

  def where(self, name: str) -> str:
    return self.files.get(name, self.index_path)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entry(name)["shape"])

  def read(self, name: str) -> np.ndarray:
    entry, path = self._entry(name), self.files[name]
    kind = entry["dtype"]
    if kind not in FLOAT_DTYPES:
      raise CheckpointError(
          f"{path}: tensor {name!r} has dtype {kind}, expected one of " f"{', '.join(FLOAT_DTYPES)}"
      )
    if kind != "BF16":
      with safe_open(path, framework="numpy") as f:
        return f.get_tensor(name)
    begin, end = entry["data_offsets"]
    data_start = self._headers[path][1]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
    return np.array(raw.view(ml_dtypes.bfloat16).reshape(entry["shape"]))


def load(directory: str, dtype="float32") -> tuple[LlamaConfig, dict]:
  config = load_config(directory)
  return config, assemble(SafetensorsSource(directory), config, dtype)
