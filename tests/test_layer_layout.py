"""The two layouts of the decoder layers' params: conversion both ways, and the model computes the
same logits from either (scanned over stacked params, unrolled over per-layer params)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmike_jax.model import Llama, causal_forward, init_params
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
