"""The runner's likelihood comparison scored off the generated prompts' kept KV equals the fresh
path's: SmolLM2 (the embedded GGUF, a real BPE tokenizer that merges prompt and target tokens at
the boundary) on the shipped sample, CounterFact and WikiFactDiff, every setup, a Latin and a CJK
language. Same rows (answers, EM, F1s), 1/PPL to float32 rounding, same results cells."""

from __future__ import annotations

import pytest

from bmike_jax import checkpoints, data, metrics
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import Engine
from bmike_jax.runner import evaluate

# (dataset, language, setup): every setup once, both likelihood datasets, two scripts.
UNITS = (
    ("counterfact", "de", "few_shot_mixed"),
    ("counterfact", "zh", "zero_shot"),
    ("wikifactdiff", "de", "one_shot"),
    ("wikifactdiff", "zh", "few_shot_specific"),
)
# The kept KV comes from the generate batch's shapes, the fresh one from the score batch's: float32
# sums in another order, through SmolLM2's 30 layers. The bound is the one the runner's tests
# allow any other program shape (tests/test_runner.assert_same_results: another per-device batch,
# unrolled layers); seen: ~1.3e-5 relative on 1/PPL (|mean log p| ~ 4).
REL = 1e-4
INV_PPL = ("inv_ppl_alt", "inv_ppl_loc_ans", "inv_ppl_old")


@pytest.fixture(scope="module")
def model():
  try:
    source = checkpoints.default_gguf_path()
  except checkpoints.CheckpointError as e:
    pytest.skip(str(e))
  config, params = checkpoints.load_model(source)
  return config, params, tokenizer_lib.load_tokenizer(source)


def _rows(engine, tokenizer):
  rows = []
  data_dir = data.default_data_dir()
  for dataset, lang, setup in UNITS:
    loaded = data.load_file(data_dir, dataset, lang, limit=2)
    pool = data.load_pool(data_dir, dataset)
    rows += evaluate.evaluate_unit(
        engine, tokenizer, loaded, pool, setup, data.QUERY_TYPES, likelihood=True
    )
  return rows


def test_runner_likelihoods_unchanged_by_scoring_off_the_kept_kv(model):
  config, params, tokenizer = model
  buckets = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
  kept = Engine(config, params, tokenizer, batch_size=8, length_buckets=buckets)
  fresh = Engine(
      config, params, tokenizer, batch_size=8, length_buckets=buckets, keep_prompt_kv=False
  )
  # A memory budget of one batch of 4 rows x 96 slots: each group (8 prompts, two batches of 4)
  # keeps its first batch only; the second batch's sequences are scored afresh (or off a kept
  # prompt sharing their tokens). Answers do not depend on the batch size (fp32).
  capped = Engine(config, params, tokenizer, batch_size=4, length_buckets=buckets)
  capped.kept_kv_bytes = 4 * 96 * capped._kv_slot_bytes  # pylint: disable=protected-access
  got, want = _rows(kept, tokenizer), _rows(fresh, tokenizer)
  print(f"kept: {kept.stats.as_dict()}\nfresh: {fresh.stats.as_dict()}")
  _assert_close_rows(_rows(capped, tokenizer), want)
  # what the bound costs: sequences of the batches not kept reuse less (another prompt's shared
  # tokens, or nothing), so more scoring tokens are computed
  assert capped.stats.scored_run_tokens > kept.stats.scored_run_tokens
  assert fresh.stats.scored_on_kept == 0
  # Every sequence but the empty-target ones (whose context is BOS alone) reuses a prompt's KV.
  assert kept.stats.scored_on_kept >= 0.9 * kept.stats.scored_sequences > 0
  assert kept.stats.scored_run_tokens < fresh.stats.scored_run_tokens
  _assert_close_rows(got, want)


def _assert_close_rows(got, want):
  assert len(got) == len(want)
  worst = 0.0
  for g, w in zip(got, want):
    assert {k: v for k, v in g.items() if k not in INV_PPL} == {
        k: v for k, v in w.items() if k not in INV_PPL
    }
    for key in INV_PPL:
      assert (g.get(key) is None) == (w.get(key) is None), key
      if w.get(key) is not None:
        worst = max(worst, abs(g[key] - w[key]) / abs(w[key]))
  print(f"1/PPL kept vs fresh: max relative difference {worst:.2e}")
  assert worst <= REL
  _assert_same_cells(got, want)


def _assert_same_cells(got_rows, want_rows):
  """results.json cells equal; a likelihood magnitude (x 100, the mean of 1/PPL(alt) -
  1/PPL(other)) within what REL on each 1/PPL allows: 100 * REL * (1/PPL(alt) + 1/PPL(other)) at
  most, a bound on the difference of two nearly equal numbers that a relative one is not."""
  got, want = metrics.aggregate_rows(got_rows), metrics.aggregate_rows(want_rows)
  checked = 0
  for row in want_rows:
    cell_got = got[row["dataset"]][row["setup"]][row["lang"]][row["query_type"]]
    cell_want = want[row["dataset"]][row["setup"]][row["lang"]][row["query_type"]]
    assert set(cell_got) == set(cell_want)
    for key, value in cell_want.items():
      other = key[len("lik_magnitude_") :] if key.startswith("lik_magnitude") else None
      if other is None or value is None:
        assert cell_got[key] == value, key
        continue
      rows = [
          r
          for r in want_rows
          if (r["dataset"], r["setup"], r["lang"], r["query_type"])
          == (row["dataset"], row["setup"], row["lang"], row["query_type"])
          and r.get(f"inv_ppl_{other}") is not None
      ]
      bound = 100 * REL * max(r["inv_ppl_alt"] + r[f"inv_ppl_{other}"] for r in rows)
      assert abs(cell_got[key] - value) <= bound, (key, cell_got[key], value, bound)
      checked += 1
  assert checked
