"""Record stems (sharing level 2, DESIGN.md): the prompts of a record share their `New Fact` line
after the group prefix; the engine runs that stem once per batch and each prompt's rest on it.
Answers equal the whole prompts' run one at a time (fp32), log-probs scored off the kept KV
equal the fresh path's to float32 rounding, and the plan only takes stems where they run fewer
token slots."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bmike_jax.engine import Engine, buckets, layout
from tests import engine_tiny

CONFIG = engine_tiny.tiny_config()
PARAMS = engine_tiny.tiny_params(CONFIG)
TOK = engine_tiny.FakeTokenizer()
PREFIX = 40
KEPT_TOL = 2e-5  # tests/test_engine_scoring.py's bound for another program shape


@pytest.fixture(scope="module")
def prompts():
  # 7 records x 4 queries; a third of the stems open with the same 3 "relation" tokens.
  return engine_tiny.record_prompts(seed=5, records=7, prefix_len=PREFIX)


@pytest.fixture(scope="module")
def baseline(prompts):
  engine = Engine(CONFIG, PARAMS, TOK, batch_size=1, prefix_reuse=False, stem_reuse=False)
  return [r.ids for r in engine.generate(prompts)]


def _stems_of(prompts):
  """The true stem length of each prompt's record (the longest common start of its 4 suffixes)."""
  out = []
  for r in range(0, len(prompts), 4):
    group = [p[PREFIX:] for p in prompts[r : r + 4]]
    out += [layout.common_prefix_length(group)] * 4
  return out


def test_stem_clusters_find_each_records_stem(prompts):
  suffixes = [p[PREFIX:] for p in prompts]
  clusters = layout.stem_clusters(suffixes, min_stem=4)
  assert sorted(i for members, _ in clusters for i in members) == list(range(len(prompts)))
  truth = _stems_of(prompts)
  for members, stem in clusters:
    # a record's 4 prompts, with their whole common start: not merged with the records that
    # share only the 3 relation tokens (fewer than min_stem), nor split
    assert sorted(members) == list(range(members[0] // 4 * 4, members[0] // 4 * 4 + 4))
    assert stem == truth[members[0]]
    assert all(len(suffixes[i]) > stem for i in members)


def test_stem_clusters_split_at_the_weakest_link():
  # a b share 10 tokens, c d share 10, and all four share 5: two stems of 10 save 2 x 10 tokens,
  # one of 5 for all four 3 x 5 = 15
  base = list(range(3, 8))
  a, b = base + [20] * 5 + [1], base + [20] * 5 + [2]
  c, d = base + [30] * 5 + [1], base + [30] * 5 + [2]
  got = sorted((sorted(m), s) for m, s in layout.stem_clusters([a, b, c, d], min_stem=4))
  assert got == [([0, 1], 10), ([2, 3], 10)]
  # with a third prompt on each side, one stem of 5 for all six saves 25 < 2 x 2 x 10: still split
  e = base + [20] * 5 + [3]
  got = sorted((sorted(m), s) for m, s in layout.stem_clusters([a, b, c, d, e], min_stem=4))
  assert got == [([0, 1, 4], 10), ([2, 3], 10)]
  # below min_stem: no stem at all
  assert all(s == 0 for _, s in layout.stem_clusters([a, c], min_stem=6))
  assert [s for _, s in layout.stem_clusters([a, c], min_stem=5)] == [5]


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=8),
        dict(batch_size=16),
        dict(batch_size=32),
        dict(batch_size=8, batch_shapes="fixed"),
        dict(batch_size=8, scan_layers=False),
        dict(batch_size=8, prefix_reuse=False),
        dict(batch_size=16, decode_halvings=0),
    ],
    ids=["b8", "b16", "b32", "b8-fixed", "b8-unrolled", "b8-no-prefix", "b16-no-shrink"],
)
def test_answers_identical_with_and_without_stems(prompts, baseline, kw):
  engine = Engine(CONFIG, PARAMS, TOK, stem_reuse=True, **kw)
  whole = Engine(CONFIG, PARAMS, TOK, **kw)  # the default: no stems
  assert [r.ids for r in engine.generate(prompts)] == baseline
  assert [r.ids for r in whole.generate(prompts)] == baseline
  assert any(k[0] == "generate_stemmed" for k in engine.programs.compiles)
  assert not any(k[0] == "generate_stemmed" for k in whole.programs.compiles)
  # the stems' repeats are not run: fewer tokens and fewer padded slots than the whole prompts
  got, ref = engine.stats, whole.stats
  assert got.stem_tokens > 0 and ref.stem_tokens == 0
  assert got.prompt_tokens == ref.prompt_tokens
  assert got.prefill_tokens < ref.prefill_tokens
  assert got.prefill_padded_tokens < ref.prefill_padded_tokens
  assert got.generated_tokens == ref.generated_tokens


def test_token_account_counts_each_stem_once(prompts):
  engine = Engine(CONFIG, PARAMS, TOK, batch_size=32, stem_reuse=True)  # a record per batch
  engine.generate(prompts)
  truth = _stems_of(prompts)
  suffix = sum(len(p) - PREFIX for p in prompts)
  stems = sum(truth[::4])
  assert engine.stats.stem_tokens == stems
  assert engine.stats.suffix_tokens == suffix - 3 * stems
  assert engine.stats.prefill_tokens == PREFIX + suffix - 3 * stems


@pytest.mark.parametrize("batch_shapes", ["buckets", "fixed"])
def test_scoring_off_stemmed_prompts(prompts, batch_shapes):
  """Sequences continuing the prompts are scored off the kept KV of stemmed batches (their
  prompt slots: stem then rest, moved together) as closely as afresh."""
  rng = np.random.default_rng(3)
  conts = [rng.integers(3, engine_tiny.VOCAB, 1 + k % 4).tolist() for k in range(len(prompts))]
  fresh = Engine(CONFIG, PARAMS, TOK, batch_size=8, keep_prompt_kv=False)
  fresh.generate(prompts)
  want = fresh.continuation_logprobs(prompts, conts)
  engine = Engine(CONFIG, PARAMS, TOK, batch_size=8, batch_shapes=batch_shapes, stem_reuse=True)
  engine.generate(prompts)
  assert any(k[0] == "generate_stemmed" for k in engine.programs.compiles)
  got = engine.continuation_logprobs(prompts, conts)
  assert engine.stats.scored_on_kept == len(prompts)
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
  assert worst <= KEPT_TOL, worst


def test_plan_takes_stems_only_where_they_run_fewer_slots(prompts):
  suffixes = [p[PREFIX:] for p in prompts]
  fine, coarse = (16, 24, 32, 48, 64), (64, 128)

  def settings(length_buckets, stem_buckets):
    built = layout.plan_settings(
        batch_size=8, batch_shapes="buckets", length_buckets=length_buckets, stem_reuse=True
    )
    assert built.batch_buckets == built.block_row_buckets == buckets.batch_buckets(8)
    return dataclasses.replace(built, stem_buckets=stem_buckets)

  for length_buckets, stem_buckets in ((fine, fine), (coarse, coarse), (coarse, fine)):
    plans = layout.plan_generate(suffixes, settings(length_buckets, stem_buckets))
    assert sorted(i for p in plans for i in p.rows) == list(range(len(prompts)))
    for plan in plans:
      whole = plan.batch * buckets.pick_bucket(
          max(len(suffixes[i]) for i in plan.rows), length_buckets
      )
      if plan.stem_rows:
        assert plan.padded_slots() < whole
        for i, k in zip(plan.rows, plan.row_stems):  # a row's stem is its own start
          src, n = plan.stems[k]
          assert k < 0 or suffixes[i][:n] == suffixes[src][:n]
        assert {plan.stem_bucket, plan.suffix_bucket} <= set(stem_buckets)
      else:
        assert plan.padded_slots() == whole
    # pieces padded to 64 slots: a ~20-token stem saves nothing; padded to the short buckets
    # (buckets.stem_buckets adds them to coarse length buckets) it does
    assert any(p.stem_rows for p in plans) == (stem_buckets == fine)
  assert buckets.stem_buckets(coarse) == (16, 32, 64, 128)
  # a memory bound that cannot hold the stemmed rows' longer prompt slots keeps them whole
  bounded = layout.plan_generate(
      suffixes, settings(fine, fine), max_rows=lambda sb, _: 8 if sb <= 48 else 4
  )
  for plan in bounded:
    assert plan.batch <= (8 if plan.prompt_slots <= 48 else 4)
