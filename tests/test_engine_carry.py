"""Continuous refill of the decode rows (`decode_carry`, decode.decode_carrying): a batch's decode
loop stops once no more than C of its rows are running and hands them to the next batch of its
program. Answers equal the whole prompts run one at a time (fp32) on every generate path (padded,
packed, stems, scoring inside), scored log-probs are those of the engine without it, and a batch
waits for its short answers, not its longest."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax.engine import Engine, buckets, memory
from bmike_jax.model import KVCache
from bmike_jax.runner import run_config
from tests import engine_tiny

CONFIG = engine_tiny.tiny_config()
PARAMS = engine_tiny.tiny_params(CONFIG)
TOK = engine_tiny.FakeTokenizer()
ONE_SHAPE = (128,)  # every batch one program: the carry goes from batch to batch


@pytest.fixture(scope="module")
def prompts():
  # 21 prompts, one shared 40-token prefix: answers of 2 to 15 tokens (tests/test_engine_generate)
  return engine_tiny.group_prompts(seed=1, n=21, prefix_len=40, suffix_range=(1, 40))


@pytest.fixture(scope="module")
def baseline(prompts):
  engine = Engine(CONFIG, PARAMS, TOK, batch_size=1, prefix_reuse=False)
  return [r.ids for r in engine.generate(prompts)]


def test_carry_rows_rule():
  assert buckets.carry_rows(256, 0.25) == 64
  assert buckets.carry_rows(8, 0.25) == 2
  assert buckets.carry_rows(8, 0.25, data_axis=4) == 4  # a multiple of the data axis
  assert buckets.carry_rows(4, 1.0) == 4 and buckets.carry_rows(4, 0.01) == 1
  assert buckets.carry_rows(256, 0.0) == 0  # off


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=4, decode_carry=0.5),
        dict(batch_size=4, decode_carry=0.25),
        dict(batch_size=8, decode_carry=1.0),
        dict(batch_size=4, decode_carry=0.5, scan_layers=False),
        dict(batch_size=4, decode_carry=0.5, length_buckets=(16, 32, 48, 64, 128)),
        dict(batch_size=8, decode_carry=0.25, batch_shapes="buckets"),
    ],
    ids=["b4-c2", "b4-c1", "b8-c8", "b4-c2-unrolled", "b4-c2-several-shapes", "b8-c2-buckets"],
)
def test_answers_identical_with_carried_rows(prompts, baseline, kw):
  kw = {"batch_shapes": "fixed", "length_buckets": ONE_SHAPE, **kw}
  engine = Engine(CONFIG, PARAMS, TOK, **kw)
  assert [r.ids for r in engine.generate(prompts)] == baseline
  assert engine.stats.generated_tokens == sum(len(b) for b in baseline)
  assert not engine._lane_prompts or all(p is None for p in engine._lane_prompts)  # all drained
  # one generate program per shape, as without the carry (it is an input, not a key)
  plain = Engine(CONFIG, PARAMS, TOK, **{**kw, "decode_carry": 0.0})
  assert [r.ids for r in plain.generate(prompts)] == baseline
  assert sorted(engine.programs.compiles) == sorted(plain.programs.compiles)


def test_a_batch_waits_for_its_short_answers(prompts, baseline):
  """At 4 rows a batch (6 batches of one shape), with 2 rows carried: the loops run fewer steps
  than batches that each wait for their longest answer, and some row is carried (the answers of
  the case above went through the hand-over)."""
  kw = dict(batch_size=4, batch_shapes="fixed", length_buckets=ONE_SHAPE)
  carried = Engine(CONFIG, PARAMS, TOK, decode_carry=0.5, **kw)
  plain = Engine(CONFIG, PARAMS, TOK, decode_halvings=0, **kw)
  handed_on = []
  collect = carried._collect

  def spy(item, results):
    collect(item, results)
    handed_on.append(sum(p is not None for p in carried._lane_prompts))

  carried._collect = spy
  carried.generate(prompts)
  plain.generate(prompts)
  assert max(handed_on) > 0
  assert carried.stats.decode_steps < plain.stats.decode_steps
  # each step runs the batch's rows and the carried ones
  assert carried.stats.decode_row_steps == 6 * carried.stats.decode_steps


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(suffix_packing=True, packed_length=128),
        dict(suffix_packing=True, stem_reuse=True, packed_length=128),
    ],
    ids=["padded", "packed", "packed-stems"],
)
def test_scoring_inside_generate_unchanged_by_carry(kw):
  """Records (a stem and 4 queries each) with scored continuations announced to generate: the
  answers equal the one-at-a-time baseline's and every log-prob equals the engine's without the
  carry (the same programs score before decode)."""
  prompts = engine_tiny.record_prompts(seed=5, records=7, prefix_len=40)
  rng = np.random.default_rng(3)
  conts = [rng.integers(3, engine_tiny.VOCAB, 1 + k % 4).tolist() for k in range(len(prompts))]
  want_ids = [
      r.ids for r in Engine(CONFIG, PARAMS, TOK, batch_size=1, prefix_reuse=False).generate(prompts)
  ]
  runs = []
  for carry in (0.0, 0.5):
    engine = Engine(
        CONFIG,
        PARAMS,
        TOK,
        batch_size=4,
        batch_shapes="fixed",
        length_buckets=(64, 128),
        rest_packing=True,
        rest_row_length=16,
        decode_carry=carry,
        **kw,
    )
    ids = [r.ids for r in engine.generate(prompts, scoring=(prompts, conts))]
    runs.append((ids, engine.continuation_logprobs(prompts, conts)))
  (ids0, lp0), (ids1, lp1) = runs
  assert ids1 == ids0 == want_ids
  for a, b in zip(lp1, lp0):
    np.testing.assert_array_equal(a, b)


def test_per_row_write_slots_equal_one_slot_for_all():
  """The model writes a decode token at each row's own slot ([B] write_index) exactly as at one
  slot for every row, and a row's own slot elsewhere leaves the other rows' caches alone."""
  from bmike_jax.engine.prefill import append_tokens
  from bmike_jax.model import Llama

  model = Llama(CONFIG, scan_layers=True)
  rng = np.random.default_rng(0)
  b, s = 3, 12
  cache = KVCache.zeros(CONFIG, b, s)
  key_valid = np.zeros((b, s), bool)
  key_valid[:, :5] = True
  cache = cache._map(lambda a: a + rng.standard_normal(a.shape).astype(np.float32))
  tokens = rng.integers(3, engine_tiny.VOCAB, (b, 1)).astype(np.int32)
  common = dict(
      tokens=tokens,
      start_position=np.full((b,), 5, np.int32),
      num_valid=np.ones((b,), np.int32),
      logits_index=np.zeros((b,), np.int32),
  )
  one = append_tokens(model, PARAMS, cache=cache, key_valid=key_valid, write_index=5, **common)
  own = append_tokens(
      model, PARAMS, cache=cache, key_valid=key_valid, write_index=np.full((b,), 5), **common
  )
  np.testing.assert_array_equal(one[0], own[0])
  np.testing.assert_array_equal(one[1].k, own[1].k)
  np.testing.assert_array_equal(one[2], own[2])
  # row 1 writes at slot 9 instead: its KV lands there, rows 0 and 2 as before
  moved = append_tokens(
      model, PARAMS, cache=cache, key_valid=key_valid, write_index=np.array([5, 9, 5]), **common
  )
  np.testing.assert_array_equal(moved[1].k[:, [0, 2]], one[1].k[:, [0, 2]])
  np.testing.assert_array_equal(moved[1].k[:, 1, :, 9], one[1].k[:, 1, :, 5])
  assert moved[2][1, 9] and not moved[2][1, 5] and moved[2][0, 5]


def test_memory_counts_carried_rows():
  """A carried share makes a row's estimate larger (the B + C rows' state beside the batch's own
  and the carried-in rows'), so fewer rows fit one budget."""
  common = dict(prefix_bucket=512, suffix_bucket=64, slots=79, model_axis=1)
  plain = memory.row_bytes(CONFIG, 4, **common)
  carried = memory.row_bytes(CONFIG, 4, carry_share=0.25, **common)
  kv = memory.kv_slot_bytes(CONFIG, 4)
  assert carried - plain == kv * int(np.ceil(2 * 0.25 * 79))


def test_flag_parses_a_share_and_refuses_others():
  from absl import flags as absl_flags

  def parse(value):
    values = absl_flags.FlagValues()
    run_config.define_flags(values)
    values(["main", "--output_dir=o", "--checkpoint=c", f"--decode_carry={value}"])
    return run_config.from_flags(values).decode_carry

  assert parse("0.25") == 0.25 and parse("0") == 0.0
  with pytest.raises(run_config.FlagError, match="--decode_carry must be a share in"):
    parse("1.5")
  with pytest.raises(ValueError, match="decode_carry"):
    Engine(CONFIG, PARAMS, TOK, decode_carry=-0.1)
