"""Weight deltas: what an edit returns, applied functionally to a params tree.

The base params are never mutated: `apply_delta(params, delta)` returns a new tree whose touched
leaves are `base + delta` and whose other leaves are the base's own arrays, so the unedited model
is the base tree itself, bit for bit, after any number of edits.

A delta is a dict `{path: {layer: value}}`:
- path: a leaf inside one layer, "mlp/down/kernel", "attn/q/kernel", ... (kernels are [in, out]);
- layer: an int, that layer of the stacked `params["layers"]` leaf; or `ALL_LAYERS` (-1): every
  layer at once (the value then has a leading [L] axis);
- value: a dense array of the leaf's per-layer shape, or a factor pair `(a, b)` with
  `a @ b` that shape (ROME's rank-one u vᵀ, LoRA's scaled A·B, KN's columns).
It is a pytree: a batch of edits is the same dict with a leading [R] axis on every array
(`jax.vmap` output), and `row(delta, r)` takes one edit out of it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from bmike_jax.model import layer_layout, row_deltas

ALL_LAYERS = -1
Delta = Mapping[str, Mapping[int, Any]]


def dense(value) -> jax.Array:
  """The dense update of a delta value (a factor pair multiplied out)."""
  if isinstance(value, (tuple, list)):
    a, b = value
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  return value


def _get(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _replace(tree, path: str, leaf):
  """A copy of the nested dict `tree` with the leaf at `path` replaced (other subtrees shared)."""
  key, _, rest = path.partition("/")
  out = dict(tree)
  out[key] = _replace(tree[key], rest, leaf) if rest else leaf
  return out


def _added(leaf, value, layer):
  """`leaf` with the update `value` added in float32 (cast back to the leaf's dtype): to the
  whole leaf (layer None) or to its slice `layer` of a stacked leaf. A placed leaf (a concrete
  jax.Array) keeps its sharding, so a program compiled for the base params runs the edited ones."""
  update = dense(value).astype(jnp.float32)
  if not isinstance(leaf, jax.Array):  # host (numpy) params
    leaf = jnp.asarray(leaf)
  if layer is None:
    out = (leaf.astype(jnp.float32) + update).astype(leaf.dtype)
  else:
    out = leaf.at[layer].set((leaf[layer].astype(jnp.float32) + update).astype(leaf.dtype))
  if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
    out = jax.device_put(out, leaf.sharding)
  return out


def apply_delta(params, delta: Delta):
  """New params with every entry of `delta` added (in float32, cast back to the leaf's dtype),
  in either layout (model/layer_layout.py): stacked `params["layers"]` (traceable: the edits'
  optimisations use it under jit / vmap) or per-layer `params["layers_{i}"]` (the engine's
  unrolled layout on GPU / TPU). Placed leaves keep their dtype and sharding."""
  out = dict(params)
  stacked = layer_layout.is_stacked(params)
  num_layers = sum(1 for k in params if k.startswith(layer_layout.STACKED + "_"))
  if not stacked and layer_layout.layer_name(0) not in params:
    raise ValueError("apply_delta needs params['layers'] or params['layers_0'], ...")
  for path, per_layer in delta.items():
    for layer, value in per_layer.items():
      if stacked:
        leaf = _get(out[layer_layout.STACKED], path)
        new = _added(leaf, value, None if layer == ALL_LAYERS else layer)
        out[layer_layout.STACKED] = _replace(out[layer_layout.STACKED], path, new)
        continue
      for i in range(num_layers) if layer == ALL_LAYERS else (layer,):
        one = jax.tree_util.tree_map(lambda v, i=i: v[i], value) if layer == ALL_LAYERS else value
        name = layer_layout.layer_name(i)
        out[name] = _replace(out[name], path, _added(_get(out[name], path), one, None))
  return out


def row(delta: Delta, r: int) -> Delta:
  """Edit `r` of a batched delta (every array with a leading [R] axis)."""
  return jax.tree_util.tree_map(lambda a: a[r], delta)


def num_rows(delta: Delta) -> int:
  leaves = jax.tree_util.tree_leaves(delta)
  return int(leaves[0].shape[0]) if leaves else 0


def pad_edits(delta: Delta, edits: int) -> Delta:
  """A batched delta with zero edits appended up to `edits` (unchanged when it holds as many)."""
  have = num_rows(delta)
  if have >= edits:
    return delta
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate([a, jnp.zeros((edits - have,) + a.shape[1:], a.dtype)]), delta
  )


def row_tables(delta: Delta, num_layers: int) -> dict:
  """A batched delta (E edits, every array with a leading [E] axis) as the forward pass's per-row
  tables (model/row_deltas.py): {projection: DeltaTable} with the touched layers first
  ([n, E, ...]), so that rows of one batch can each be asked on their own edit."""
  out = {}
  for path, per_layer in delta.items():
    projection = path.removesuffix("/kernel")
    if projection not in row_deltas.PROJECTIONS:
      raise ValueError(f"delta path {path!r}: not a projection kernel ({row_deltas.PROJECTIONS})")
    if ALL_LAYERS in per_layer and len(per_layer) > 1:
      raise ValueError(f"delta path {path!r}: both every layer and single layers")
    kinds = {isinstance(v, (tuple, list)) for v in per_layer.values()}
    if len(kinds) > 1:
      raise ValueError(f"delta path {path!r}: factor pairs and dense values mixed")
    if ALL_LAYERS in per_layer:  # [E, L, ...] -> [L, E, ...]
      layers = tuple(range(num_layers))
      parts = per_layer[ALL_LAYERS]
      parts = tuple(parts) if isinstance(parts, (tuple, list)) else (parts,)
      parts = tuple(jnp.swapaxes(p, 0, 1) for p in parts)
    else:
      layers = tuple(sorted(per_layer))
      values = [per_layer[l] for l in layers]
      values = [tuple(v) if isinstance(v, (tuple, list)) else (v,) for v in values]
      parts = tuple(jnp.stack([v[i] for v in values]) for i in range(len(values[0])))
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
      raise ValueError(f"delta path {path!r}: layers {bad} outside the model's {num_layers}")
    if any(p.shape[0] != len(layers) for p in parts):
      raise ValueError(
          f"delta path {path!r}: {[p.shape[0] for p in parts]} layer slices, "
          f"{len(layers)} layers"
      )
    a, b = (parts[0], parts[1]) if len(parts) == 2 else (parts[0], None)
    out[projection] = row_deltas.DeltaTable(layers=layers, a=a, b=b)
  edits = {t.a.shape[1] for t in out.values()} | {
      t.b.shape[1] for t in out.values() if t.b is not None
  }
  if len(edits) != 1:
    raise ValueError(
        f"a batched delta needs one number of edits on every array, got {edits or 'none'}"
    )
  return out
