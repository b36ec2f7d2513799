"""Each row's own weight delta, added in the forward pass beside the shared weights.

A batch of rows may ask E differently edited models at once (the weight-editing baselines' reads):
row b is asked on `W + Δ[index[b]]` for every touched projection, computed as
`x @ W + x @ Δ[index[b]]` so the base weights stay shared and are read once per batch.

    DeltaTable of one projection ("attn/q", "mlp/down", ...), n touched layers, E edits:
      factors  a [n, E, in, r], b [n, E, r, out]   (ROME / MEMIT rank one, LoRA rank r, KN's columns)
      dense    a [n, E, in, out], b None            (FT-L's one matrix)
    RowDeltas: {projection: DeltaTable} and index [B] int32 (each row's edit, 0 <= index < E)

A row's result does not depend on which other edits share its batch, nor on E: factors are gathered
per row (`a[index]` [B, in, r], one batched product per row), and a dense delta is applied as E
products of the whole batch, each kept only on its own rows (`where`, so exactly one product
reaches a row). Dense deltas cost E times one projection's matmul; factor deltas cost
B·T·r·(in + out) multiply-adds and a gather of B·r·(in + out) values per touched layer and step.

On scanned layers the touched layer is found from the carry's layer index (`lax.cond`: untouched
layers skip the work); unrolled layers select statically. What triggers a recompile: the tables'
projections, touched layers, E, r and dtypes (one program per delta structure, i.e. per method).
"""

from __future__ import annotations

from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

# The projections a delta may touch, by module ("attn" / "mlp") and Dense name.
PROJECTIONS = ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/down")


@flax.struct.dataclass
class DeltaTable:
  """One projection's deltas of E edits at its touched layers (see the module doc)."""

  layers: tuple[int, ...] = flax.struct.field(pytree_node=False)  # touched layers, ascending
  a: jax.Array  # [n, E, in, r] factors, or [n, E, in, out] dense
  b: jax.Array | None  # [n, E, r, out], or None (dense)

  @property
  def num_edits(self) -> int:
    return int(self.a.shape[1])


@flax.struct.dataclass
class RowDeltas:
  tables: Mapping[str, DeltaTable]  # projection -> its table
  index: jax.Array  # [B] int32: the edit each row is asked on

  def take(self, rows) -> "RowDeltas":
    """The deltas of rows `rows` [R] only (the decode loop's shrinking batch)."""
    return self.replace(index=self.index[rows])


def layer_deltas(deltas: RowDeltas | None, layer, num_layers: int) -> dict:
  """{projection: (present, a [E, in, r|out], b [E, r, out] | None)} of one layer: `layer` an int
  (unrolled: only the touched projections, present True) or a traced int32 (scanned: every
  projection of the tables, present a traced bool and the arrays those of the nearest slot)."""
  if deltas is None:
    return {}
  out = {}
  for name, table in deltas.tables.items():
    if isinstance(layer, (int, np.integer)):
      if layer in table.layers:
        k = table.layers.index(layer)
        out[name] = (True, table.a[k], None if table.b is None else table.b[k])
      continue
    slot_of = np.full((num_layers,), -1, np.int32)
    slot_of[list(table.layers)] = np.arange(len(table.layers), dtype=np.int32)
    slot = jnp.asarray(slot_of)[layer]
    k = jnp.maximum(slot, 0)
    pick = lambda x: jax.lax.dynamic_index_in_dim(x, k, 0, keepdims=False)
    out[name] = (slot >= 0, pick(table.a), None if table.b is None else pick(table.b))
  return out


def add_delta(y, x, entry, index, precision):
  """`y` [B, T, out] plus each row's `x @ Δ[index[b]]` (x [B, T, in]); entry from layer_deltas
  (None: y unchanged). The factor that meets x (a dense delta, or a pair's `a`) is cast to x's
  dtype (at bfloat16 it is rounded relative to itself, not swallowed by the weights' larger
  entries, and x is not copied to float32); a pair's `b` meets the float32 [B, T, r] product in
  float32. The products accumulate in float32 and are added to y in float32, then cast to y's
  dtype."""
  if entry is None:
    return y
  present, a, b = entry
  dot = dict(precision=precision, preferred_element_type=jnp.float32)

  def product():
    if b is not None:  # factors: per row gathered
      h = jnp.einsum("bti,bir->btr", x, a[index].astype(x.dtype), **dot)  # [B, T, r] float32
      return jnp.einsum("btr,bro->bto", h, b[index].astype(jnp.float32), **dot)

    def one(acc, e):  # dense: edit e's product kept on its rows only
      d = jax.lax.dynamic_index_in_dim(a, e, 0, keepdims=False).astype(x.dtype)
      mine = (index == e)[:, None, None]
      return jnp.where(mine, jnp.einsum("bti,io->bto", x, d, **dot), acc), None

    zero = jnp.zeros(y.shape, jnp.float32)
    return jax.lax.scan(one, zero, jnp.arange(a.shape[0], dtype=jnp.int32))[0]

  if present is True:
    return (y.astype(jnp.float32) + product()).astype(y.dtype)
  added = jax.lax.cond(present, product, lambda: jnp.zeros(y.shape, jnp.float32))
  return jnp.where(present, (y.astype(jnp.float32) + added).astype(y.dtype), y)
