"""Packed suffix rows (DESIGN.md "Packed suffix rows"): a batch's suffixes are prefilled back to
back in rows of T tokens, R rows at a time in a loop over the blocks they fill, each segment
attending the shared prefix and itself only, then each one's KV is gathered into its own decode
row. Answers equal the whole prompts run one at a time (fp32), log-probs scored off the kept KV
of packed batches equal the fresh path's to float32 rounding, and the plan gives one block shape
per batch shape."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax.editing import delta as delta_lib
from bmike_jax.engine import Engine, layout
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
        dict(batch_size=16, packed_length=64, packed_rows=4),
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
  assert got.prefill_tokens == ref.prefill_tokens  # the same tokens, in no more slots
  assert got.prefill_padded_tokens <= ref.prefill_padded_tokens
  if kw.get("prefix_reuse", True):  # ~10-50-token suffixes pad to 64: packed, fewer slots
    assert got.prefill_padded_tokens < ref.prefill_padded_tokens
  # one program per batch shape, as without packing
  assert {k[1:3] + k[-1:] for k in engine.programs.compiles if k[0] == "generate_packed"} == {
      k[1:] for k in whole.programs.compiles if k[0] == "generate"
  }
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


def test_plan_packs_each_batch_in_blocks(prompts):
  suffixes = [p[PREFIX:] for p in prompts]
  for length_buckets, packed_length, packed_rows, prefix_bucket, data_axis in (
      (COARSE, 128, 2, 0, 1),
      (COARSE, 128, 2, 64, 2),
      ((16, 24, 32, 48, 64), 64, 4, 64, 1),
      (COARSE, 32, 2, 0, 1),  # T is at least the batch's suffix bucket
  ):
    settings = layout.plan_settings(
        batch_size=8,
        batch_shapes="buckets",
        length_buckets=length_buckets,
        data_axis=data_axis,
        suffix_packing=True,
        packed_length=packed_length,
        packed_rows=packed_rows,
    )
    plans = layout.plan_generate(suffixes, settings, prefix_bucket=prefix_bucket)
    unpacked = layout.plan_generate(
        suffixes,
        layout.plan_settings(
            batch_size=8, batch_shapes="buckets", length_buckets=length_buckets, data_axis=data_axis
        ),
    )
    assert [p.rows for p in plans] == [p.rows for p in unpacked]  # packing keeps the batches
    shapes = {}
    for plan, whole in zip(plans, unpacked):
      assert (plan.batch, plan.suffix_bucket) == (whole.batch, whole.suffix_bucket)
      t, r, b, sb, pb = (
          plan.packed_length,
          plan.packed_rows,
          plan.batch,
          plan.suffix_bucket,
          prefix_bucket,
      )
      if not plan.packed_rows:  # no block fits the bounds below: padded rows
        assert plan == whole and layout.packed_block(b, sb, pb, settings, 8) is None
        continue
      assert sb <= t <= max(sb, min(packed_length, b * sb))
      assert r % data_axis == 0 and r <= max(packed_rows, data_axis)
      assert r * t <= b * sb  # a block runs no more slots than the padded batch
      # nor attention scores beyond those the memory estimate allows a batch of this shape
      assert r * t * (pb + t) <= settings.batch_size * sb * (pb + sb)
      # one program per (B, Sb): the block shape follows from them
      assert shapes.setdefault((b, sb), (r, t)) == (r, t)
      rows_used = set()
      ends = {}
      for i, (row, first) in zip(plan.rows, plan.segments):
        assert first + len(suffixes[i]) <= t
        rows_used.add(row)
        ends.setdefault(row, []).append((first, first + len(suffixes[i])))
      assert plan.packed_blocks == -(-(max(rows_used) + 1) // r)
      assert max(rows_used) < layout.packed_row_count(b, r)
      assert plan.padded_slots() == plan.packed_blocks * r * t
      for spans in ends.values():  # segments of a row do not overlap
        spans.sort()
        assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
    if length_buckets == COARSE and packed_length == 128:
      assert sum(p.padded_slots() for p in plans) < sum(p.padded_slots() for p in unpacked)


@pytest.mark.parametrize(
    "b, sb, pb, data_axis, cap",
    [
        (8, 64, 64, 1, None),
        (8, 64, 64, 1, 16),
        (2, 64, 64, 2, None),
        (8, 64, 64, 8, None),
        (256, 64, 512, 1, None),
        (1, 32, 0, 1, None),
        (16, 64, 0, 4, 16),
    ],
)
def test_packed_block_stays_within_the_padded_batch(b, sb, pb, data_axis, cap):
  settings = layout.plan_settings(
      batch_size=max(b, data_axis),
      batch_shapes="buckets",
      length_buckets=(32, 64, 128),
      data_axis=data_axis,
      suffix_packing=True,
  )
  shape = layout.packed_block(b, sb, pb, settings, cap)
  if shape is None:  # only where even rows of Sb tokens, a data-axis multiple of them, do not fit
    assert data_axis * sb > b * sb
    return
  r, t = shape
  assert r % data_axis == 0 and t >= sb
  # no more slots than the padded batch, no larger scores than the memory estimate allows
  assert r * t <= b * sb and r * t * (pb + t) <= max(b, cap or b) * sb * (pb + sb)
  if b * sb >= 2 * settings.packed_length and pb == 0:  # room for long rows: they are taken
    assert t > sb


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


# Record stems as segments (suffix_packing + stem_reuse) --------------------------------------


def _stem_truth(prompts):
  """Each prompt's record stem length: the longest common start of its record's 4 suffixes."""
  out = []
  for r in range(0, len(prompts), 4):
    out += [layout.common_prefix_length([p[PREFIX:] for p in prompts[r : r + 4]])] * 4
  return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=8),
        dict(batch_size=32, batch_shapes="fixed"),
        dict(batch_size=8, scan_layers=False),
        dict(batch_size=8, prefix_reuse=False),
        dict(batch_size=16, packed_length=64),  # some records' stem + rests pass 64: cut
    ],
    ids=["b8", "b32-fixed", "b8-unrolled", "b8-no-prefix", "b16-t64"],
)
def test_answers_identical_with_stems_as_segments(prompts, baseline, kw):
  """A record's stem runs once in its packed row, its prompts' rests after it attending it:
  the same answers as the whole prompts one at a time, fewer tokens than packing without stems,
  and the same programs (no stem rows, no program more)."""
  kw.setdefault("packed_length", 128)
  stems = Engine(
      CONFIG, PARAMS, TOK, length_buckets=COARSE, suffix_packing=True, stem_reuse=True, **kw
  )
  plain = Engine(CONFIG, PARAMS, TOK, length_buckets=COARSE, suffix_packing=True, **kw)
  assert [r.ids for r in stems.generate(prompts)] == baseline
  assert [r.ids for r in plain.generate(prompts)] == baseline
  assert set(stems.programs.compiles) == set(plain.programs.compiles)
  assert all(k[0] in ("prefix", "generate_packed") for k in stems.programs.compiles)
  got, ref = stems.stats, plain.stats
  assert got.stem_tokens > 0 and ref.stem_tokens == 0
  assert got.prompt_tokens == ref.prompt_tokens
  assert got.prefill_tokens < ref.prefill_tokens
  assert got.prefill_padded_tokens <= ref.prefill_padded_tokens
  assert got.generated_tokens == ref.generated_tokens


def test_stem_segments_token_account(prompts):
  """One batch, rows of 512 tokens: each record's stem is run exactly once."""
  engine = Engine(
      CONFIG,
      PARAMS,
      TOK,
      batch_size=32,
      length_buckets=COARSE,
      suffix_packing=True,
      packed_length=512,
      stem_reuse=True,
  )
  engine.generate(prompts)
  truth = _stem_truth(prompts)
  suffix = sum(len(p) - PREFIX for p in prompts)
  assert engine.stats.stem_tokens == sum(truth[::4])
  assert engine.stats.suffix_tokens == suffix - 3 * sum(truth[::4])
  assert engine.stats.prefill_tokens == PREFIX + engine.stats.suffix_tokens


@pytest.mark.parametrize("batch_shapes", ["buckets", "fixed"])
def test_scoring_off_prompts_packed_with_stems(prompts, batch_shapes):
  """A prompt's kept KV gathered from its stem's and its rest's packed slots: sequences
  continuing it score as closely as afresh."""
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
      stem_reuse=True,
  )
  engine.generate(prompts)
  assert engine.stats.stem_tokens > 0
  got = engine.continuation_logprobs(prompts, conts)
  assert engine.stats.scored_on_kept == len(prompts)
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
  assert worst <= KEPT_TOL, worst


@pytest.mark.parametrize("packed_length, batch_size", [(128, 8), (64, 16), (512, 32), (48, 8)])
def test_plan_lays_each_stem_before_its_rests(prompts, packed_length, batch_size):
  suffixes = [p[PREFIX:] for p in prompts]
  settings = layout.plan_settings(
      batch_size=batch_size,
      batch_shapes="buckets",
      length_buckets=(16, 32, 48, 64, 128),
      suffix_packing=True,
      packed_length=packed_length,
      stem_reuse=True,
  )
  plans = layout.plan_generate(suffixes, settings, prefix_bucket=64)
  assert sorted(i for p in plans for i in p.rows) == list(range(len(prompts)))
  cuts = 0
  for plan in plans:
    assert not plan.stem_rows  # stems are segments of the packed rows, no stem rows
    if not plan.packed_rows:  # no block fits: padded whole rows, no stems
      assert not plan.stems and not plan.row_stems
      continue
    t = plan.packed_length
    spans: dict[int, list] = {}
    for k, ((src, n), (g, first)) in enumerate(zip(plan.stems, plan.stem_segments)):
      spans.setdefault(g, []).append((first, first + n))
      sharing = [i for i, s in zip(plan.rows, plan.row_stems) if s == k]
      assert len(sharing) >= 2  # a stem of one row is its whole suffix, not a stem
      for i in sharing:
        assert suffixes[i][:n] == suffixes[src][:n] and len(suffixes[i]) > n
    cuts += len(plan.stems) - len({src // 4 for src, _ in plan.stems})
    for b, (i, (g, first)) in enumerate(zip(plan.rows, plan.segments)):
      k = plan.row_stems[b] if plan.row_stems else -1
      n = plan.stems[k][1] if k >= 0 else 0
      if k >= 0:  # its stem in the same packed row, before its rest
        g0, first0 = plan.stem_segments[k]
        assert g0 == g and first0 + n <= first
      spans.setdefault(g, []).append((first, first + len(suffixes[i]) - n))
    for row in spans.values():  # every segment inside its row, none overlapping another
      row.sort()
      assert row[0][0] >= 0 and row[-1][1] <= t
      assert all(x[1] <= y[0] for x, y in zip(row, row[1:]))
    run = sum(len(suffixes[i]) for i in plan.rows) - plan.stem_tokens_saved()
    assert run == sum(b - a for row in spans.values() for a, b in row)
  assert sum(p.stem_tokens_saved() for p in plans) > 0
  if packed_length == 48:  # a record's stem and 4 rests (up to ~110 tokens) are cut into pieces
    assert cuts > 0
