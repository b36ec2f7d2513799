"""The evaluation protocols of weight edits on a tiny random Llama and the shipped sample records:
one edit per record for all languages, the reference protocol's answers and scores equal to an
independent re-implementation (model forward + evaluate_test.py's formula), the comparable
protocol's answers equal to a naive greedy loop."""

from __future__ import annotations

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmike_jax import data
from bmike_jax.editing import protocols, templates
from bmike_jax.editing.ft import FTConfig
from bmike_jax.engine import Engine
from bmike_jax.model import Llama, causal_forward
from tests.editing_tiny import CharTokenizer
from tests.engine_tiny import tiny_config, tiny_params

LANGS = ("de", "ar")
WIDTH = 160  # one compiled shape for the independent reads (causal: trailing padding is inert)


def _logits(config, params, ids: list[int]) -> np.ndarray:
  """Logits [len(ids), V] of the model's own causal forward, over a [1, WIDTH] row."""
  row = np.zeros((1, WIDTH), np.int32)
  row[0, : len(ids)] = ids
  return np.asarray(_jitted(config)(params, jnp.asarray(row)))[0, : len(ids)]


_CACHE = {}


def _jitted(config):
  if config not in _CACHE:
    _CACHE[config] = jax.jit(lambda p, x: causal_forward(Llama(config), p, x))
  return _CACHE[config]


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  files = [data.load_file(data.SAMPLE_DATA_DIR, "zsre", lang, limit=1) for lang in LANGS]
  return config, tiny_params(config), CharTokenizer(), files


def _f1_ref(a: list[int], b: list[int]) -> float:
  """evaluate_test.py's formula, written out again."""
  if len(a) == 0 and len(b) == 0:
    return 1.0
  if len(a) == 0 or len(b) == 0:
    return 0.0
  common = Counter(a) & Counter(b)
  c = sum(common.values())
  return (c / len(a)) * (c / len(b))


def _teacher_forced(config, params, tok, prompt, gold) -> str:
  full = tok.encode(prompt + " " + gold)
  ids = np.argmax(_logits(config, params, full), axis=-1)[len(tok.encode(prompt)) - 1 : -1]
  return tok.decode(ids.tolist())


def test_reference_and_comparable_rows(setup):
  config, params, tok, files = setup
  hp = FTConfig(layer=1, steps=3, lr=1e-2)
  rows, stats = protocols.run_method(
      method="ft",
      config=config,
      params=params,
      tokenizer=tok,
      files=files,
      hp=hp,
      pad=dict(length=96, max_targets=48),
  )
  n_records = len(files[0].records)
  assert stats["edits"] == n_records == stats["groups"]  # one edit serves both languages
  assert len(rows) == n_records * len(LANGS) * len(data.QUERY_TYPES) * 2
  reference = [r for r in rows if r["protocol"] == "reference"]
  by_key = {(r.lang, r.target.case_id): r for f in files for r in f.records}
  for row in reference:
    record = by_key[(row["lang"], row["case_id"])]
    assert row["method"] == "ft" and row["score_tokenizer"] == protocols.MODEL_TOKENIZER
    assert row["prompt"] == record.query(row["query_type"])
    # pre-edit answers: an independent teacher-forced read of the unedited model
    assert row["pre_prediction"] == _teacher_forced(config, params, tok, row["prompt"], row["gold"])
    against = row["pre_prediction"] if row["query_type"] == "locality" else row["gold"]
    assert row["em"] == float(row["prediction"] == against)
    assert row["f1_ref"] == pytest.approx(
        _f1_ref(tok.encode(row["prediction"], add_bos=False), tok.encode(against, add_bos=False))
    )
  summary = protocols.summarise(rows)
  cell = [r for r in reference if r["lang"] == "de" and r["query_type"] == "reliability"]
  expected = round(sum(r["f1_ref"] for r in cell) * 100 / len(cell), 2)
  assert summary["ft"]["reference"]["zsre"]["de"]["reliability"]["f1_ref"] == expected
  comparable = [r for r in rows if r["protocol"] == "comparable"]
  assert all(
      r["prompt"].startswith('Question: "') and r["prompt"].endswith('Answer: "')
      for r in comparable
  )
  assert all(
      r["gold"] == by_key[(r["lang"], r["case_id"])].gold(r["query_type"]) for r in comparable
  )


def test_comparable_unedited_equals_naive_greedy(setup):
  config, params, tok, files = setup
  rows, stats = protocols.run_method(
      method=protocols.UNEDITED,
      config=config,
      params=params,
      tokenizer=tok,
      files=files[:1],
      protocols=("comparable",),
      query_types=("reliability",),
  )
  assert stats["edits"] == 0 and len(rows) == len(files[0].records)
  quote = tok.quote_token_mask()
  for row in rows:
    ids, out = tok.encode(row["prompt"]), []
    for _ in range(15):
      t = int(np.argmax(_logits(config, params, ids)[-1]))
      if t in tok.eos_ids:
        break
      out.append(t)
      ids.append(t)
      if quote[t]:
        break
    assert row["prediction"] == tok.decode(out).split('"', 1)[0]
    assert row["em"] == float(row["prediction"] == row["gold"])


def test_rome_skips_a_record_without_its_subject(setup):
  config, params, tok, files = setup
  record = files[0].records[0]
  broken = data.Record(
      record.dataset,
      record.lang,
      record.index,
      data.Side(**{**record.en.__dict__, "subject": "no such subject"}),
      record.target,
  )
  loaded = data.LoadedFile("zsre", record.lang, files[0].path, (broken,), 1, 0)
  rows, stats = protocols.run_method(
      method="rome", config=config, params=params, tokenizer=tok, files=[loaded]
  )
  assert rows == [] and stats["edits"] == 0
  assert "no such subject" in stats["skipped"][0] and "occurs 0 times" in stats["skipped"][0]


def test_rome_context_templates_generated_greedily(setup):
  config, params, tok, _ = setup
  out = templates.generate(config, params, tok, starters=("The", "I"), lengths=(3,))
  assert len(out) == 2 and all(t.endswith(". {}") and t.count("{}") == 1 for t in out)
  for starter, template in zip(("The", "I"), out):
    assert template.startswith(starter)
    ids = tok.encode(starter)
    for _ in range(3):  # the same greedy tokens, read off the model's own forward
      t = int(np.argmax(_logits(config, params, ids)[-1]))
      if t in tok.eos_ids:
        break
      ids.append(t)
    assert template == templates.template_of(tok.decode(ids))


def test_comparable_answers_read_by_the_engine_equal_the_float32_read(setup):
  """The runner reads the comparable protocol with the in-context runs' engine, the rows of a
  batch of edits together, each with its own edit's delta in the forward pass: the same answers
  as the independent float32 read without KV cache on each edit's weights (fp32), the same
  whether the edits are read together or one per call, and the engine's own params untouched.
  A last batch of fewer edits runs the programs of the full batches (tables padded)."""
  config, params, tok, _ = setup
  files = [data.load_file(data.SAMPLE_DATA_DIR, "zsre", lang, limit=3) for lang in LANGS]
  kw = dict(
      config=config,
      params=params,
      tokenizer=tok,
      files=files,
      hp=FTConfig(layer=1, steps=10, lr=0.1),
      protocols=("comparable",),
      pad=dict(length=96, max_targets=48),
  )
  direct, _ = protocols.run_method(method="ft", **kw)
  engine = Engine(config, params, tok, batch_size=8, dtype=jnp.float32)
  base = engine.params
  unedited, _ = protocols.run_method(method=protocols.UNEDITED, engine=engine, **kw)
  read, stats = protocols.run_method(method="ft", engine=engine, **kw)
  assert stats["edits"] == 3 and engine.params is base
  assert read == direct
  one_per_call, _ = protocols.run_method(method="ft", engine=engine, batch_size=1, **kw)
  assert one_per_call == read
  before = set(engine.programs.compiles)
  in_twos, _ = protocols.run_method(method="ft", engine=engine, batch_size=2, **kw)
  assert in_twos == read
  edits_of = lambda key: key[-1][0][2][0][1]  # delta_key: (name, layers, (a shape, dtype))
  new = [k for k in engine.programs.compiles if k not in before]
  assert new and {edits_of(k) for k in new} == {2}  # 2 edits, then 1 padded to 2
  # the edits reached the engine: some answers differ from the unedited model's
  assert [r["prediction"] for r in read] != [r["prediction"] for r in unedited]
