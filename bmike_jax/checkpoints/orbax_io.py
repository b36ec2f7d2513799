"""Converted checkpoints: orbax (tensorstore) params + config.json (+ tokenizer files) in one dir.

    DIR/params/        orbax PyTree checkpoint of the Flax params
    DIR/config.json    the LlamaConfig in HF form (`to_hf_dict`), plus a "bmike_jax" entry
    DIR/tokenizer.*    the tokenizer files (written by the converter)

`restore_params` places each array straight onto its sharding (no full host copy per device).
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from bmike_jax import paths
from bmike_jax.checkpoints.assemble import numpy_dtype
from bmike_jax.checkpoints.errors import CheckpointError
from bmike_jax.model import ConfigError, LlamaConfig

PARAMS = "params"
CONFIG = "config.json"
FORMAT_KEY = "bmike_jax"

# A pytree of shardings matching the params, or a function of the '/'-joined param path (and,
# when it takes two arguments, the shape) -> sharding.
ShardingSpec = Union[Any, Callable[..., Sharding]]


def is_orbax_dir(path: str) -> bool:
  return paths.isdir(paths.join(path, PARAMS)) and paths.isfile(paths.join(path, CONFIG))


def _absolute(directory: str) -> str:
  """orbax wants absolute paths; gs:// ones are."""
  directory = os.fspath(directory)
  return directory if paths.is_remote(directory) else os.path.abspath(directory)


def save_config(directory: str, config: LlamaConfig, extra: dict | None = None) -> None:
  doc = config.to_hf_dict()
  doc[FORMAT_KEY] = {"format": "orbax", **(extra or {})}
  paths.write_text(paths.join(directory, CONFIG), json.dumps(doc, indent=2))


def load_config(directory: str) -> LlamaConfig:
  path = paths.join(directory, CONFIG)
  try:
    return LlamaConfig.from_hf_dict(json.loads(paths.read_text(path)))
  except (OSError, json.JSONDecodeError, ConfigError) as e:
    raise CheckpointError(f"{path}: cannot read the model config ({e})") from e


def save_params(directory: str, params, config: LlamaConfig, extra: dict | None = None) -> None:
  """Writes DIR/params (must not exist yet) and DIR/config.json."""
  directory = _absolute(directory)
  paths.makedirs(directory)
  target = paths.join(directory, PARAMS)
  if paths.exists(target):
    raise CheckpointError(f"{target}: already exists; choose an empty output directory")
  ocp.PyTreeCheckpointer().save(target, params)
  save_config(directory, config, extra)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_metadata(directory: str):
  """The stored tree: leaves carry `.shape` and `.dtype`."""
  target = paths.join(_absolute(directory), PARAMS)
  if not paths.isdir(target):
    raise CheckpointError(f"{directory}: no orbax params folder {PARAMS!r}")
  meta = ocp.PyTreeCheckpointer().metadata(target)
  return getattr(getattr(meta, "item_metadata", meta), "tree", meta)


def abstract_params(directory: str, dtype=None):
  """The stored tree as jax.ShapeDtypeStruct leaves (e.g. to compute shardings before restoring)."""
  cast = None if dtype is None else numpy_dtype(dtype)
  return jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), cast or m.dtype), param_metadata(directory)
  )


def _sharding_tree(tree, fn: Callable[..., Sharding]):
  takes_shape = len(inspect.signature(fn).parameters) >= 2
  return jax.tree_util.tree_map_with_path(
      lambda p, m: fn(_path_str(p), tuple(m.shape)) if takes_shape else fn(_path_str(p)), tree
  )


def restore_params(directory: str, shardings: ShardingSpec | None = None, dtype=None):
  """Params from DIR/params: numpy arrays when `shardings` is None, else jax.Arrays laid out on
  the given shardings (a matching pytree of NamedSharding, or a function path -> sharding or
  (path, shape) -> sharding). `dtype` (e.g. "bfloat16") casts on restore; None keeps the stored dtype.
  """
  tree = param_metadata(directory)
  cast = None if dtype is None else numpy_dtype(dtype)
  if shardings is None:
    args = jax.tree_util.tree_map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=cast), tree
    )
  else:
    if callable(shardings) and not isinstance(shardings, Sharding):
      shardings = _sharding_tree(tree, shardings)
    try:
      args = jax.tree_util.tree_map(
          lambda m, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=tuple(m.shape), dtype=cast),
          tree,
          shardings,
      )
    except ValueError as e:
      raise CheckpointError(
          f"{directory}: shardings do not match the stored param tree ({e})"
      ) from e
  target = paths.join(_absolute(directory), PARAMS)
  return ocp.PyTreeCheckpointer().restore(target, restore_args=args)


def load(directory: str, dtype="float32", shardings: ShardingSpec | None = None):
  """(config, params) of a converted directory."""
  return load_config(directory), restore_params(directory, shardings, dtype)
