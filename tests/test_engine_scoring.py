"""Engine vs HF torch (fp32) on a tiny random HF Llama: continuation log-probs within 1e-4 and
identical greedy ids, with and without prefix reuse."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bmike_jax import checkpoints  # noqa: E402
from tools import reference_hf  # noqa: E402
from bmike_jax.engine import Engine, buckets  # noqa: E402
from tests import engine_tiny, hf_tiny  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  hf = hf_tiny.make_hf_model("gqa", seed=5, vocab_size=engine_tiny.VOCAB)
  path = hf_tiny.save_hf(hf, str(tmp_path_factory.mktemp("engine_scoring") / "gqa"))
  config, params = checkpoints.load_model(path)
  return hf, config, params


@pytest.fixture(scope="module")
def cases():
  prompts = engine_tiny.group_prompts(seed=7, n=10, prefix_len=50, suffix_range=(1, 30))
  rng = np.random.default_rng(8)
  lengths = [0, 1, 2, 5, 70, 3, 7, 1, 12, 4]  # 70: two continuation chunks (scoring.CHUNK)
  conts = [rng.integers(3, engine_tiny.VOCAB, n).tolist() for n in lengths]
  return prompts, conts


@pytest.mark.parametrize("batch_size,reuse", [(8, True), (3, False), (32, True)])
def test_continuation_logprobs_match_hf(models, cases, batch_size, reuse):
  hf, config, params = models
  prompts, conts = cases
  engine = Engine(
      config, params, engine_tiny.FakeTokenizer(), batch_size=batch_size, prefix_reuse=reuse
  )
  ours = engine.continuation_logprobs(prompts, conts)
  worst = 0.0
  for p, c, got in zip(prompts, conts, ours):
    ref = reference_hf.reference_logprobs(hf, p, c)
    assert got.shape == (len(c),) and got.dtype == np.float32
    if len(c):
      worst = max(worst, float(np.max(np.abs(got - ref))))
  print(f"batch {batch_size} reuse {reuse}: max |log p - HF| = {worst:.2e}")
  assert worst < TOL
  assert engine.stats.scored_sequences == len(prompts)


def test_greedy_ids_match_hf_generate(models):
  hf, config, params = models
  prompts = engine_tiny.group_prompts(seed=9, n=6, prefix_len=30, suffix_range=(1, 20))
  # No quote tokens: compare the raw 15-token greedy continuation with HF's (EOS ends both).
  tok = engine_tiny.FakeTokenizer()
  tok.quote_token_mask = lambda: np.zeros((engine_tiny.VOCAB,), bool)
  ours = Engine(config, params, tok, batch_size=4).generate(prompts)
  for p, r in zip(prompts, ours):
    ref = reference_hf.reference_generate_ids(hf, p, 15)
    if engine_tiny.EOS in ref:
      ref = ref[: ref.index(engine_tiny.EOS)]
    assert list(r.ids) == ref


# Scored off the generated prompts' kept KV, a sequence's shared tokens come from the generate
# batch's [B, Sb] pass, in the fresh path from the score batch's: the same float32 arithmetic in
# another summation order (XLA's dot blocking follows the shapes), so log-probs agree to float32
# rounding, not bit for bit: ~5e-7 seen on |log p| ~ 5, the bound leaves 20x of room.
KEPT_TOL = 1e-5


def _joint_cases(prompts, seed):
  """(context, continuation) pairs as the reference's joint tokenization gives them for a prompt
  and a target: the prompt whole then the target's tokens, or the prompt's last one or two tokens
  merged with the target's start (replaced by other tokens), so that the sequence shares fewer
  tokens with its prompt than the prompt has."""
  rng = np.random.default_rng(seed)
  contexts, conts = [], []
  for k, p in enumerate(prompts):
    cut = k % 3
    contexts.append(list(p[: len(p) - cut]) + rng.integers(3, engine_tiny.VOCAB, cut).tolist())
    conts.append(rng.integers(3, engine_tiny.VOCAB, 1 + k % 5).tolist())
  return contexts, conts


@pytest.mark.parametrize("batch_shapes", ["buckets", "fixed"])
def test_scoring_after_generation_reuses_the_prompt_kv(models, cases, batch_shapes):
  """After `generate`, each scored sequence reuses its prompt's kept KV (the group prefix is not
  computed again, fewer tokens run) and its log-probs equal the fresh path's to float32 rounding
  (KEPT_TOL) and HF's within TOL; without keep_prompt_kv they equal the fresh path bit for bit."""
  hf, config, params = models
  prompts, _ = cases
  contexts, conts = _joint_cases(prompts, seed=3)
  contexts.append(prompts[0][:20] + [7, 8, 9])  # leaves the prompts inside their shared prefix
  conts.append([10, 11])
  contexts.append(
      list(prompts[1])
  )  # a rest past the first rest bucket (buckets.CONTINUATION_BUCKET)
  conts.append(np.random.default_rng(4).integers(3, engine_tiny.VOCAB, 40).tolist())
  fresh = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=8)
  want = fresh.continuation_logprobs(contexts, conts)
  assert fresh.stats.scored_on_kept == 0
  engine = Engine(
      config, params, engine_tiny.FakeTokenizer(), batch_size=8, batch_shapes=batch_shapes
  )
  engine.generate(prompts)
  prefill_after_generate = engine.stats.prefill_tokens
  got = engine.continuation_logprobs(contexts, conts)
  assert engine.stats.prefill_tokens == prefill_after_generate  # no prefix computed again
  # The sequence that leaves the prompts inside their shared prefix is scored afresh; all others
  # off the kept KV, running fewer tokens.
  assert engine.stats.scored_on_kept == len(contexts) - 1
  assert engine.stats.scored_run_tokens < fresh.stats.scored_run_tokens
  rests = {k[4] for k in engine.programs.compiles if k[0] == "score_kept"}
  # the short rests share the first continuation bucket; the 40-token one runs at 64
  assert rests == {buckets.CONTINUATION_BUCKET, 64}
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
  worst_hf = max(
      float(np.max(np.abs(g - reference_hf.reference_logprobs(hf, c, k))))
      for g, c, k in zip(got, contexts, conts)
  )
  print(f"kept vs fresh: max |diff| = {worst:.2e}; kept vs HF: {worst_hf:.2e}")
  assert worst <= KEPT_TOL and worst_hf < TOL
  off = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=8, keep_prompt_kv=False)
  off.generate(prompts)
  for g, w in zip(off.continuation_logprobs(contexts, conts), want):
    np.testing.assert_array_equal(g, w)  # the group prefix's KV is the same array
  assert off.stats.scored_on_kept == 0
  other = engine_tiny.group_prompts(seed=11, n=4, prefix_len=40)  # another prefix: computed
  engine.continuation_logprobs(other, [[5, 6]] * 4)
  assert engine.stats.prefill_tokens == prefill_after_generate + 40


@pytest.mark.parametrize("batch_shapes", ["buckets", "fixed"])
def test_packed_rests_score_as_one_a_row_and_as_hf(models, cases, batch_shapes):
  """rest_packing: the rests of the kept prompts' sequences (three a prompt here, as the runner's
  alt / loc_ans / old) packed back to back into rows of Rb tokens (K = Rb / 16 prompts a row)
  score as the fresh path to float32 rounding (KEPT_TOL) and as HF within TOL; a rest longer
  than Rb is scored one a row; one packed program per kept batch shape, fewer scoring slots."""
  hf, config, params = models
  prompts, _ = cases
  contexts, conts = [], []
  for seed in (3, 4, 5):
    c, k = _joint_cases(prompts, seed=seed)
    contexts += c
    conts += k
  contexts.append(list(prompts[1]))  # a 20-token rest: past Rb = 16, within Rb = 64
  conts.append(np.random.default_rng(4).integers(3, engine_tiny.VOCAB, 20).tolist())
  fresh = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=8, keep_prompt_kv=False)
  fresh.generate(prompts)
  want = fresh.continuation_logprobs(contexts, conts)
  engines = {}
  for rb in (0, 16, 64):
    engine = Engine(
        config,
        params,
        engine_tiny.FakeTokenizer(),
        batch_size=8,
        batch_shapes=batch_shapes,
        rest_packing=rb > 0,
        rest_row_length=rb or 64,
    )
    engine.generate(prompts)
    got = engine.continuation_logprobs(contexts, conts)
    assert engine.stats.scored_on_kept == len(contexts)
    worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
    worst_hf = max(
        float(np.max(np.abs(g - reference_hf.reference_logprobs(hf, c, k))))
        for g, c, k in zip(got, contexts, conts)
    )
    print(f"rest rows of {rb}: vs fresh {worst:.2e}; vs HF {worst_hf:.2e}")
    assert worst <= KEPT_TOL and worst_hf < TOL
    engines[rb] = engine
  generated = {(k[1], k[3]) for k in engines[0].programs.compiles if k[0] == "generate"}
  for rb, sources in ((16, 1), (64, 4)):
    on = engines[rb]
    packed = [k for k in on.programs.compiles if k[0] == "score_packed"]
    assert packed and {(k[1], k[3]) for k in packed} <= generated  # one per kept batch shape
    assert {k[-2:] for k in packed} == {(rb, sources)}
    # the 20-token rest one a row at its bucket where it does not fit a packed row
    assert [k[4] for k in on.programs.compiles if k[0] == "score_kept"] == ([32] if rb < 20 else [])
    assert on.stats.scored_run_tokens == engines[0].stats.scored_run_tokens
    assert on.stats.scoring_padded_tokens < engines[0].stats.scoring_padded_tokens


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_shapes="buckets"),
        dict(batch_shapes="fixed", scan_layers=False),
        dict(suffix_packing=True, stem_reuse=True, length_buckets=(64, 128), packed_length=128),
    ],
    ids=["buckets", "fixed-unrolled", "packed-stems"],
)
def test_rests_announced_to_generate_are_scored_inside_it(models, cases, kw):
  """generate(..., scoring=...): the packed rests of the announced sequences run inside the
  generate programs, off the prompts' KV before decode; continuation_logprobs returns them
  unchanged and computes the others (here a rest longer than Rb, and one leaving the prompts in
  their shared prefix). Values as the score_packed program's after generate (same arithmetic),
  as the fresh path's to float32 rounding and HF's within TOL; answers and the token account
  unchanged; no packed scoring program."""
  hf, config, params = models
  prompts, _ = cases
  contexts, conts = [], []
  for seed in (3, 4, 5):
    c, k = _joint_cases(prompts, seed=seed)
    contexts += c
    conts += k
  contexts.append(list(prompts[1]))  # a 20-token rest: past Rb = 16, one a row after generate
  conts.append(np.random.default_rng(4).integers(3, engine_tiny.VOCAB, 20).tolist())
  contexts.append(prompts[0][:20] + [7, 8, 9])  # leaves the prompts inside their shared prefix
  conts.append([10, 11])
  fresh = Engine(config, params, engine_tiny.FakeTokenizer(), batch_size=8, keep_prompt_kv=False)
  fresh.generate(prompts)
  want = fresh.continuation_logprobs(contexts, conts)
  runs = {}
  for announce in (False, True):
    engine = Engine(
        config,
        params,
        engine_tiny.FakeTokenizer(),
        batch_size=8,
        rest_packing=True,
        rest_row_length=16,
        **kw,
    )
    answers = [
        r.ids for r in engine.generate(prompts, scoring=(contexts, conts) if announce else None)
    ]
    runs[announce] = (engine, answers, engine.continuation_logprobs(contexts, conts))
  (after, ids_after, lp_after), (inside, ids_inside, lp_inside) = runs[False], runs[True]
  assert ids_inside == ids_after
  for g, w in zip(lp_inside, lp_after):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=0)
  worst = max(float(np.max(np.abs(g - w))) for g, w in zip(lp_inside, want))
  worst_hf = max(
      float(np.max(np.abs(g - reference_hf.reference_logprobs(hf, c, k))))
      for g, c, k in zip(lp_inside, contexts, conts)
  )
  assert worst <= KEPT_TOL and worst_hf < TOL, (worst, worst_hf)
  kinds = lambda e: sorted(k[0] for k in e.programs.compiles)
  assert "score_packed" in kinds(after) and "score_packed" not in kinds(inside)
  assert [k for k in kinds(inside) if k.startswith("score")] == ["score", "score_kept"]
  a, b = after.stats.as_dict(), inside.stats.as_dict()
  for k in ("seconds", "compile_count"):
    del a[k], b[k]
  assert a == b  # the same sequences computed the same way, in another program
