"""tools/sweep_plan replays the engine's layout from the data alone: on the shipped sample its
programs and token account equal what the engine compiled and counted running the same units
through the runner's own calls (a tiny random model with SmolLM2's real tokenizer)."""

from __future__ import annotations

import pytest

from bmike_jax import checkpoints, data
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import Engine
from bmike_jax.runner import evaluate
from tests import engine_tiny
from tools import sweep_plan

DATASETS, LANGS, SETUPS = ("counterfact",), ("de", "zh"), ("zero_shot", "few_shot_specific")
SAME = (
    "prompts",
    "prompt_tokens",
    "prompt_tree_tokens",
    "prefix_tokens",
    "suffix_tokens",
    "stem_tokens",
    "prefill_padded_tokens",
    "scored_sequences",
    "scored_tokens",
    "scored_on_kept",
    "scored_run_tokens",
    "scoring_padded_tokens",
)


@pytest.mark.parametrize(
    "batch_shapes, stems, packing, rests, batch, prefix",
    [
        ("fixed", False, False, False, 4, None),
        ("buckets", False, False, False, 4, None),
        ("buckets", True, False, False, 4, None),
        ("fixed", False, True, False, 4, None),
        ("buckets", False, True, True, 4, None),
        ("fixed", False, True, True, 32, None),  # a batch of more rows than a fresh scoring call
        # record stems as segments of the packed rows; every prefix padded to the largest bucket
        ("fixed", True, True, True, 32, (2048,)),
    ],
)
def test_plan_equals_the_engines_own_account(batch_shapes, stems, packing, rests, batch, prefix):
  try:
    tok = tokenizer_lib.load_tokenizer(checkpoints.default_gguf_path())
  except checkpoints.CheckpointError as e:
    pytest.skip(str(e))
  config = engine_tiny.tiny_config(
      vocab_size=tok.vocab_size,
      max_position_embeddings=2048,
      bos_token_id=tok.bos_id,
      eos_token_ids=tuple(tok.eos_ids),
  )
  engine = Engine(
      config,
      engine_tiny.tiny_params(config),
      tok,
      batch_size=batch,
      batch_shapes=batch_shapes,
      stem_reuse=stems,
      # packed: configs/8b.flags' coarse buckets, where suffixes pad most
      length_buckets=(64, 128, 256, 512, 1024, 2048) if packing else None,
      suffix_packing=packing,
      packed_length=128,
      rest_packing=rests,
      rest_row_length=16,  # some rests longer: scored one a row
      prefix_buckets=prefix,
  )
  data_dir = data.default_data_dir()
  for dataset in DATASETS:
    pool = data.load_pool(data_dir, dataset)
    for lang in LANGS:
      loaded = data.load_file(data_dir, dataset, lang, limit=2)
      for setup in SETUPS:
        evaluate.evaluate_unit(engine, tok, loaded, pool, setup, data.QUERY_TYPES, likelihood=True)
  plan = sweep_plan.plan_run(
      tok,
      data_dir=data_dir,
      datasets=DATASETS,
      langs=LANGS,
      setups=SETUPS,
      limit=2,
      batch_size=batch,
      length_buckets=engine.length_buckets,
      max_new_tokens=engine.max_new_tokens,
      batch_shapes=batch_shapes,
      stem_reuse=stems,
      suffix_packing=packing,
      packed_length=128,
      rest_row_length=16 if rests else 0,
      prefix_buckets=prefix,
  )
  stats = engine.stats.as_dict()
  print(plan["account"], stats)
  assert {k: plan["account"].get(k, 0) for k in SAME} == {k: stats[k] for k in SAME}
  assert plan["program_count"] == engine.compile_count
  assert set(plan["programs"]) == {" ".join(map(str, k)) for k in engine.programs.compiles}
  # with packing, stems are segments of the packed rows: no stem rows, no program of their own
  assert any(k[0] == "generate_stemmed" for k in engine.programs.compiles) == (
      stems and not packing
  )
  assert (engine.stats.stem_tokens > 0) == stems
  assert any(k[0] == "generate_packed" for k in engine.programs.compiles) == packing
  # packed rests are scored inside the generate programs (the runner announces them); a
  # score_packed program runs only a batch's overflow past one call (here at 4 rows, Rb 16)
  assert engine.stats.scored_on_kept > 0
  if batch == 32:
    assert not any(k[0] == "score_packed" for k in engine.programs.compiles)
  if prefix:  # every shared prefix padded to the one bucket; zero-shot groups, sharing none,
    # run on an empty region of it: every program is keyed by it
    assert {k[2] for k in engine.programs.compiles if k[0] != "prefix"} == set(prefix)
  if batch_shapes == "fixed":  # one row count: the batch size
    generated = ("generate", "generate_packed")
    assert {k[1] for k in engine.programs.compiles if k[0] in generated} == {batch}
  assert engine.stats.decode_steps <= plan["account"]["decode_steps_at_most"]
