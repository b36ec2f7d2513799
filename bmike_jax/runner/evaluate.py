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
      self,
      prompt_ids: Sequence[Sequence[int]],
      prompt_names: Sequence[str] | None = None,
      *,
      scoring: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]] | None = None,
  ) -> list:
    """Greedy answers; `scoring`: the (contexts, continuations) `continuation_logprobs` will be
    asked right after (an engine may score them in the same pass)."""
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
  return likelihood_splits(tokenizer, [(prompt, continuation)])[0]


def likelihood_splits(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list, list]]:
  """`likelihood_split` of many (prompt, continuation) pairs, tokenized in two batched calls."""
  joints = encode_many(tokenizer, [p + c for p, c in pairs], add_bos=True)
  targets = encode_many(tokenizer, [c for _, c in pairs], add_bos=False)
  out = []
  for joint, target in zip(joints, targets):
    n_scored = len(target) or len(joint) - 1
    out.append((joint[:-n_scored], joint[-n_scored:]))
  return out


def encode_many(tokenizer, texts: Sequence[str], add_bos: bool) -> list[list[int]]:
  """`tokenizer.encode` of each text, in one batched call where the tokenizer has one (the HF
  `tokenizers` backend encodes a batch on all cores)."""
  batch = getattr(tokenizer, "encode_batch", None)
  if batch is not None:
    return [list(ids) for ids in batch(list(texts), add_bos=add_bos)]
  return [tokenizer.encode(t, add_bos=add_bos) for t in texts]


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
    ids = encode_many(tokenizer, [q.prompt for q in group.queries], add_bos=True)
    queries = [_Query(q.record, q.query_type, q.prompt, i) for q, i in zip(group.queries, ids)]
    jobs = []
    if likelihood and loaded.dataset in LIKELIHOOD_DATASETS:
      jobs = _likelihood_jobs(tokenizer, queries)
    results = engine.generate(
        [q.prompt_ids for q in queries],
        prompt_names=group.names,
        scoring=([j[2] for j in jobs], [j[3] for j in jobs]) if jobs else None,
    )
    likelihoods = _likelihoods(engine, jobs) if jobs else {}
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


def _likelihood_jobs(tokenizer, queries: list[_Query]) -> list[tuple]:
  """(query index, field, context ids, scored ids) of each likelihood the comparison asks."""
  wanted = []  # (query index, field, prompt, continuation)
  for i, q in enumerate(queries):
    if q.query_type not in LIKELIHOOD_QUERY_TYPES:
      continue
    target = q.record.target
    for field in ("alt",) + LIKELIHOOD_ALTERNATIVES:
      text = getattr(target, field)
      if text is None:  # a record without `old` (the `oud` quirk of WikiFactDiff)
        continue
      wanted.append((i, field, q.prompt, text))
  splits = likelihood_splits(tokenizer, [(p, c) for _, _, p, c in wanted])
  return [(i, field, *split) for (i, field, _, _), split in zip(wanted, splits)]


def _likelihoods(engine: GenerationEngine, jobs: list[tuple]) -> dict[int, dict]:
  """inv_ppl_alt / inv_ppl_loc_ans / inv_ppl_old of the queries `jobs` (`_likelihood_jobs`)
  ask them for."""
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
