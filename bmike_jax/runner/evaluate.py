"""One unit of the benchmark: prompts -> greedy answers (+ likelihoods) -> scored sample rows.

Model-free except for the `engine` passed in, so the scoring is testable with any engine.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from bmike_jax import metrics
from bmike_jax import workload
from bmike_jax.data import Demonstration, LoadedFile, Record

# The likelihood comparison of SPEC applies to these datasets and query types only.
LIKELIHOOD_DATASETS = ("counterfact", "wikifactdiff")
LIKELIHOOD_QUERY_TYPES = ("reliability", "generality")
# Continuations scored against `alt`: `loc_ans` is the reference's choice, `old` the corrected one.
LIKELIHOOD_ALTERNATIVES = ("loc_ans", "old")


class GenerationEngine(Protocol):

  def generate(
      self, prompt_ids: Sequence[Sequence[int]], prompt_names: Sequence[str] | None = None
  ) -> list:
    ...

  def continuation_logprobs(
      self, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]]
  ) -> list[np.ndarray]:
    ...


@dataclasses.dataclass(frozen=True)
class _Query:
  """A query of the unit with its token ids (what the likelihood jobs need)."""

  record: Record
  query_type: str
  prompt: str
  prompt_ids: list[int]


def likelihood_split(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context ids, scored ids) exactly as the reference's `icl_lm_eval_ppls`.

  The reference tokenizes prompt + continuation together and scores the last
  len(encode(continuation)) tokens of that sequence (BPE may merge across the boundary, so
  these need not be the continuation's own tokens). For an empty continuation its
  `target_ids[:, :-0] = -100` masks nothing: every token after the first is scored.
  """
  joint = tokenizer.encode(prompt + continuation)
  n_scored = len(tokenizer.encode(continuation, add_bos=False)) or len(joint) - 1
  return joint[:-n_scored], joint[-n_scored:]


def score_sample(tokenizer, prediction: str, gold: str, lang: str) -> dict:
  """The four answer scores of one sample (metrics.answer_scores with the model's tokenizer)."""
  return metrics.answer_scores(
      prediction, gold, lang, encode=lambda text: tokenizer.encode(text, add_bos=False)
  )


def evaluate_unit(
    engine: GenerationEngine,
    tokenizer,
    loaded: LoadedFile,
    pool: Sequence[Demonstration],
    setup: str,
    query_types: Sequence[str],
    likelihood: bool,
) -> list[dict]:
  """Sample rows (DESIGN.md's samples.jsonl schema) of one dataset x setup x language; one engine
  call per prompt group of bmike_jax/workload.py."""
  lang = loaded.lang
  rows = []
  for group in workload.unit_groups(loaded=loaded, pool=pool, setup=setup, query_types=query_types):
    queries = [
        _Query(q.record, q.query_type, q.prompt, tokenizer.encode(q.prompt)) for q in group.queries
    ]
    results = engine.generate([q.prompt_ids for q in queries], prompt_names=group.names)
    likelihoods = {}
    if likelihood and loaded.dataset in LIKELIHOOD_DATASETS:
      likelihoods = _likelihoods(engine, tokenizer, queries)
    for i, (q, result) in enumerate(zip(queries, results)):
      gold = q.record.gold(q.query_type)
      row = {
          "dataset": loaded.dataset,
          "lang": lang,
          "setup": setup,
          "query_type": q.query_type,
          "case_id": q.record.target.case_id,
          "prompt": q.prompt,
          "prediction": result.text,
          "gold": gold,
          "gold_en": q.record.gold_en(q.query_type),
          # prompt tokens cut from the left by --overlong=truncate_left (0: the whole prompt)
          "truncated_tokens": getattr(result, "truncated_tokens", 0),
          **score_sample(tokenizer, result.text, gold, lang),
      }
      if i in likelihoods:
        row.update(likelihoods[i])
      rows.append(row)
  order = {qt: k for k, qt in enumerate(query_types)}
  rows.sort(key=lambda r: order[r["query_type"]])  # stable: record order within a query type
  return rows


def _likelihoods(engine: GenerationEngine, tokenizer, queries: list[_Query]) -> dict[int, dict]:
  """inv_ppl_alt / inv_ppl_loc_ans / inv_ppl_old for the queries the comparison applies to."""
  jobs = []  # (query index, field, context ids, scored ids)
  for i, q in enumerate(queries):
    if q.query_type not in LIKELIHOOD_QUERY_TYPES:
      continue
    target = q.record.target
    for field in ("alt",) + LIKELIHOOD_ALTERNATIVES:
      text = getattr(target, field)
      if text is None:  # a record without `old` (the `oud` quirk of WikiFactDiff)
        continue
      jobs.append((i, field, *likelihood_split(tokenizer, q.prompt, text)))
  out: dict[int, dict] = {
      i: {f"inv_ppl_{f}": None for f in ("alt",) + LIKELIHOOD_ALTERNATIVES}
      for i in {j[0] for j in jobs}
  }
  # Empty continuations score (almost) the whole prompt: batched apart, so that the shared
  # demonstration prefix of the others stays reusable.
  regular = [j for j in jobs if len(j[2]) > 1]
  degenerate = [j for j in jobs if len(j[2]) <= 1]
  for batch in (regular, degenerate):
    if not batch:
      continue
    logprobs = engine.continuation_logprobs([j[2] for j in batch], [j[3] for j in batch])
    for (i, field, _, _), lp in zip(batch, logprobs):
      out[i][f"inv_ppl_{field}"] = float(metrics.inverse_perplexity(np.asarray(lp)))
  return out
