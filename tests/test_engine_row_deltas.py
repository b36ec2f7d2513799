"""Each row's own weight delta in the forward pass (model/row_deltas.py) and in the engine
(`Engine.generate(tables=..., prompt_edits=...)`): the rows of several edited models share
batches, and each row's answer is its own edited model's, whatever shares its batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmike_jax.editing import delta as delta_lib
from bmike_jax.engine import Engine
from bmike_jax.model import KVCache, Llama, causal_forward, layer_layout
from bmike_jax.model.row_deltas import RowDeltas
from tests import engine_tiny

EDITS = 3


@pytest.fixture(scope="module")
def tiny():
  config = engine_tiny.tiny_config()
  return config, engine_tiny.tiny_params(config), engine_tiny.random_deltas(config, EDITS, seed=4)


def _one(delta, e):
  """Edit e alone, as a batch of one edit."""
  return jax.tree_util.tree_map(lambda a: a[e][None], delta)


@pytest.mark.parametrize("scan", [True, False])
def test_forward_with_row_deltas_equals_the_edited_weights(tiny, scan):
  """Row b's logits are those of the weights with edit index[b] added (float32 round-off: the
  delta's product is added beside x @ W instead of into W), and bit for bit those of the same row
  asked with its edit alone (E = 1): neither the other edits nor E change a row."""
  config, params, delta = tiny
  params = params if scan else layer_layout.unstack_layers(params, config.num_layers)
  model = Llama(config, scan_layers=scan)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, engine_tiny.VOCAB, size=(5, 9)), jnp.int32)
  index = jnp.asarray([0, 2, 1, 2, 0], jnp.int32)
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  cache = KVCache.zeros(config, b, t, jnp.float32, per_layer=not scan)
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  run = jax.jit(
      lambda p, d: model.apply({"params": p}, tokens, positions, cache, 0, mask, deltas=d)[0]
  )
  mixed = run(params, RowDeltas(tables=delta_lib.row_tables(delta, config.num_layers), index=index))
  for r in range(b):
    e = int(index[r])
    edited = delta_lib.apply_delta(params, delta_lib.row(delta, e))
    want = causal_forward(model, edited, tokens[r : r + 1])[0]
    np.testing.assert_allclose(mixed[r], want, atol=2e-5, rtol=1e-5)
    alone = run(
        params,
        RowDeltas(
            tables=delta_lib.row_tables(_one(delta, e), config.num_layers),
            index=jnp.zeros((b,), jnp.int32),
        ),
    )
    np.testing.assert_array_equal(alone[r], mixed[r])
  base = run(params, None)
  assert not np.allclose(base, mixed, atol=1e-3)  # the edits reach the logits


def _each_alone(engine, config, delta, prompts, edits) -> list:
  """The answers of `prompts`, each edit's prompts asked in a call of their own (E = 1)."""
  out = [None] * len(prompts)
  for e in range(EDITS):
    mine = [i for i, x in enumerate(edits) if x == e]
    alone = engine.generate(
        [prompts[i] for i in mine],
        tables=delta_lib.row_tables(_one(delta, e), config.num_layers),
        prompt_edits=[0] * len(mine),
    )
    for i, r in zip(mine, alone):
      out[i] = r.ids
  return out


def _prompts(n_per_edit: int, seed: int):
  prompts = engine_tiny.group_prompts(seed=seed, n=EDITS * n_per_edit, prefix_len=6)
  edits = [i % EDITS for i in range(len(prompts))]  # interleaved: batches mix the edits
  return prompts, edits


@pytest.mark.parametrize("scan", [True, False])
def test_engine_answers_of_mixed_edits(tiny, scan):
  """Greedy answers of 3 edits' prompts in shared batches equal, for every batch size and decode
  shrinking: each edit's prompts asked alone (its own call, E = 1), and the naive greedy loop
  (no KV cache, float32) on that edit's weights. The delta programs are compiled once per delta
  structure and reused."""
  config, params, delta = tiny
  tables = delta_lib.row_tables(delta, config.num_layers)
  prompts, edits = _prompts(5, seed=21)
  tok = engine_tiny.FakeTokenizer()
  reference = [
      engine_tiny.naive_greedy(config, delta_lib.apply_delta(params, delta_lib.row(delta, e)), p)
      for p, e in zip(prompts, edits)
  ]
  unedited = [engine_tiny.naive_greedy(config, params, p) for p in prompts]
  assert reference != unedited  # the edits change answers
  # and differ from each other: a row on another edit's delta would be seen
  first = [
      engine_tiny.naive_greedy(config, delta_lib.apply_delta(params, delta_lib.row(delta, e)), p)
      for e in range(EDITS)
      for p in prompts[:2]
  ]
  assert len(set(first[0::2])) > 1 or len(set(first[1::2])) > 1
  assert any(len(r) < 15 for r in reference)
  for batch, halvings in ((4, 0), (16, 2), (16, 0)):
    engine = Engine(
        config, params, tok, batch_size=batch, decode_halvings=halvings, scan_layers=scan
    )
    got = engine.generate(prompts, tables=tables, prompt_edits=edits)
    assert [r.ids for r in got] == reference, (batch, halvings)
    assert engine._kept is None  # an edited model's prompt KV is not kept
    compiled = engine.compile_count
    engine.generate(prompts, tables=tables, prompt_edits=edits)
    assert engine.compile_count == compiled
    assert _each_alone(engine, config, delta, prompts, edits) == reference
    # the base programs still answer the unedited model
    assert [r.ids for r in engine.generate(prompts)] == unedited


def test_engine_row_delta_errors(tiny):
  config, params, delta = tiny
  tables = delta_lib.row_tables(delta, config.num_layers)
  engine = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=4)
  prompts = [[1, 5, 6], [1, 7]]
  with pytest.raises(ValueError, match="one edit index per prompt"):
    engine.generate(prompts, tables=tables)
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    engine.generate(prompts, tables=tables, prompt_edits=[0, 3])
  with pytest.raises(ValueError, match="prompt_edits without tables"):
    engine.generate(prompts, prompt_edits=[0, 1])


def test_row_tables_refuses_mixed_forms():
  value = jnp.zeros((2, 4, 3))
  with pytest.raises(ValueError, match="factor pairs and dense"):
    delta_lib.row_tables({"mlp/down/kernel": {0: value, 1: (value, value)}}, 2)
  with pytest.raises(ValueError, match="every layer and single layers"):
    delta_lib.row_tables({"mlp/down/kernel": {0: value, delta_lib.ALL_LAYERS: value}}, 2)
  with pytest.raises(ValueError, match="not a projection"):
    delta_lib.row_tables({"embed/embedding": {0: value}}, 2)
  with pytest.raises(ValueError, match=r"layers \[2\] outside the model's 2"):
    delta_lib.row_tables({"mlp/down/kernel": {2: value}}, 2)
  with pytest.raises(ValueError, match="one number of edits"):
    delta_lib.row_tables({"mlp/down/kernel": {0: value}, "attn/q/kernel": {0: value[:1]}}, 2)


def test_pad_edits_appends_zero_edits():
  delta = {"mlp/down/kernel": {0: (jnp.ones((2, 4, 1)), jnp.ones((2, 1, 3)))}}
  padded = delta_lib.pad_edits(delta, 5)
  a, b = padded["mlp/down/kernel"][0]
  assert a.shape == (5, 4, 1) and b.shape == (5, 1, 3)
  np.testing.assert_array_equal(a[:2], 1.0)
  np.testing.assert_array_equal(a[2:], 0.0)
  assert delta_lib.pad_edits(delta, 2) is delta


def test_held_bytes_come_off_the_rows_of_an_edited_call(tiny):
  """What the caller holds beside the engine (and the delta tables) comes off the rows' memory
  share in a call with deltas: the same prompts run in smaller batches."""
  config, params, delta = tiny
  tables = delta_lib.row_tables(delta, config.num_layers)
  prompts, edits = _prompts(4, seed=22)
  budget = 10**9
  engine = Engine(
      config, params, engine_tiny.FakeTokenizer(), batch_size=16, row_memory_bytes=budget
  )
  batches = lambda: {k[1] for k in engine.programs.compiles if k[0] == "generate"}
  roomy = engine.generate(prompts, tables=tables, prompt_edits=edits)
  assert batches() == {16}
  assert engine.max_rows(0, 32, 15, budget=None) == 16  # no bound: the batch size
  # leave room for about 2 rows of the largest shape
  from bmike_jax.engine import memory
  from bmike_jax.engine.layout import cache_length

  row = memory.row_bytes(
      config, 4, prefix_bucket=0, suffix_bucket=32, slots=cache_length(32, 15), model_axis=1
  )
  held = budget - memory.device_bytes(tables) - 2 * row - row // 2
  tight = engine.generate(prompts, tables=tables, prompt_edits=edits, held_bytes_per_device=held)
  assert [r.ids for r in tight] == [r.ids for r in roomy]
  assert min(batches()) <= 2


def test_bfloat16_rows_do_not_depend_on_their_batch(tiny):
  """At bfloat16 (the fast mode) too, a row's answer is its own edit's, whatever shares its batch:
  the mixed call equals each edit's prompts asked alone."""
  config, params, delta = tiny
  prompts, edits = _prompts(3, seed=23)
  engine = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=8, dtype=jnp.bfloat16)
  mixed = engine.generate(
      prompts, tables=delta_lib.row_tables(delta, config.num_layers), prompt_edits=edits
  )
  assert _each_alone(engine, config, delta, prompts, edits) == [r.ids for r in mixed]
  assert [r.ids for r in mixed] != [r.ids for r in engine.generate(prompts)]
