"""SmolLM2-135M (the embedded GGUF) on real BMIKE-53 prompts: the engine's extracted answers equal
the HF reference's (one prompt at a time, fp32) for >= 99% of a small slice covering all four
setups and Latin and non-Latin languages; continuation log-probs match HF."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from bmike_jax import checkpoints, data  # noqa: E402
from bmike_jax import tokenizer as tokenizer_lib  # noqa: E402
from bmike_jax.engine import Engine  # noqa: E402
from tests.data_dirs import HAS_REAL, REAL_DIR  # noqa: E402
from tools import fidelity, reference_hf  # noqa: E402

DATA_DIR = str(REAL_DIR)
# (setup, language, records): 4 query types each; 52 prompts in all.
SLICE = (
    ("zero_shot", "de", 2),
    ("zero_shot", "th", 2),
    ("one_shot", "ru", 2),
    ("one_shot", "zh", 2),
    ("few_shot_mixed", "de", 2),
    ("few_shot_mixed", "th", 1),
    ("few_shot_specific", "zh", 2),
)


@pytest.fixture(scope="module")
def models():
  try:
    source = checkpoints.default_gguf_path()
  except checkpoints.CheckpointError as e:
    pytest.skip(str(e))
  if not HAS_REAL:
    pytest.skip(f"no BMIKE-53 data at {DATA_DIR}")
  config, params = checkpoints.load_model(source)
  tokenizer = tokenizer_lib.load_tokenizer(source)
  hf_model = reference_hf.load_hf_model(source)
  hf_tokenizer = reference_hf.load_hf_tokenizer(source)
  engine = Engine(config, params, tokenizer, batch_size=8)
  return engine, tokenizer, hf_model, hf_tokenizer


def test_answers_match_hf_reference(models):
  engine, tokenizer, hf_model, hf_tokenizer = models
  groups = []
  for setup, lang, records in SLICE:
    groups += fidelity.build_groups(
        DATA_DIR, ["zsre"], [setup], [lang], records, data.QUERY_TYPES, tokenizer, hf_tokenizer
    )
  ours, _ = fidelity.run_engine(engine, groups)
  ref, _ = fidelity.run_reference(hf_model, hf_tokenizer, groups)
  cases = fidelity.merge(ours, ref)
  print(fidelity.report(cases))
  print(f"compiled programs: {engine.compile_count}; {engine.stats.summary()}")
  assert len(cases) == 52
  assert all(c.prompt_ids == c.reference_ids for c in cases)
  assert sum(c.agrees for c in cases) >= math.ceil(0.99 * len(cases))


def test_continuation_logprobs_match_hf(models):
  engine, tokenizer, hf_model, _ = models
  pool = data.load_pool(DATA_DIR, "counterfact")
  loaded = data.load_file(DATA_DIR, "counterfact", "de", limit=3)
  from bmike_jax import prompts

  prompt_ids, conts = [], []
  for record in loaded.records:
    for setup in ("zero_shot", "few_shot_mixed"):
      text = prompts.build_prompt(pool, setup, "de", record, "reliability")
      prompt_ids.append(tokenizer.encode(text))
      conts.append(tokenizer.encode(record.target.alt, add_bos=False))
  got = engine.continuation_logprobs(prompt_ids, conts)
  worst = max(
      float(np.max(np.abs(g - reference_hf.reference_logprobs(hf_model, p, c))))
      for p, c, g in zip(prompt_ids, conts, got)
  )
  print(f"SmolLM2 max |log p - HF| = {worst:.2e}")
  assert worst < 1e-4
