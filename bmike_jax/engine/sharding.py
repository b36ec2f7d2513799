"""Device mesh and shardings: batch on "data", heads / MLP / vocab on "model".

This is the modern form of pmap-sharded generation: one `jax.jit` program over a
`Mesh(("data", "model"))` with explicit in/out shardings; XLA's SPMD partitioner inserts the
collectives. Parameters follow a table of param-path regex -> PartitionSpec; a dimension that does
not divide evenly over its mesh axis falls back to replication (logged), so any mesh is correct.

Memory: an 8B Llama in bf16 is ~16 GB of weights, more than a 16 GiB chip holds with a KV cache.
With model axis >= 2 (`make_mesh(data=-1, model=2)`, params loaded with dtype=bfloat16 and the
engine's dtype bfloat16) every matrix is split in two (q/k/v/gate/up by output features, o/down by
input features, embedding and lm_head by vocab: Llama-3 8B has 32 heads, 8 KV heads, 14336 MLP
and 128256 vocab, all divisible by 2, 4 and 8), ~8 GB per chip, and the KV cache
(model/llama.KVCache) is split by batch over "data" and by KV heads over "model". model=4 leaves
more room for larger batches.

Several hosts: every process runs the same program on the same prompt list; `to_global` builds
each global batch array from the rows this process's devices hold
(`jax.make_array_from_process_local_data`), and outputs come back replicated.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bmike_jax.model import KVCache, LlamaConfig
from bmike_jax.model import layer_layout

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "model") mesh over `devices` (default all); -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and model == -1:
    raise ValueError("at most one of data, model may be -1")
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  if data < 1 or model < 1 or data * model > n:
    raise ValueError(f"mesh data={data} x model={model} needs more than the {n} devices")
  if data * model == n:
    try:
      from jax.experimental import mesh_utils

      grid = mesh_utils.create_device_mesh((data, model), devices=devices)
    except Exception:  # pylint: disable=broad-except  (topology helpers are best effort)
      grid = np.asarray(devices).reshape(data, model)
  else:
    grid = np.asarray(devices[: data * model]).reshape(data, model)
  return Mesh(grid, (DATA, MODEL))


@dataclasses.dataclass(frozen=True)
class ShardRule:
  """Params whose '/'-joined path matches `pattern` get `spec`. `unit` names the LlamaConfig
  field that must divide by the axis size (heads, so that no head is cut in two); by default the
  dimension itself."""

  pattern: str
  spec: P
  unit: str | None = None


# Specs of one layer's params; in the stacked layout (params["layers"], model/layer_layout.py)
# every leaf has a leading [L] axis, which stays unsharded (see `param_shardings`).
PARAM_RULES: tuple[ShardRule, ...] = (
    ShardRule(r"attn/q/kernel$", P(None, MODEL), "num_heads"),  # [D, H*Dh]
    ShardRule(r"attn/(k|v)/kernel$", P(None, MODEL), "num_kv_heads"),  # [D, KVH*Dh]
    ShardRule(r"attn/o/kernel$", P(MODEL, None), "num_heads"),  # [H*Dh, D]
    ShardRule(r"mlp/(gate|up)/kernel$", P(None, MODEL)),  # [D, F]
    ShardRule(r"mlp/down/kernel$", P(MODEL, None)),  # [F, D]
    ShardRule(r"^embed/embedding$", P(MODEL, None)),  # [V, D]
    ShardRule(r"^lm_head/kernel$", P(None, MODEL)),  # [D, V]
    ShardRule(r".*", P()),  # norms
)


def _axis_size(mesh: Mesh, axis) -> int:
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in names]))


def fit_spec(
    spec: P, shape: Sequence[int], mesh: Mesh, what: str, units: Sequence[int | None] | None = None
) -> P:
  """`spec` with every axis that does not divide its dimension (or its unit) replaced by None."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  for i, axis in enumerate(entries):
    if axis is None:
      continue
    size = _axis_size(mesh, axis)
    unit = (units[i] if units and units[i] else None) or shape[i]
    if shape[i] % size or unit % size:
      logging.info(
          "sharding: %s dim %d (size %d, unit %d) not divisible by %r=%d; replicated",
          what,
          i,
          shape[i],
          unit,
          axis,
          size,
      )
      entries[i] = None
  return P(*entries)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_shardings(
    params, mesh: Mesh, config: LlamaConfig, rules: Sequence[ShardRule] = PARAM_RULES
):
  """A pytree of NamedSharding matching `params`, from the first matching rule per path."""

  def one(path, leaf):
    name = _path_str(path)
    rule = next(r for r in rules if re.search(r.pattern, name))
    stacked = [None] if name.startswith(layer_layout.STACKED + "/") else []  # the [L] axis
    spec = stacked + list(rule.spec)
    spec = P(*(spec + [None] * (leaf.ndim - len(spec))))
    units = None
    if rule.unit:
      units = [getattr(config, rule.unit) if a is not None else None for a in spec]
    return NamedSharding(mesh, fit_spec(spec, leaf.shape, mesh, name, units))

  return jax.tree_util.tree_map_with_path(one, params)


def shard_params(params, mesh: Mesh, config: LlamaConfig):
  """Params placed on the mesh, and their shardings (for jit's in_shardings)."""
  shardings = param_shardings(params, mesh, config)
  return jax.device_put(params, shardings), shardings


def cache_shardings(mesh: Mesh, config: LlamaConfig, batch: int, per_layer: bool) -> KVCache:
  """A KV cache's shardings, in its layout (model/llama.KVCache: [L, B, KVH, S, Dh] stacked, or L
  x [B, KVH, S, Dh]): rows on "data", KV heads on "model"."""
  return _kv_shardings(mesh, config, batch, DATA, per_layer, "kv cache")


def prefix_shardings(mesh: Mesh, config: LlamaConfig, per_layer: bool) -> KVCache:
  """The shared prefix's KV (one row): KV heads on "model", replicated over "data"."""
  return _kv_shardings(mesh, config, 1, None, per_layer, "prefix kv")


def _kv_shardings(mesh, config, batch, row_axis, per_layer, what) -> KVCache:
  shape = (batch, config.num_kv_heads, 1, config.head_dim)
  spec = fit_spec(P(row_axis, MODEL, None, None), shape, mesh, what)
  if per_layer:
    one = NamedSharding(mesh, spec)
    layers = tuple(one for _ in range(config.num_layers))
    return KVCache(k=layers, v=layers)
  stacked = NamedSharding(mesh, P(None, *spec))
  return KVCache(k=stacked, v=stacked)


def batch_sharding(mesh: Mesh, ndim: int, batch: int) -> NamedSharding:
  """[B, ...] arrays: rows on "data"."""
  spec = fit_spec(P(DATA), (batch,) + (1,) * (ndim - 1), mesh, "batch")
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global jax.Array from the full host array, passing each process only the rows its devices
  hold (jax.make_array_from_process_local_data), so the same code runs on one or many hosts."""
  array = np.asarray(array)
  if jax.process_count() == 1:
    return jax.make_array_from_process_local_data(sharding, array, array.shape)
  index_map = sharding.addressable_devices_indices_map(array.shape)
  if array.ndim == 0:
    return jax.make_array_from_process_local_data(sharding, array, array.shape)
  rows = {
      (idx[0].start or 0, array.shape[0] if idx[0].stop is None else idx[0].stop)
      for idx in index_map.values()
  }  # this process's row ranges
  lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
  if sum(b - a for a, b in rows) != hi - lo and len(rows) > 1:
    raise ValueError(
        f"this process's rows {sorted(rows)} are not contiguous; build the mesh "
        "with make_mesh (devices grouped by process)"
    )
  return jax.make_array_from_process_local_data(sharding, array[lo:hi], array.shape)
