"""The two layouts of the decoder layers' params: conversion both ways, and the model computes the
same logits from either (scanned over stacked params, unrolled over per-layer params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmike_jax.model import KVCache, Llama, causal_forward, init_params
from bmike_jax.model import layer_layout
from tests import engine_tiny

CONFIG = engine_tiny.tiny_config(num_layers=3)


def test_round_trip_and_slices():
  stacked = init_params(CONFIG, seed=3)
  per_layer = layer_layout.unstack_layers(stacked, CONFIG.num_layers)
  assert not layer_layout.is_stacked(per_layer)
  assert sorted(k for k in per_layer if k.startswith("layers_")) == [
      "layers_0",
      "layers_1",
      "layers_2",
  ]
  q = np.asarray(stacked["layers"]["attn"]["q"]["kernel"])
  np.testing.assert_array_equal(np.asarray(per_layer["layers_2"]["attn"]["q"]["kernel"]), q[2])
  back = layer_layout.stack_layers(per_layer, CONFIG.num_layers)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(stacked)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(stacked)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # numpy leaves: per-layer slices are views, stacking gives numpy back
  host = jax.tree_util.tree_map(np.asarray, stacked)
  host_layers = layer_layout.unstack_layers(host, CONFIG.num_layers)
  assert np.shares_memory(
      host_layers["layers_1"]["mlp"]["up"]["kernel"], host["layers"]["mlp"]["up"]["kernel"]
  )
  assert isinstance(
      layer_layout.stack_layers(host_layers, CONFIG.num_layers)["layers"]["mlp"]["up"]["kernel"],
      np.ndarray,
  )


def test_consume_frees_the_stacked_arrays():
  stacked = init_params(CONFIG, seed=4)
  want = np.asarray(stacked["layers"]["mlp"]["down"]["kernel"])[1]
  leaf = stacked["layers"]["mlp"]["down"]["kernel"]
  per_layer = layer_layout.unstack_layers(stacked, CONFIG.num_layers, consume=True)
  assert leaf.is_deleted()
  np.testing.assert_array_equal(np.asarray(per_layer["layers_1"]["mlp"]["down"]["kernel"]), want)


def test_wrong_layout_errors():
  stacked = init_params(CONFIG, seed=5)
  with pytest.raises(ValueError, match="not in the per-layer layout"):
    layer_layout.stack_layers(stacked, CONFIG.num_layers)
  per_layer = layer_layout.unstack_layers(stacked, CONFIG.num_layers)
  with pytest.raises(ValueError, match="not in the stacked layout"):
    layer_layout.unstack_layers(per_layer, CONFIG.num_layers)


def test_unrolled_model_computes_the_scanned_models_logits():
  stacked = init_params(CONFIG, seed=6)
  per_layer = layer_layout.unstack_layers(stacked, CONFIG.num_layers)
  ids = jnp.asarray(np.random.default_rng(0).integers(3, CONFIG.vocab_size, (2, 19)), jnp.int32)
  scanned = causal_forward(Llama(CONFIG), stacked, ids)
  unrolled = causal_forward(Llama(CONFIG, scan_layers=False), per_layer, ids)
  np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), rtol=1e-5, atol=1e-5)
  # init in the per-layer layout has the same tree as the converted one
  fresh = init_params(CONFIG, seed=6, scan_layers=False)
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(per_layer)


def test_kv_cache_layouts_agree_and_a_mismatch_is_named():
  """The per-layer cache holds what the stacked one holds, layer by layer, and the methods the
  engine changes caches through (rows, slots, padding) do the same on both."""
  rng = np.random.default_rng(1)
  stacked_zero = KVCache.zeros(CONFIG, 3, 5)
  shape = stacked_zero.k.shape  # [L, B, KVH, S, Dh]
  assert shape == (CONFIG.num_layers, 3, CONFIG.num_kv_heads, 5, CONFIG.head_dim)
  k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
  stacked = KVCache(k=k, v=v)
  per_layer = KVCache(k=tuple(k), v=tuple(v))
  assert per_layer.per_layer and not stacked.per_layer
  assert per_layer.length == stacked.length == 5
  rows = jnp.asarray([2, 0], jnp.int32)
  for change in (
      lambda c: c.take_rows(rows),
      lambda c: c.slots(1, 3),
      lambda c: c.pad_slots(4),
  ):
    a, b = change(stacked), change(per_layer)
    for i in range(CONFIG.num_layers):
      for x, y in zip(a.layer(i), b.layer(i)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert stacked.pad_slots(4).length == 9 and per_layer.slots(1, 3).length == 3

  model = Llama(CONFIG, scan_layers=False)
  params = init_params(CONFIG, seed=2, scan_layers=False)
  tokens = jnp.zeros((3, 1), jnp.int32)
  with pytest.raises(ValueError, match="a stacked KVCache for a model with unrolled layers"):
    model.apply({"params": params}, tokens, tokens, stacked, 0, jnp.ones((3, 1, 5), bool))
