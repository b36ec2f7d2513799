"""runner/evaluate.evaluate_unit with a fake engine and a character tokenizer: the engine calls
(which prompts go together), the sample rows and every score, computed by hand. No model, no
torch."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from bmike_jax import data as data_lib
from bmike_jax import prompts as prompts_lib
from bmike_jax.data import LoadedFile, Record, Side
from bmike_jax.runner import evaluate

BOS = 1


class CharTokenizer:
  """One token per character (its code point); BOS = 1."""

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    return ([BOS] if add_bos else []) + [ord(c) for c in text]


@dataclasses.dataclass
class Answer:
  text: str


class FakeEngine:
  """Answers each prompt with the first word of its (last) question; a continuation's log-probs
  are -0.1 x its token count, per token. Records every call."""

  def __init__(self):
    self.generate_calls: list[tuple[list[str], list[str]]] = []
    self.scored: list[tuple[str, str]] = []
    self.announced: list = []  # each generate call's `scoring`

  def generate(self, prompt_ids, prompt_names=None, *, scoring=None):
    texts = ["".join(map(chr, ids[1:])) for ids in prompt_ids]
    self.generate_calls.append((texts, list(prompt_names)))
    self.announced.append(scoring)
    return [Answer(t.rsplit('Question: "', 1)[1].split(" ")[0]) for t in texts]

  def continuation_logprobs(self, prompt_ids, continuation_ids):
    for p, c in zip(prompt_ids, continuation_ids):
      self.scored.append(("".join(map(chr, p[1:])), "".join(map(chr, c))))
    return [np.full(len(c), -0.1 * len(c), np.float32) for c in continuation_ids]


def side(case_id, *, src, alt, rephrase, loc, loc_ans, port, port_ans, old):
  return Side(
      case_id=case_id,
      subject="s",
      src=src,
      alt=alt,
      rephrase=rephrase,
      loc=loc,
      loc_ans=loc_ans,
      port=port,
      port_ans=port_ans,
      old=old,
  )


EN = side(
    7,
    src="Rome is in",
    alt="Rome",
    rephrase="Where is Rome",
    loc="Berlin is big",
    loc_ans="Berlin",
    port="The city Rome",
    port_ans="Italy",
    old="Paris",
)
RECORDS = (
    Record(
        "counterfact",
        "de",
        0,
        EN,
        side(
            7,
            src="Rom liegt in",
            alt="Rom",
            rephrase="Wo liegt Rom",
            loc="Berlin ist groß",
            loc_ans="Berlin",
            port="Die Stadt Rom",
            port_ans="Italien",
            old="Paris",
        ),
    ),
    Record(
        "counterfact",
        "de",
        3,
        dataclasses.replace(EN, case_id=9),
        side(
            9,
            src="Oslo ist kalt",
            alt="Oslo",
            rephrase="Ist Oslo kalt",
            loc="Kairo ist warm",
            loc_ans="Kairo",
            port="Norwegen hat Oslo",
            port_ans="Norwegen",
            old=None,
        ),
    ),
)
LOADED = LoadedFile(
    "counterfact",
    "de",
    Path("CounterFact/counterfact_test_de.json"),
    RECORDS,
    n_total=4,
    n_skipped=2,
)
POOL = data_lib.load_pool(data_lib.SAMPLE_DATA_DIR, "counterfact")

# (record, query type) -> (prediction, gold, em, f1_ref, f1, f1_norm), by hand: f1_ref and f1 on
# characters (c common characters: c*c / (|pred| |gold|), 2c / (|pred| + |gold|)); f1_norm on
# lower-cased words, German articles dropped.
EXPECTED = {
    (0, "reliability"): ("Rom", "Rom", 1, 1, 1, 1),
    (0, "generality"): ("Wo", "Rom", 0, 1 / 6, 2 / 5, 0),  # c = 1 ("o")
    (0, "locality"): ("Berlin", "Berlin", 1, 1, 1, 1),
    (0, "portability"): ("Die", "Italien", 0, 4 / 21, 4 / 10, 0),  # c = 2 ("i", "e")
    (1, "reliability"): ("Oslo", "Oslo", 1, 1, 1, 1),
    (1, "generality"): ("Ist", "Oslo", 0, 1 / 12, 2 / 7, 0),  # c = 1 ("s")
    (1, "locality"): ("Kairo", "Kairo", 1, 1, 1, 1),
    (1, "portability"): ("Norwegen", "Norwegen", 1, 1, 1, 1),
}


def run(setup, likelihood=False):
  engine = FakeEngine()
  rows = evaluate.evaluate_unit(
      engine, CharTokenizer(), LOADED, POOL, setup, data_lib.QUERY_TYPES, likelihood
  )
  return engine, rows


@pytest.mark.parametrize("setup", ["zero_shot", "few_shot_mixed", "few_shot_specific"])
def test_rows_and_scores_by_hand(setup):
  _, rows = run(setup)
  # Rows come query type by query type, records in file order within each.
  keys = [(r, qt) for qt in data_lib.QUERY_TYPES for r in (0, 1)]
  assert [
      (
          RECORDS.index(next(x for x in RECORDS if x.target.case_id == row["case_id"])),
          row["query_type"],
      )
      for row in rows
  ] == keys
  for (r, qt), row in zip(keys, rows):
    pred, gold, em, f1_ref, f1, f1_norm = EXPECTED[(r, qt)]
    record = RECORDS[r]
    assert row == {
        "dataset": "counterfact",
        "lang": "de",
        "setup": setup,
        "query_type": qt,
        "case_id": record.target.case_id,
        "prompt": prompts_lib.build_prompt(POOL, setup, "de", record, qt),
        "prediction": pred,
        "gold": gold,
        "gold_en": record.gold_en(qt),
        "truncated_tokens": 0,
        "em": em,
        "f1_ref": pytest.approx(f1_ref),
        "f1": pytest.approx(f1),
        "f1_norm": pytest.approx(f1_norm),
    }, (r, qt)


def test_engine_calls_follow_the_grouping_rule():
  # One call for the unit, record-major; few_shot_specific: one call per query type.
  engine, _ = run("few_shot_mixed")
  ((texts, names),) = engine.generate_calls
  assert names == [
      f"counterfact/de/few_shot_mixed record {i} ({qt})"
      for i in (0, 3)
      for qt in data_lib.QUERY_TYPES
  ]
  demos = prompts_lib.render_demonstrations(
      POOL, prompts_lib.demonstration_indices("few_shot_mixed", "reliability"), "de"
  )
  assert demos and all(t.startswith(demos) for t in texts)  # the shared demonstrations first
  engine, _ = run("few_shot_specific")
  assert [names for _, names in engine.generate_calls] == [
      [f"counterfact/de/few_shot_specific record {i} ({qt})" for i in (0, 3)]
      for qt in data_lib.QUERY_TYPES
  ]


def test_likelihoods_by_hand():
  engine, rows = run("zero_shot", likelihood=True)
  inv = lambda text: math.exp(-0.1 * len(text))  # the fake's log-probs: -0.1 x length each
  by_key = {(row["case_id"], row["query_type"]): row for row in rows}
  for record in RECORDS:
    t = record.target
    for qt in ("reliability", "generality"):
      row = by_key[(t.case_id, qt)]
      assert row["inv_ppl_alt"] == pytest.approx(inv(t.alt), rel=1e-6)
      assert row["inv_ppl_loc_ans"] == pytest.approx(inv(t.loc_ans), rel=1e-6)
      assert row["inv_ppl_old"] == (None if t.old is None else pytest.approx(inv(t.old), rel=1e-6))
    for qt in ("locality", "portability"):
      assert "inv_ppl_alt" not in by_key[(t.case_id, qt)]
  # Each scored continuation follows its own prompt (the reference's joint tokenization).
  prompts = {row["prompt"] for row in rows}
  assert all(p in prompts for p, _ in engine.scored)
  assert len(engine.scored) == 2 * 3 + 2 * 2  # record 0: alt, loc_ans, old; record 1: no old
  # generate was told, before it ran, exactly the sequences scored after it (its one call)
  (announced,) = engine.announced
  told = [("".join(map(chr, p[1:])), "".join(map(chr, c))) for p, c in zip(*announced)]
  assert sorted(told) == sorted(engine.scored)


def test_no_likelihoods_for_zsre():
  engine = FakeEngine()
  loaded = dataclasses.replace(LOADED, dataset="zsre")
  rows = evaluate.evaluate_unit(
      engine, CharTokenizer(), loaded, POOL, "zero_shot", data_lib.QUERY_TYPES, True
  )
  assert engine.scored == [] and not any("inv_ppl_alt" in r for r in rows)
  assert engine.announced == [None]  # nothing to score: nothing announced
