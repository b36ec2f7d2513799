"""Build the Flax param tree from any tensor source, following the table in `naming`."""

from __future__ import annotations

import functools
import logging
from typing import Iterable, Protocol

import jax
import ml_dtypes
import numpy as np

from bmike_jax.checkpoints import naming
from bmike_jax.checkpoints.errors import CheckpointError
from bmike_jax.model import LlamaConfig, init_params

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class TensorSource(Protocol):
  fmt: str  # a source column of naming.RULES: "hf" | "gguf"

  def names(self) -> Iterable[str]:
    ...

  def shape(self, name: str) -> tuple[int, ...]:
    ...  # stored layout ([out, in] for matrices)

  def read(self, name: str) -> np.ndarray:
    ...  # float array, stored layout

  def where(self, name: str) -> str:
    ...  # the file holding `name`


def numpy_dtype(dtype) -> np.dtype:
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise CheckpointError(f"dtype {dtype!r} is not supported (supported: {', '.join(DTYPES)})")
    return DTYPES[dtype]
  return np.dtype(dtype)


@functools.lru_cache(maxsize=8)
def param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """'/'-joined param path -> shape, exactly as the Flax model declares them."""
  tree = jax.eval_shape(lambda: init_params(config))
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in flat}


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def _read_checked(
    source: TensorSource, name: str, rule: naming.Rule, layer_shape, config, dtype
) -> np.ndarray:
  """One source tensor, shape-checked, transformed to the Flax layout and cast."""
  steps = rule.steps(source.fmt)
  want = naming.source_shape(layer_shape, steps)
  have = tuple(source.shape(name))
  if have != want:
    raise CheckpointError(
        f"{source.where(name)}: tensor {name!r} has shape {have}, expected {want} "
        f"(for {rule.target} of this config)"
    )
  array = source.read(name)
  if tuple(array.shape) != want:
    raise CheckpointError(
        f"{source.where(name)}: tensor {name!r} read with shape {array.shape}, " f"expected {want}"
    )
  return np.ascontiguousarray(naming.apply_steps(array, steps, config), dtype=dtype)


def assemble(source: TensorSource, config: LlamaConfig, dtype="float32") -> dict:
  """Params (nested dicts of numpy arrays, per-layer tensors stacked on axis 0 [L, ...])."""
  dtype = numpy_dtype(dtype)
  shapes = param_shapes(config)
  available = set(source.names())
  used = set()
  params: dict = {}
  for rule in naming.RULES:
    names = naming.source_names(rule, source.fmt, config.num_layers)
    if rule.target not in shapes:  # lm_head of a tied model: a stored copy is redundant
      used.update(n for n in names if n in available)
      continue
    missing = [n for n in names if n not in available]
    if missing:
      anywhere = source.where(missing[0])
      raise CheckpointError(
          f"{anywhere}: missing tensor {missing[0]!r} (needed for {rule.target}"
          f"{'' if len(missing) == 1 else f'; {len(missing)} tensors missing'})"
      )
    shape = shapes[rule.target]
    if rule.per_layer:
      out = np.empty(shape, dtype)  # [L, ...]
      for i, name in enumerate(names):
        out[i] = _read_checked(source, name, rule, shape[1:], config, dtype)
    else:
      out = _read_checked(source, names[0], rule, shape, config, dtype)
    _set(params, rule.target, out)
    used.update(names)
  extra = sorted(n for n in available - used if not naming.is_ignored(n, source.fmt))
  if extra:
    raise CheckpointError(
        f"{source.where(extra[0])}: unexpected tensor {extra[0]!r} "
        f"({len(extra)} unexpected in all); not a plain Llama checkpoint "
        f"for this config"
    )
  logging.info("assembled %d params from %s", len(shapes), source.fmt)
  return params
