"""editing/forward.py equals the model's causal forward; its hooks do what they say; deltas leave
the base params untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.forward import MlpPatch, forward
from bmike_jax.model import Llama, causal_forward, layer_layout
from tests.engine_tiny import tiny_config, tiny_params


def _tokens(b=2, t=12, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(3, 256, (b, t)), jnp.int32)


def test_forward_equals_model_causal_forward():
  for tied in (False, True):
    config = tiny_config(tie_word_embeddings=tied)
    params = tiny_params(config)
    tokens = _tokens()
    ours, trace = forward(config, params, tokens)
    theirs = causal_forward(Llama(config), params, tokens)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert trace.down_in is None and trace.gate_at is None


def test_right_padding_does_not_change_real_positions():
  config = tiny_config()
  params = tiny_params(config)
  tokens = _tokens(1, 8)
  padded = jnp.concatenate([tokens, jnp.zeros((1, 8), jnp.int32)], axis=1)
  a, _ = forward(config, params, tokens)
  b, _ = forward(config, params, padded)
  # float32 round-off only (matmuls of another shape sum in another order; 1.8e-6 seen on a
  # 2026-12-06 machine): a shifted position or an attended pad would move logits by O(0.1)
  np.testing.assert_allclose(a[0], b[0, :8], rtol=1e-5, atol=1e-5)


def test_down_add_is_the_edited_kernel():
  """forward's down_add (factors beside the base `down` kernels, two layers in two slots) gives the
  logits and trace of the params with those factors added to the kernels (delta.apply_delta), to
  float32 round-off, while the updates move the logits by more than 0.1."""
  config = tiny_config(num_layers=3)
  params = tiny_params(config)
  tokens = _tokens(2, 10)
  rng = np.random.default_rng(1)
  f, d, n = config.intermediate_size, config.hidden_size, 2
  a = np.zeros((config.num_layers, f, n), np.float32)
  b = np.zeros((config.num_layers, n, d), np.float32)
  a[0, :, 0], b[0, 0] = rng.normal(size=f), rng.normal(size=d) * 0.1
  a[2, :, 1], b[2, 1] = rng.normal(size=f), rng.normal(size=d) * 0.1
  edited = delta_lib.apply_delta(
      params,
      {"mlp/down/kernel": {0: (a[0, :, :1], b[0, :1]), 2: (a[2, :, 1:], b[2, 1:])}},
  )
  want, want_trace = forward(config, edited, tokens, capture_layer=2)
  got, got_trace = forward(config, params, tokens, capture_layer=2, down_add=(a, b))
  base, _ = forward(config, params, tokens)
  assert float(jnp.max(jnp.abs(want - base))) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_trace.layer_out, want_trace.layer_out, rtol=1e-5, atol=1e-5)


def test_capture_and_patch_hooks():
  config = tiny_config(num_layers=3)
  params = tiny_params(config)
  tokens = _tokens(2, 10)
  base, trace = forward(config, params, tokens, capture_layer=1, gate_position=jnp.array([3, 7]))
  # down_out is the down projection of down_in
  kernel = params["layers"]["mlp"]["down"]["kernel"][1]
  np.testing.assert_allclose(trace.down_out, trace.down_in @ kernel, rtol=1e-5, atol=1e-5)
  assert trace.gate_at.shape == (3, 2, config.intermediate_size)
  # a zero out_add and a gate replaced by its own value change nothing
  pos = jnp.array([3, 7])
  same = MlpPatch(
      layer=2, position=pos, gate=trace.gate_at[2], out_add=jnp.zeros((2, config.hidden_size))
  )
  np.testing.assert_allclose(forward(config, params, tokens, patch=same)[0], base, atol=1e-6)
  # an out_add at position p of layer 1 leaves the positions before p alone and changes p
  add = MlpPatch(layer=1, position=pos, out_add=jnp.ones((2, config.hidden_size)))
  patched, trace2 = forward(config, params, tokens, patch=add, capture_layer=1)
  np.testing.assert_allclose(patched[0, :3], base[0, :3], atol=1e-6)
  assert not np.allclose(patched[0, 3], base[0, 3])
  np.testing.assert_allclose(trace2.down_out[0, 3], trace.down_out[0, 3] + 1.0, atol=1e-5)


def test_apply_delta_is_functional():
  config = tiny_config()
  params = tiny_params(config)
  before = jax.tree_util.tree_map(np.array, params)
  d = {
      "mlp/down/kernel": {1: jnp.ones((config.intermediate_size, config.hidden_size))},
      "attn/q/kernel": {delta_lib.ALL_LAYERS: (jnp.ones((2, 64, 1)), jnp.ones((2, 1, 64)))},
  }
  edited = delta_lib.apply_delta(params, d)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before, params)
  down = edited["layers"]["mlp"]["down"]["kernel"]
  np.testing.assert_array_equal(down[0], before["layers"]["mlp"]["down"]["kernel"][0])
  np.testing.assert_allclose(down[1], before["layers"]["mlp"]["down"]["kernel"][1] + 1.0)
  np.testing.assert_allclose(
      edited["layers"]["attn"]["q"]["kernel"], before["layers"]["attn"]["q"]["kernel"] + 1.0
  )
  assert edited["embed"] is params["embed"]


def test_apply_delta_on_per_layer_and_placed_params():
  """The engine's unrolled layout (params["layers_{i}"]) takes the same delta as the stacked one;
  placed leaves keep their dtype and sharding."""
  from bmike_jax.engine import Engine
  from tests.editing_tiny import CharTokenizer

  config = tiny_config()
  params = tiny_params(config)
  rng = np.random.default_rng(1)
  d = {
      "mlp/down/kernel": {1: jnp.asarray(rng.normal(size=(128, 64)), jnp.float32)},
      "attn/v/kernel": {
          delta_lib.ALL_LAYERS: (
              jnp.asarray(rng.normal(size=(2, 64, 1)), jnp.float32),
              jnp.asarray(rng.normal(size=(2, 1, 32)), jnp.float32),
          )
      },
  }
  stacked = delta_lib.apply_delta(params, d)
  per_layer = delta_lib.apply_delta(layer_layout.unstack_layers(params, config.num_layers), d)
  jax.tree_util.tree_map(
      np.testing.assert_array_equal,
      layer_layout.unstack_layers(stacked, config.num_layers),
      per_layer,
  )
  for scan in (True, False):
    engine = Engine(config, params, CharTokenizer(), dtype=jnp.bfloat16, scan_layers=scan)
    edited = delta_lib.apply_delta(engine.params, d)
    same = jax.tree_util.tree_map(
        lambda a, b: (a.dtype, a.sharding) == (b.dtype, b.sharding), engine.params, edited
    )
    assert all(jax.tree_util.tree_leaves(same))
