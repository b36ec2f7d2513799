"""Packed suffix rows (DESIGN.md "Packed suffix rows"): a batch's suffixes are prefilled back to
back in rows of T tokens, each segment attending the shared prefix and itself only, then each
one's KV is gathered into its own decode row. Answers equal the whole prompts run one at a time
(fp32), log-probs scored off the kept KV of packed batches equal the fresh path's to float32
rounding, and the plan packs only where it runs fewer token slots."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax.editing import delta as delta_lib
from bmike_jax.engine import Engine, buckets, layout
from tests import engine_tiny

CONFIG = engine_tiny.tiny_config()
PARAMS = engine_tiny.tiny_params(CONFIG)
TOK = engine_tiny.FakeTokenizer()
PREFIX = 40
COARSE = (64, 128)  # coarse buckets, as configs/8b.flags': ~5-45-token suffixes pad to 64
KEPT_TOL = 2e-5  # tests/test_engine_scoring.py's bound for another program shape


@pytest.fixture(scope="module")
def prompts():
  return engine_tiny.record_prompts(seed=5, records=7, prefix_len=PREFIX)


@pytest.fixture(scope="module")
def baseline(prompts):
  engine = Engine(CONFIG, PARAMS, TOK, batch_size=1, prefix_reuse=False)
  return [r.ids for r in engine.generate(prompts)]


def _packed_programs(engine) -> int:
  return sum(k[0] == "generate_packed" for k in engine.programs.compiles)


def test_pack_segments_first_fit():
  lengths = [50, 40, 30, 30, 20, 10, 5]
  segments = layout.pack_segments(lengths, 64)
  # every segment inside its row, none overlapping another of its row
  taken: dict[int, set] = {}
  for n, (r, first) in zip(lengths, segments):
    assert 0 <= first and first + n <= 64
    cells = set(range(first, first + n))
    assert not cells & taken.setdefault(r, set())
    taken[r] |= cells
  # first fit: a segment opens a new row only when no earlier row has room for it
  for k, (n, (r, _)) in enumerate(zip(lengths, segments)):
    used = {q: 0 for q in range(r)}
    for m, (q, _) in zip(lengths[:k], segments[:k]):
      if q < r:
        used[q] += m
    assert all(u + n > 64 for u in used.values())
  assert max(r for r, _ in segments) + 1 < len(lengths)  # some row holds several segments
  with pytest.raises(ValueError, match="does not fit"):
    layout.pack_segments([65], 64)


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=8),
        dict(batch_size=16),
        dict(batch_size=8, batch_shapes="fixed"),
        dict(batch_size=8, scan_layers=False),
        dict(batch_size=8, prefix_reuse=False),
        dict(batch_size=16, decode_halvings=0),
        dict(batch_size=16, packed_length=64),
    ],
    ids=["b8", "b16", "b8-fixed", "b8-unrolled", "b8-no-prefix", "b16-no-shrink", "b16-t64"],
)
def test_answers_identical_with_and_without_packing(prompts, baseline, kw):
  kw.setdefault("packed_length", 128)
  engine = Engine(CONFIG, PARAMS, TOK, length_buckets=COARSE, suffix_packing=True, **kw)
  whole = Engine(CONFIG, PARAMS, TOK, length_buckets=COARSE, **kw)  # the default: padded rows
  assert [r.ids for r in engine.generate(prompts)] == baseline
  assert [r.ids for r in whole.generate(prompts)] == baseline
  assert _packed_programs(engine) > 0 and _packed_programs(whole) == 0
  got, ref = engine.stats, whole.stats
  assert got.prefill_tokens == ref.prefill_tokens  # the same tokens, in fewer slots
  assert got.prefill_padded_tokens < ref.prefill_padded_tokens
  assert got.generated_tokens == ref.generated_tokens


@pytest.mark.parametrize("batch_shapes", ["buckets", "fixed"])
def test_scoring_off_packed_prompts(prompts, batch_shapes):
  """Sequences continuing the prompts are scored off the kept KV of packed batches (each
  prompt's slots gathered out of its packed row) as closely as afresh."""
  rng = np.random.default_rng(3)
  conts = [rng.integers(3, engine_tiny.VOCAB, 1 + k % 4).tolist() for k in range(len(prompts))]
  fresh = Engine(CONFIG, PARAMS, TOK, batch_size=8, keep_prompt_kv=False)
  fresh.generate(prompts)
  want = fresh.continuation_logprobs(prompts, conts)
  engine = Engine(
      CONFIG,
      PARAMS,
      TOK,
      batch_size=8,
      batch_shapes=batch_shapes,
      length_buckets=COARSE,
      suffix_packing=True,
      packed_length=128,
  )
  engine.generate(prompts)
  assert _packed_programs(engine) > 0
  got = engine.continuation_logprobs(prompts, conts)
  assert engine.stats.scored_on_kept == len(prompts)
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
  assert worst <= KEPT_TOL, worst


def test_plan_packs_only_where_it_runs_fewer_slots(prompts):
  suffixes = [p[PREFIX:] for p in prompts]
  for length_buckets, packed_length, prefix_bucket in (
      (COARSE, 128, 0),
      (COARSE, 128, 64),
      ((16, 24, 32, 48, 64), 64, 64),
      (COARSE, 32, 0),  # T is at least the batch's suffix bucket
  ):
    settings = layout.plan_settings(
        batch_size=8,
        batch_shapes="buckets",
        length_buckets=length_buckets,
        suffix_packing=True,
        packed_length=packed_length,
    )
    plans = layout.plan_generate(suffixes, settings, prefix_bucket=prefix_bucket)
    unpacked = layout.plan_generate(
        suffixes,
        layout.plan_settings(batch_size=8, batch_shapes="buckets", length_buckets=length_buckets),
    )
    assert [p.rows for p in plans] == [p.rows for p in unpacked]  # packing keeps the batches
    for plan, whole in zip(plans, unpacked):
      assert (plan.batch, plan.suffix_bucket) == (whole.batch, whole.suffix_bucket)
      if not plan.packed_rows:
        assert plan == whole
        continue
      t, b, sb, pb = plan.packed_length, plan.batch, plan.suffix_bucket, prefix_bucket
      assert t == max(packed_length, sb)
      assert plan.padded_slots() == plan.packed_rows * t < b * sb
      assert plan.packed_rows * t * (pb + t) <= b * sb * (pb + sb)
      assert plan.packed_rows in settings.packed_row_buckets
      ends = {}
      for i, (r, first) in zip(plan.rows, plan.segments):
        assert r < plan.packed_rows and first + len(suffixes[i]) <= t
        ends.setdefault(r, []).append((first, first + len(suffixes[i])))
      for spans in ends.values():  # segments of a row do not overlap
        spans.sort()
        assert all(a[1] <= b_[0] for a, b_ in zip(spans, spans[1:]))
    if length_buckets == COARSE and packed_length == 128:
      assert any(p.packed_rows for p in plans)
  assert buckets.packed_row_buckets(16, multiple_of=2) == (2, 4, 6, 8, 12, 16)


def test_edited_calls_do_not_pack():
  """Rows asked on per-row weight deltas run padded (their prefill takes each row's delta), with
  the same answers as an engine without packing."""
  prompts = engine_tiny.group_prompts(seed=15, n=10, prefix_len=6, suffix_range=(1, 12))
  tables = delta_lib.row_tables(engine_tiny.random_deltas(CONFIG, 3, seed=4), CONFIG.num_layers)
  edits = [k % 3 for k in range(len(prompts))]
  runs = []
  for packing in (True, False):
    engine = Engine(
        CONFIG, PARAMS, TOK, batch_size=8, length_buckets=COARSE, suffix_packing=packing
    )
    runs.append([r.ids for r in engine.generate(prompts, tables=tables, prompt_edits=edits)])
    assert _packed_programs(engine) == 0
  assert runs[0] == runs[1]
