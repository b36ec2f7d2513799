"""Engine generation on a tiny random Llama (fp32, CPU): answers do not depend on batch size,
buckets or prefix reuse; decode equals a naive re-run loop; compiles are bounded."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax.engine import Engine, PromptTooLongError, buckets, layout, memory
from bmike_jax.model import layer_layout
from tests import engine_tiny

CONFIG = engine_tiny.tiny_config()
PARAMS = engine_tiny.tiny_params(CONFIG)
TOK = engine_tiny.FakeTokenizer()


def _engine(**kw) -> Engine:
  return Engine(CONFIG, PARAMS, TOK, **kw)


@pytest.fixture(scope="module")
def prompts():
  # One group (shared 40-token prefix) plus odd lengths; 21 prompts: batches of 8 leave a remainder.
  return engine_tiny.group_prompts(seed=1, n=21, prefix_len=40, suffix_range=(1, 40))


@pytest.fixture(scope="module")
def baseline_engine(prompts):
  """One prompt at a time, no prefix reuse; (engine, answers)."""
  engine = _engine(batch_size=1, prefix_reuse=False)
  return engine, [r.ids for r in engine.generate(prompts)]


@pytest.fixture(scope="module")
def baseline(baseline_engine):
  return baseline_engine[1]


def test_decode_equals_naive_rerun_loop(prompts, baseline):
  for i in (0, 3, 7, 12):
    assert baseline[i] == engine_tiny.naive_greedy(CONFIG, PARAMS, prompts[i]), i
  lengths = [len(ids) for ids in baseline]
  # The stop rules are exercised: some rows stop early (quote / EOS), some run to 15 tokens.
  assert min(lengths) < 15 and max(lengths) == 15


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=8, prefix_reuse=True),
        dict(batch_size=32, prefix_reuse=True),
        dict(batch_size=8, prefix_reuse=False),
        dict(batch_size=32, prefix_reuse=False, length_buckets=(128, 256)),
        dict(batch_size=4, prefix_reuse=True, length_buckets=(16, 24, 40, 56, 72, 96)),
        dict(batch_size=32, prefix_reuse=True, decode_halvings=0),
        dict(batch_size=16, prefix_reuse=False, decode_halvings=3),
        dict(batch_size=8, prefix_reuse=True, scan_layers=False),
        dict(batch_size=16, prefix_reuse=False, scan_layers=False, per_layer_params=True),
        dict(batch_size=8, prefix_reuse=True, per_layer_params=True),
        dict(batch_size=16, prefix_reuse=True, batch_shapes="fixed"),
    ],
    ids=[
        "b8-reuse",
        "b32-reuse",
        "b8",
        "b32-big-buckets",
        "b4-reuse-fine-buckets",
        "b32-no-shrink",
        "b16-shrink-to-2",
        "b8-reuse-unrolled-layers",
        "b16-unrolled-layers-per-layer-params-in",
        "b8-reuse-per-layer-params-restacked",
        "b16-reuse-fixed-batch-shape",
    ],
)
def test_answers_identical_across_batch_sizes_buckets_and_reuse(prompts, baseline, kw):
  kw = dict(kw)
  # without prefix reuse, no sharing at all (record stems would take the shared prefix up as
  # one stem: tests/test_engine_stems.py)
  kw.setdefault("stem_reuse", kw["prefix_reuse"])
  params = PARAMS
  if kw.pop("per_layer_params", False):  # the engine takes params of either layout
    params = layer_layout.unstack_layers(PARAMS, CONFIG.num_layers)
    assert not layer_layout.is_stacked(params)
  engine = Engine(CONFIG, params, TOK, **kw)
  assert engine.scan_layers == kw.get("scan_layers", True)  # CPU default: scanned
  assert layer_layout.is_stacked(engine.params) == engine.scan_layers
  results = engine.generate(prompts, prompt_names=[f"p{i}" for i in range(len(prompts))])
  assert [r.ids for r in results] == baseline
  assert [r.text for r in results] == [TOK.decode(ids).split('"')[0] for ids in baseline]
  assert engine.stats.prompts == len(prompts)
  assert engine.stats.generated_tokens == sum(len(b) for b in baseline)
  if kw["prefix_reuse"]:
    assert engine.stats.prefill_tokens < engine.stats.prompt_tokens
  else:
    assert engine.stats.prefill_tokens == engine.stats.prompt_tokens


def test_shrinking_decode_batch_is_exercised(prompts, baseline):
  """The default engine's batch of 32 (21 prompts, 11 dummy rows) shrinks to 16 rows once 5 rows
  have finished: the answers' lengths show that this happens while rows are still running, so the
  b32-reuse case above (answers equal the one-at-a-time baseline) goes through the move. (The
  sharding test exercises two moves on every mesh.)"""
  engine = _engine(batch_size=32)
  assert engine.programs.decode_phases(32) == (32, 16, 8)
  lengths = sorted(len(ids) for ids in baseline)
  assert len(prompts) == 21 and lengths[4] < 15 and lengths[-1] == 15


def test_group_prefix_flag_overrides_and_results_keep_order(prompts, baseline):
  engine = _engine(batch_size=8, stem_reuse=False)
  shuffled = list(reversed(prompts))
  results = engine.generate(shuffled, group_prefix=False)
  assert [r.ids for r in results] == list(reversed(baseline))
  assert engine.stats.prefill_tokens == engine.stats.prompt_tokens


def test_max_new_tokens_is_a_cap(prompts, baseline):
  results = _engine(batch_size=8, max_new_tokens=3).generate(prompts)
  for r, full in zip(results, baseline):
    assert r.ids == full[:3]


def test_compile_count_bounded_across_groups():
  engine = _engine(batch_size=8)
  a = engine_tiny.group_prompts(seed=2, n=8, prefix_len=40, suffix_range=(5, 25))
  b = engine_tiny.group_prompts(seed=3, n=8, prefix_len=44, suffix_range=(3, 28))
  engine.generate(a)
  after_a = engine.compile_count
  assert after_a == 2  # prefix(48), generate(8, 48, 32)
  engine.generate(b)  # other lengths, same buckets: nothing new
  assert engine.compile_count == after_a
  assert set(engine.programs.compiles.values()) == {1}
  # Many groups of varied lengths: bounded by the bucket combinations that occur.
  rng = np.random.default_rng(0)
  for seed in range(5):
    engine.generate(
        engine_tiny.group_prompts(
            seed=10 + seed,
            n=int(rng.integers(1, 20)),
            prefix_len=int(rng.integers(20, 60)),
            suffix_range=(1, 40),
        )
    )
  keys = engine.programs.compiles
  assert set(keys.values()) == {1}  # never the same program twice
  # prefix: Pb in {32, 48, 64}; generate: B in {1, 2, 4, 8} x Pb (or none) x Sb in {32, 48}.
  assert engine.compile_count <= 3 + 4 * 4 * 2
  assert engine.stats.as_dict().get("compile_count") == engine.compile_count


def test_fixed_batch_shape_compiles_one_row_count():
  """batch_shapes="fixed": groups of any size run at batch_size rows, so programs differ only by
  length buckets (the same groups under "buckets" compile one per row count in use)."""
  groups = [
      engine_tiny.group_prompts(seed=20 + k, n=n, prefix_len=40, suffix_range=(5, 25))
      for k, n in enumerate((1, 3, 8, 13))
  ]
  fixed, bucketed = _engine(batch_size=8, batch_shapes="fixed"), _engine(batch_size=8)
  for g in groups:
    assert [r.ids for r in fixed.generate(g)] == [r.ids for r in bucketed.generate(g)]
  rows = lambda e: {k[1] for k in e.programs.compiles if k[0] == "generate"}
  assert rows(fixed) == {8} and rows(bucketed) == {1, 4, 8}
  assert fixed.compile_count < bucketed.compile_count
  with pytest.raises(ValueError, match="batch_shapes"):
    _engine(batch_shapes="some")


def test_fresh_scoring_calls_take_few_rows_under_fixed_shapes():
  """Fresh scoring (contexts computed afresh) under batch_shapes="fixed" runs calls of
  buckets.FRESH_SCORING_ROWS rows, not batch_size: after a generated group only a few sequences
  take this path. Log-probs as the bucketed engine's (another row count: float32 rounding)."""
  from bmike_jax.engine import buckets

  prompts = engine_tiny.group_prompts(seed=31, n=20, prefix_len=40, suffix_range=(5, 25))
  conts = [[3 + k % 5] * (1 + k % 4) for k in range(20)]
  fixed = _engine(batch_size=64, batch_shapes="fixed")
  bucketed = _engine(batch_size=64, batch_shapes="buckets")
  got, want = (e.continuation_logprobs(prompts, conts) for e in (fixed, bucketed))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-5)
  rows = lambda e: sorted(k[1] for k in e.programs.compiles if k[0] == "score")
  assert rows(fixed) == [buckets.FRESH_SCORING_ROWS] * len(rows(fixed))  # 20 rows: two calls
  assert 32 in rows(bucketed)
  assert buckets.fresh_scoring_rows(8, "fixed") == (8,)
  assert buckets.fresh_scoring_rows(64, "buckets") == buckets.batch_buckets(64)


def test_overlong_prompt_error_and_truncate_left():
  long_prompt = engine_tiny.group_prompts(seed=4, n=1, prefix_len=60, suffix_range=(10, 11))[0]
  assert len(long_prompt) == 70
  with pytest.raises(PromptTooLongError) as err:
    _engine(length_buckets=(32, 64)).generate([long_prompt], prompt_names=["zsre de record 7"])
  assert "zsre de record 7" in str(err.value) and "70" in str(err.value)
  truncated = _engine(length_buckets=(32, 64), overlong="truncate_left").generate([long_prompt])
  expected = [long_prompt[0]] + long_prompt[-63:]
  whole = _engine(length_buckets=(32, 64)).generate([expected])[0]
  assert truncated[0].ids == whole.ids
  assert truncated[0].truncated_tokens == 70 - 64 and whole.truncated_tokens == 0
  small_context = engine_tiny.tiny_config(max_position_embeddings=80)
  with pytest.raises(PromptTooLongError, match="context"):
    Engine(small_context, PARAMS, TOK).generate([long_prompt])  # 70 + 15 new > 80


def test_empty_input_and_bad_arguments():
  engine = _engine()
  assert engine.generate([]) == [] and engine.continuation_logprobs([], []) == []
  with pytest.raises(ValueError):
    engine.generate([[1, 2, 3]], prompt_names=["a", "b"])
  with pytest.raises(ValueError):
    engine.generate([[]])
  with pytest.raises(ValueError):
    _engine(overlong="drop")


def test_token_account_follows_from_the_prompts_and_answers(prompts, baseline_engine):
  """One prompt per batch, no prefix reuse: every figure of the account is a function of the
  prompts, the buckets and the answers (an answer's decode steps: the tokens it produced, the EOS
  that ended it included, less the first, which prefill picks)."""
  engine, answers = baseline_engine
  s = engine.stats
  quote = TOK.quote_token_mask()
  produced = [len(a) + (len(a) < 15 and not (a and quote[a[-1]])) for a in answers]
  assert s.decode_steps == s.decode_row_steps == sum(n - 1 for n in produced)
  assert s.generated_tokens == sum(len(a) for a in answers)
  assert s.prefix_tokens == 0 and s.suffix_tokens == s.prefill_tokens == s.prompt_tokens
  assert s.prefill_padded_tokens == sum(
      min(b for b in engine.length_buckets if b >= len(p)) for p in prompts
  )
  shared = _engine(batch_size=8)
  shared.generate(prompts)
  t = shared.stats
  assert t.prefix_tokens == layout.common_prefix_length(prompts) > 0
  assert t.prefix_tokens + t.suffix_tokens == t.prefill_tokens < t.prompt_tokens
  # every shared start counted once: no more than what ran (the group prefix shared)
  assert t.prompt_tree_tokens == layout.prefix_tree_tokens(prompts) <= t.prefill_tokens
  assert t.prefill_padded_tokens >= t.prefill_tokens
  assert t.decode_row_steps >= t.decode_steps >= max(produced) - 1
  assert set(t.as_dict()) >= {"prefix_tokens", "decode_steps", "scoring_padded_tokens"}


def test_rows_bounded_by_memory_per_shape(prompts, baseline):
  """A row budget that holds 16 rows of short suffixes but fewer of long ones (engine/memory.py's
  estimate): each shape gets its own row count, the answers stay the one-at-a-time baseline's."""
  short, long_ = 32, 48  # the default buckets these prompts' suffixes use (1..40 tokens after 40)
  probe = _engine(batch_size=16, row_memory_bytes=None)
  per_row = {sb: probe_row_bytes(probe, sb) for sb in (short, long_)}
  assert per_row[short] < per_row[long_]
  budget = 16 * per_row[short]  # 16 short rows fit, 16 long ones do not
  engine = _engine(batch_size=16, row_memory_bytes=budget, batch_shapes="fixed")
  assert engine.max_rows(48, short, 15) == 16 and engine.max_rows(48, long_, 15) < 16
  results = engine.generate(prompts)
  assert [r.ids for r in results] == baseline
  rows = {k[3]: k[1] for k in engine.programs.compiles if k[0] == "generate"}
  assert rows[short] == 16 and rows[long_] == engine.max_rows(48, long_, 15)


def test_rows_bounded_by_memory_leave_room_for_scoring_inside_generate():
  """With packed rests scored inside the generate programs, one block of rests is live beside
  the batch's rows (memory.rest_block_bytes): a budget that holds 16 rows exactly holds fewer
  once the engine scores inside its programs."""
  sb = 32
  probe = _engine(batch_size=16, row_memory_bytes=None)
  budget = 16 * probe_row_bytes(probe, sb)
  plain = _engine(batch_size=16, row_memory_bytes=budget)
  scoring = _engine(batch_size=16, row_memory_bytes=budget, rest_packing=True, rest_row_length=16)
  assert plain.max_rows(48, sb, 15) == 16
  assert scoring.max_rows(48, sb, 15) < 16
  block = memory.rest_block_bytes(
      probe.config,
      4,
      prefix_bucket=48,
      kept_slots=layout.rest_row_sources(16, sb) * sb,
      tokens=16 * 16,
      row_length=16,
      model_axis=1,
  )
  roomy = _engine(
      batch_size=16, row_memory_bytes=budget + block, rest_packing=True, rest_row_length=16
  )
  assert roomy.max_rows(48, sb, 15) == 16


def probe_row_bytes(engine, suffix_bucket):
  return memory.row_bytes(
      engine.config,
      4,
      prefix_bucket=48,
      suffix_bucket=suffix_bucket,
      slots=layout.cache_length(suffix_bucket, engine.max_new_tokens),
      model_axis=1,
  )


def test_prefix_buckets_rule():
  assert buckets.prefix_buckets(None, (32, 64, 128)) == (0, 32, 64, 128)  # 0: no prefix region
  assert buckets.prefix_buckets((64,), (32, 64, 128)) == (64, 128)  # the largest is always one
  assert buckets.prefix_buckets((512, 64), (32, 64, 128)) == (64, 128)  # none past the largest
  assert buckets.prefix_buckets((0, 64), (32, 64, 128)) == (0, 64, 128)
  with pytest.raises(ValueError, match=">= 0"):
    buckets.prefix_buckets((-1, 64), (32, 64, 128))


def test_coarse_prefix_buckets_same_answers_fewer_programs():
  """Groups whose demonstrations pad to 48, 64 or 96 slots by default all pad to 128 with
  prefix_buckets=(128,): the same answers and log-probs (fp32; the extra prefix slots are
  masked), one prefix bucket in every program's key, fewer programs."""
  groups = [
      engine_tiny.group_prompts(seed=20 + k, n=6, prefix_len=n, suffix_range=(3, 20))
      for k, n in enumerate((40, 60, 90))
  ]
  conts = [[5, 6, 7], [8], [9, 10]] * 2
  coarse = _engine(batch_size=8, length_buckets=(32, 48, 64, 96, 128), prefix_buckets=(128,))
  fine = _engine(batch_size=8, length_buckets=(32, 48, 64, 96, 128))
  for prompts in groups:
    assert [r.ids for r in coarse.generate(prompts)] == [r.ids for r in fine.generate(prompts)]
    for g, w in zip(
        coarse.continuation_logprobs(prompts, conts), fine.continuation_logprobs(prompts, conts)
    ):
      np.testing.assert_allclose(g, w, atol=2e-5, rtol=0)
  assert {k[2] for k in coarse.programs.compiles if k[0] != "prefix"} == {128}
  assert {k[1] for k in coarse.programs.compiles if k[0] == "prefix"} == {128}
  assert len({k[2] for k in fine.programs.compiles if k[0] != "prefix"}) == 3
  assert coarse.compile_count < fine.compile_count


def test_fresh_continuations_pad_to_the_prefix_buckets():
  """Empty targets score their whole prompt afresh (context BOS, continuation the rest): their
  continuations pad to the prefix buckets but 0 (coarse where those are), as the prompts'
  demonstrations do. Log-probs as the fine engine's (float32 rounding), fewer score programs."""
  prompts = [
      p
      for k, n in enumerate((20, 40, 60))
      for p in engine_tiny.group_prompts(seed=40 + k, n=3, prefix_len=n, suffix_range=(3, 30))
  ]
  contexts, conts = [p[:1] for p in prompts], [p[1:] for p in prompts]
  coarse = _engine(batch_size=4, length_buckets=(32, 48, 64, 96, 128), prefix_buckets=(128,))
  fine = _engine(batch_size=4, length_buckets=(32, 48, 64, 96, 128))
  got, want = (e.continuation_logprobs(contexts, conts) for e in (coarse, fine))
  for g, w, c in zip(got, want, conts):
    assert len(g) == len(c)
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=0)
  cb = lambda e: {k[4] for k in e.programs.compiles if k[0] == "score"}
  assert cb(coarse) == {128} and len(cb(fine)) > 1
  assert buckets.fresh_continuation_buckets(buckets.prefix_buckets((512,), (64, 4096))) == (
      512,
      4096,
  )
  assert buckets.fresh_continuation_buckets(buckets.prefix_buckets(None, (32, 64))) == (32, 64)


def test_group_without_prefix_on_an_empty_prefix_region():
  """Without 0 among the prefix buckets, a group sharing no prefix (zero-shot's) runs on an empty
  region of the smallest prefix bucket, every slot masked: the same answers as with no region
  (fp32) and log-probs to float32 rounding, its programs keyed by that bucket (none by 0), and
  no prefix program run for it. Batches of several sizes and a fixed shape, as the sweep runs."""
  rng = np.random.default_rng(31)
  prompts = [
      [engine_tiny.BOS] + rng.integers(3, engine_tiny.VOCAB, int(n)).tolist()
      for n in rng.integers(4, 40, 11)
  ]
  conts = [[5, 6, 7], [8], [9, 10, 11, 12]] * 3 + [[4], [13, 14]]
  for kw in (dict(batch_size=4), dict(batch_size=8, batch_shapes="fixed")):
    empty = _engine(length_buckets=(32, 48, 64), prefix_buckets=(48,), **kw)
    none = _engine(length_buckets=(32, 48, 64), **kw)
    got, want = empty.generate(prompts), none.generate(prompts)
    assert [r.ids for r in got] == [r.ids for r in want]
    for g, w in zip(
        empty.continuation_logprobs(prompts, conts), none.continuation_logprobs(prompts, conts)
    ):
      np.testing.assert_allclose(g, w, atol=2e-5, rtol=0)
    keys = set(empty.programs.compiles)
    assert keys and not any(k[0] == "prefix" for k in keys)
    assert {k[2] for k in keys} == {48}
    assert {k[2] for k in none.programs.compiles} == {0}
