"""Engine host-side pieces: buckets, overlong policy, shared prefix, batch plans, answer cut."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bmike_jax.engine import buckets, layout
from bmike_jax.engine.answer import answer_text, cut_at_quote


def test_length_buckets_cover_up_to_max():
  b = buckets.default_length_buckets(1000)
  assert b[:6] == (32, 48, 64, 96, 128, 192)
  assert b[-1] == 1000 and list(b) == sorted(set(b))
  assert buckets.default_length_buckets(8192)[-1] == 8192
  assert buckets.default_length_buckets(300, smallest=8)[:4] == (8, 12, 16, 24)


def test_batch_buckets_and_pick():
  assert buckets.batch_buckets(8) == (1, 2, 4, 8)
  assert buckets.batch_buckets(12) == (1, 2, 4, 8, 12)
  assert buckets.batch_buckets(8, multiple_of=4) == (4, 8)
  assert buckets.pick_bucket(33, (32, 48, 64)) == 48
  assert buckets.pick_bucket(32, (32, 48, 64)) == 32
  with pytest.raises(ValueError):
    buckets.pick_bucket(65, (32, 48, 64))


def test_decode_phases_shrink_through_batch_buckets():
  assert buckets.decode_phases(16, (1, 2, 4, 8, 16), 2) == (16, 8, 4)
  assert buckets.decode_phases(32, (1, 2, 4, 8, 16, 32), 1) == (32, 16)
  assert buckets.decode_phases(12, (1, 2, 4, 8, 12), 2, min_batch=8) == (12, 8, 4)
  assert buckets.decode_phases(16, (4, 8, 16), 3) == (16, 8, 4)  # a data axis of 4: no 2, 1
  assert buckets.decode_phases(16, (1, 2, 4, 8, 16), 0) == (16,)
  assert buckets.decode_phases(8, (1, 2, 4, 8), 2) == (8,)  # under min_batch


def test_overlong_error_names_prompt_and_lengths():
  with pytest.raises(buckets.PromptTooLongError) as err:
    buckets.fit_prompt(list(range(70)), "zsre de #7", max_bucket=64, context=1000)
  msg = str(err.value)
  assert "zsre de #7" in msg and "70" in msg and "64" in msg
  with pytest.raises(buckets.PromptTooLongError) as err:
    buckets.fit_prompt(list(range(70)), "p", max_bucket=128, context=50)
  assert "50" in str(err.value) and "context" in str(err.value)


def test_overlong_truncate_left_is_logged_and_keeps_bos(caplog):
  ids = [1] + list(range(10, 79))  # 70 tokens
  with caplog.at_level(logging.WARNING):
    out = buckets.fit_prompt(
        ids, "p9", max_bucket=64, context=1000, overlong="truncate_left", keep_first=1
    )
  assert len(out) == 64 and out[0] == 1 and out[1:] == ids[-63:]
  assert "p9" in caplog.text and "70" in caplog.text
  assert buckets.fit_prompt(ids[:10], "short", max_bucket=64, context=1000) == ids[:10]
  with pytest.raises(ValueError):
    buckets.fit_prompt(ids, "p", max_bucket=64, context=1000, overlong="truncate")


def test_common_prefix_is_token_level_and_leaves_one_token():
  assert layout.common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
  assert layout.common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # shorter keeps 1 own token
  assert layout.common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
  assert layout.common_prefix_length([[7, 2], [1, 2]]) == 0
  assert layout.common_prefix_length([[5]]) == 0
  assert layout.common_prefix_length([]) == 0


def test_plan_group_reuse_threshold():
  prompts = [[1] * 40 + [2, 3], [1] * 40 + [4]]
  g = layout.plan_group(prompts, reuse=True, length_buckets=(32, 48, 64), min_prefix=16)
  assert g.prefix_length == 40 and g.prefix_bucket == 48 and g.prefix == tuple([1] * 40)
  assert layout.plan_group(prompts, reuse=False, length_buckets=(0, 32, 48)).prefix_bucket == 0
  short = layout.plan_group(prompts, reuse=True, length_buckets=(0, 32, 48), min_prefix=41)
  assert short.prefix_length == 0 and short.prefix_bucket == 0
  assert layout.plan_group(prompts[:1], reuse=True, length_buckets=(32, 48)).prefix_length == 0
  # Without 0 among the buckets, a group without a shared prefix takes an empty region of the
  # smallest; one with a prefix is unchanged.
  empty = layout.plan_group(prompts, reuse=False, length_buckets=(32, 48))
  assert empty.prefix_length == 0 and empty.prefix_bucket == 32
  assert layout.plan_group(prompts, reuse=True, length_buckets=(32, 48)).prefix_bucket == 48


def test_plan_batches_sorted_bucketed_and_complete():
  lengths = [5, 40, 33, 7, 1, 20, 60, 2, 9, 31, 17]
  plans = layout.plan_batches(
      lengths, batch_size=4, batch_buckets=(1, 2, 4), length_buckets=(32, 48, 64)
  )
  rows = [i for p in plans for i in p.rows]
  assert sorted(rows) == list(range(len(lengths)))
  assert [len(p.rows) for p in plans] == [4, 4, 3] and [p.batch for p in plans] == [4, 4, 4]
  assert [p.suffix_bucket for p in plans] == [64, 32, 32]
  for p in plans:
    assert max(lengths[i] for i in p.rows) <= p.suffix_bucket
  last = layout.plan_batches([3], batch_size=8, batch_buckets=(1, 2, 4, 8), length_buckets=(32,))
  assert last[0].batch == 1
  scored = layout.plan_batches(
      [3, 4],
      batch_size=8,
      batch_buckets=(1, 2),
      length_buckets=(32,),
      extra_lengths=[0, 9],
      extra_buckets=(8, 12, 16),
  )
  assert scored[0].extra_bucket == 12


def test_pad_rows_and_cache_length():
  tokens, lengths, active = layout.pad_rows([[5, 6, 7], [8]], 4, 8)
  assert tokens.shape == (4, 8) and tokens.dtype == np.int32
  assert tokens[0, :3].tolist() == [5, 6, 7] and tokens[0, 3:].sum() == 0
  assert lengths.tolist() == [3, 1, 1, 1] and active.tolist() == [True, True, False, False]
  _, lengths, _ = layout.pad_rows([[], [1]], 3, 8, min_length=0)
  assert lengths.tolist() == [0, 1, 0]
  assert layout.cache_length(48, 15) == 64 and layout.cache_length(32, 15) == 48


class _Tok:

  def decode(self, ids):
    return "".join({3: "Ber", 4: "lin", 5: '" ', 6: "x"}[i] for i in ids)


def test_answer_cut_at_first_quote_kept_as_is():
  assert cut_at_quote(' Berlin" and "x') == " Berlin"
  assert cut_at_quote("no quote ") == "no quote "
  assert cut_at_quote('"') == ""
  assert answer_text(_Tok(), [3, 4, 5, 6]) == "Berlin"
  assert answer_text(_Tok(), [3, 6]) == "Berx"


def test_kept_prompts_match_is_the_longest_common_prefix():
  """The bisection finds a prompt sharing as many leading tokens as any (brute force)."""
  rng = np.random.default_rng(5)
  prompts = [[1] + rng.integers(3, 6, int(rng.integers(1, 12))).tolist() for _ in range(40)]
  places = [(i // 8, i % 8) for i in range(len(prompts))]
  kept = layout.KeptPrompts.build(prompts, places)
  for _ in range(200):
    seq = [1] + rng.integers(3, 6, int(rng.integers(1, 14))).tolist()
    j, row, shared = kept.match(seq)
    best = max(layout.longest_common_prefix(p, seq) for p in prompts)
    assert shared == best
    assert layout.longest_common_prefix(prompts[places.index((j, row))], seq) == shared


def test_plan_kept_scoring_routes_and_cuts():
  prefix = [1, 9, 9, 9]
  prompts = [prefix + [5, 6, 7], prefix + [5, 8], prefix + [4]]
  kept = layout.KeptPrompts.build(prompts, [(0, 0), (0, 1), (1, 0)])
  contexts = [
      prompts[0],  # the prompt whole: reuses all but its last token
      prefix + [5, 6, 3],  # its last token merged with the target's first
      prefix[:2] + [7],  # leaves the prompts inside their shared prefix: fresh
      prompts[2],  # with 20 continuation tokens
      prompts[1],  # an empty continuation: fresh
  ]
  conts = [[11, 12], [13], [14], [15] * 20, []]
  plans, fresh = layout.plan_kept_scoring(
      contexts, conts, kept=kept, prefix_length=4, batches=[2, 1], rest_buckets=(8, 16)
  )
  assert fresh == [2, 3, 4]  # 3: its 20 tokens after start are more than the largest bucket
  assert [p.indices for p in plans] == [(0, 1)]
  plan = plans[0]
  assert plan.source_rows == (0, 0) and plan.reused == (2, 2) and plan.rest_bucket == 8
  assert plan.tokens == ((7, 11), (3,)) and plan.targets == ((11, 12), (13,))


def test_scoring_calls_off_a_large_kept_batch_take_about_a_token_budget():
  """A kept batch of 256 rows scores short rests in calls of SCORING_TOKENS_PER_CALL / Rb rows
  (not 256), a longer rest in a call of its own bucket with fewer rows."""
  prefix = [1, 9, 9, 9]
  prompts = [prefix + [5, 100 + i] for i in range(300)]
  kept = layout.KeptPrompts.build(prompts, [(i // 256, i % 256) for i in range(300)])
  conts = [[7] * (40 if i == 0 else 3) for i in range(300)]
  plans, fresh = layout.plan_kept_scoring(
      prompts, conts, kept=kept, prefix_length=4, batches=[256, 64], rest_buckets=(16, 32, 64)
  )
  assert fresh == []
  per_call = buckets.SCORING_TOKENS_PER_CALL
  got = [(p.source_batch, p.batch, p.kept_batch, p.rest_bucket, len(p.indices)) for p in plans]
  assert got == [
      (0, per_call // 64, 256, 64, per_call // 64),  # the 40-token rest leads: bucket 64
      (0, per_call // 16, 256, 16, per_call // 16),
      (0, per_call // 16, 256, 16, 256 - per_call // 64 - per_call // 16),
      (1, 64, 64, 16, 44),  # at most the kept batch's rows
  ]
  assert sorted(i for p in plans for i in p.indices) == list(range(300))
  assert buckets.scoring_rows(256, 16, multiple_of=3) % 3 == 0


@pytest.mark.parametrize("row_length, slots", [(8, 32), (32, 32), (32, 256), (64, 512)])
def test_plan_scoring_packs_rests_into_rows(row_length, slots):
  """Rests of at most Rb tokens are packed back to back: a kept row's rests into pieces of at most
  Rb tokens, pieces into rows, at most K = min(Rb / 16, 512 / Sb) pieces (kept rows attended) a
  row, every rest once, no overlap; longer rests go one a row (plan_kept_scoring's calls) and the
  rest of the routing is plan_kept_scoring's."""
  prefix = [1, 9, 9, 9]
  prompts = [prefix + [5, 100 + i] for i in range(40)]
  places = [(i // 32, i % 32) for i in range(40)]
  kept = layout.KeptPrompts.build(prompts, places)
  rng = np.random.default_rng(0)
  contexts, conts = [], []
  for i, p in enumerate(prompts):  # three sequences a prompt (alt, loc_ans, old), 1-7 tokens
    for _ in range(3):
      contexts.append(p)
      conts.append([7] * int(rng.integers(1, 8)))
  contexts += [prompts[3], prefix[:2] + [7], prompts[5]]
  conts += [[8] * 40, [9], []]  # a rest longer than Rb; one leaving the prefix; an empty one
  packed, calls, fresh = layout.plan_scoring(
      contexts,
      conts,
      kept=kept,
      prefix_length=4,
      batches=[32, 8],
      rest_buckets=(16, 32, 64),
      rest_row_length=row_length,
      slots=[slots, slots],
      multiple_of=2,
  )
  k = layout.rest_row_sources(row_length, slots)
  assert k == max(1, min(row_length // 16, 512 // slots))
  assert fresh == [121, 122]
  long = row_length < 40  # the 40-token rest: one a row, or packed where it fits
  assert [c.indices for c in calls] == ([(120,)] if long else [])
  assert all(c.rest_bucket == 64 for c in calls)
  assert sorted(x.index for rp in packed for x in rp.rests) == list(range(120 if long else 121))
  for rp in packed:
    r, nb = layout.rest_blocks(rp.kept_batch, row_length, k, 2)
    assert (rp.block_rows, rp.blocks, rp.row_length, rp.sources_per_row) == (r, nb, row_length, k)
    assert r % 2 == 0 and r * nb <= rp.kept_batch and len(rp.row_sources) <= r * nb
    used = {}
    for x, (g, first, source) in zip(rp.rests, rp.places):
      assert 1 <= len(rp.row_sources[g]) <= k
      j, row = places[x.index // 3 if x.index < 120 else 3]  # 120: prompts[3]
      assert (rp.source_batch, rp.row_sources[g][source]) == (j, row)  # the row it continues
      assert first + len(x.tokens) <= row_length
      taken = used.setdefault(g, set())
      span = set(range(first, first + len(x.tokens)))
      assert not taken & span
      taken |= span
      # the prompt's last token on (it predicts the first scored one)
      prompt = x.index // 3 if x.index < 120 else 3
      assert x.tokens == (100 + prompt,) + (7 if x.index < 120 else 8,) * (len(conts[x.index]) - 1)
    assert sorted(used) == list(range(len(rp.row_sources)))  # no empty row
  rows = sum(len(rp.row_sources) for rp in packed)
  # several rests a row: fewer rows than rests; with K > 1 fewer than prompts
  assert rows < (120 if k == 1 else 40)
  # off: plan_kept_scoring's calls alone, one rest a row padded to its bucket: more slots
  off = layout.plan_scoring(
      contexts, conts, kept=kept, prefix_length=4, batches=[32, 8], rest_buckets=(16, 32, 64)
  )
  want = layout.plan_kept_scoring(
      contexts, conts, kept=kept, prefix_length=4, batches=[32, 8], rest_buckets=(16, 32, 64)
  )
  assert off == ([], *want)
  one_a_row = sum(c.batch * c.rest_bucket for c in want[0] if c.rest_bucket < 64)
  if k > 1 or row_length <= 16:  # (one prompt's ~12 tokens in a row of 64 pad more than 16)
    assert sum(rp.padded_slots() for rp in packed) < one_a_row


def _trie_size(seqs) -> int:
  """The nodes of the sequences' token trie, built as nested dicts (an independent count)."""
  root, nodes = {}, 0
  for seq in seqs:
    node = root
    for t in seq:
      if t not in node:
        node[t] = {}
        nodes += 1
      node = node[t]
  return nodes


def test_prefix_tree_tokens_is_the_size_of_the_token_trie():
  rng = np.random.default_rng(0)
  stem = list(rng.integers(0, 50, 20))
  for _ in range(20):
    seqs = [
        stem[: int(rng.integers(0, 21))] + list(rng.integers(0, 4, int(rng.integers(1, 12))))
        for _ in range(int(rng.integers(1, 30)))
    ]
    seqs.append(list(seqs[0]))  # an identical prompt counts once
    assert layout.prefix_tree_tokens(seqs) == _trie_size(seqs)
  assert layout.prefix_tree_tokens([]) == 0
