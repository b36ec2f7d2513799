"""Evaluation of weight edits: edit once per record, ask every requested language with that edit,
read the answers under two protocols, and emit sample rows in the runner's samples.jsonl schema
(DESIGN.md) plus `method`, `protocol` and the fields below.

`reference` (the fork's baselines, every quirk kept): the question of language L with no template
(reliability `L.src` -> `L.alt`, generality `L.rephrase` -> `L.alt`, locality `L.loc` ->
`L.loc_ans`, portability `L.port` -> `L.port_ans`); the answer is the teacher-forced argmax over
the gold span of `prompt + " " + gold` (answers.teacher_forced), on the edited model
(`prediction`) and on the unedited one (`pre_prediction`). Scored as its evaluate_test.py: EM on
the strings and the icl.py "F1" c²/(|a|·|b|) on the ids of a score tokenizer (the fork: Llama-2's;
here the one the caller gives, else the model's own, named in `score_tokenizer`), both empty 1,
one empty 0; locality compares the post-edit answer with the pre-edit answer
(`scored_against`), not with `loc_ans`. The standard F1 and the normalised F1 are added, named.

`comparable` (new; what the in-context runs do): greedy generation (15 tokens, cut at the first
`"`, the model's own tokenizer) after the zero-shot query line `Question: "{L.query}" Answer: "`
with no New Fact line, scored exactly as the in-context runs (runner/evaluate.score_sample),
locality against `loc_ans`. In the runner the answers are read by the in-context runs' engine on
its own params, a batch of edits in one call, each row with its own edit's delta in the forward
pass (model/row_deltas.py); without an engine, by answers.greedy on each edit's float32 weights
(no KV cache: the tests' independent read).

`setup` holds the protocol's name (these rows have no demonstrations).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from bmike_jax import metrics
from bmike_jax.data import QUERY_TYPES, LoadedFile, Record
from bmike_jax.editing import answers, methods
from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.request import EditError, EditRequest, request_from_record
from bmike_jax.engine import memory
from bmike_jax.engine.answer import cut_at_quote
from bmike_jax.model.config import LlamaConfig
from bmike_jax.runner.evaluate import score_sample

PROTOCOLS = ("reference", "comparable")
UNEDITED = "unedited"  # the method name of rows read on the base model
MODEL_TOKENIZER = "model"  # `score_tokenizer` when the reference protocol scores with the model's
# How the runner reads the comparable protocol (run.json, per method): the in-context runs' engine
# at the run's --dtype, each row with its own edit's delta added in float32 beside the shared
# weights' products (model/row_deltas.py). Earlier reads are refused on resume rather than mixed:
# before 2026-12-06 float32 without a KV cache; until 2026-12-07 ("engine") each edit's delta
# added into a copy of the engine's weights (rounded to bfloat16 at --dtype=bfloat16).
COMPARABLE_READ = "engine_row_deltas"


@dataclasses.dataclass(frozen=True)
class EditGroup:
  """One edit (the English side's request) and the records of every language asked with it."""

  dataset: str
  index: int
  request: EditRequest
  records: tuple[Record, ...]


def edit_groups(files: Sequence[LoadedFile]) -> list[EditGroup]:
  """Records of the given files grouped by (dataset, position in the file): the files of one
  dataset are parallel, each record's `en` side is the same edit. An error when they differ."""
  groups: dict[tuple[str, int], list[Record]] = {}
  for loaded in files:
    for record in loaded.records:
      groups.setdefault((record.dataset, record.index), []).append(record)
  out = []
  for (dataset, index), records in groups.items():
    first = records[0]
    for other in records[1:]:
      if (other.en.src, other.en.alt, other.en.subject) != (
          first.en.src,
          first.en.alt,
          first.en.subject,
      ):
        raise ValueError(
            f"{dataset} record {index}: the English side differs between the "
            f"{first.lang} and {other.lang} files ({first.en.src!r} vs "
            f"{other.en.src!r}); one edit cannot serve both"
        )
    out.append(EditGroup(dataset, index, request_from_record(first), tuple(records)))
  return out


def editable(method: str, groups: Sequence[EditGroup]) -> tuple[list[EditGroup], list[str]]:
  """(the groups whose edit `method` can build, a message per group it cannot: ROME / MEMIT need
  the subject once in the prompt)."""
  usable, skipped = [], []
  for g in groups:
    try:
      methods.check_request(method, g.request)
      usable.append(g)
    except EditError as err:
      skipped.append(str(err))
  return usable, skipped


def comparable_prompt(record: Record, query_type: str) -> str:
  return f'Question: "{record.query(query_type)}" Answer: "'


def _base_row(method: str, protocol: str, record: Record, query_type: str, prompt: str) -> dict:
  return {
      "method": method,
      "protocol": protocol,
      "dataset": record.dataset,
      "lang": record.lang,
      "setup": protocol,
      "query_type": query_type,
      "case_id": record.target.case_id,
      "prompt": prompt,
      "gold": record.gold(query_type),
      "gold_en": record.gold_en(query_type),
  }


def reference_rows(
    *,
    method: str,
    config: LlamaConfig,
    params,
    base_params,
    tokenizer,
    records: Sequence[Record],
    query_types: Sequence[str] = QUERY_TYPES,
    score_tokenizer=None,
    score_tokenizer_name: str = MODEL_TOKENIZER,
    pre_cache: dict | None = None,
) -> list[dict]:
  """Rows of the `reference` protocol for `records` asked on `params` (the edited model);
  `pre_prediction` from `base_params` (memoised in `pre_cache` by dataset, lang, index and query
  type, so several methods share them)."""
  scorer = tokenizer if score_tokenizer is None else score_tokenizer
  queries = [(r, qt) for r in records for qt in query_types]
  prompts = [r.query(qt) for r, qt in queries]
  golds = [r.gold(qt) for r, qt in queries]
  post = answers.teacher_forced(config, params, tokenizer, prompts, golds)
  cache = {} if pre_cache is None else pre_cache
  keys = [(r.dataset, r.lang, r.index, qt) for r, qt in queries]
  missing = [i for i, k in enumerate(keys) if k not in cache]
  if missing:
    pre = answers.teacher_forced(
        config, base_params, tokenizer, [prompts[i] for i in missing], [golds[i] for i in missing]
    )
    for i, ids in zip(missing, pre):
      cache[keys[i]] = tokenizer.decode(ids)
  rows = []
  for (record, qt), prompt, ids, key in zip(queries, prompts, post, keys):
    prediction, pre_prediction = tokenizer.decode(ids), cache[key]
    against = pre_prediction if qt == "locality" else record.gold(qt)
    row = _base_row(method, "reference", record, qt, prompt)
    row.update(
        prediction=prediction,
        pre_prediction=pre_prediction,
        scored_against="pre_prediction" if qt == "locality" else "gold",
        score_tokenizer=score_tokenizer_name,
        **score_sample(scorer, prediction, against, record.lang),
    )
    rows.append(row)
  return rows


def comparable_rows(
    *,
    method: str,
    config: LlamaConfig,
    params,
    tokenizer,
    records: Sequence[Record],
    query_types: Sequence[str] = QUERY_TYPES,
    max_new_tokens: int = 15,
    delta=None,
    record_edits: Sequence[int] | None = None,
    edit_slots: int = 0,
    engine=None,
    engine_held_bytes: int = 0,
) -> list[dict]:
  """Rows of the `comparable` protocol for `records`, record i asked on the model edited by edit
  record_edits[i] of the batched `delta` (E edits; None: the unedited model). Read by `engine`
  when given (the in-context runs' engine on its own params, each row with its own edit's delta
  in the forward pass, the records of all E edits in the same batches; max_new_tokens is the
  engine's; edit_slots: the engine's delta tables are padded with zero edits to at least this
  many, so that batches of fewer edits run the same programs (a row's answer does not depend on
  the number of edits); engine_held_bytes: what the caller holds on each device beside it), else by
  answers.greedy on the float32 `params` with each edit applied (delta.apply_delta; no KV cache:
  the tests' independent read)."""
  queries = [(i, r, qt) for i, r in enumerate(records) for qt in query_types]
  prompts = [comparable_prompt(r, qt) for _, r, qt in queries]
  edits = [0 if delta is None else int(record_edits[i]) for i, _, _ in queries]
  if engine is not None:
    tables = None
    if delta is not None:
      tables = delta_lib.row_tables(delta_lib.pad_edits(delta, edit_slots), config.num_layers)
    outs = answers.engine_greedy(
        engine,
        tokenizer,
        prompts,
        tables=tables,
        prompt_edits=None if delta is None else edits,
        held_bytes_per_device=engine_held_bytes + memory.device_bytes(tables),
    )
    del tables
  else:
    outs = [None] * len(prompts)
    for e in sorted(set(edits)):
      mine = [j for j, x in enumerate(edits) if x == e]
      edited = params if delta is None else delta_lib.apply_delta(params, delta_lib.row(delta, e))
      got = answers.greedy(
          config, edited, tokenizer, [prompts[j] for j in mine], max_new_tokens=max_new_tokens
      )
      for j, ids in zip(mine, got):
        outs[j] = ids
  rows = []
  for (_, record, qt), prompt, ids in zip(queries, prompts, outs):
    prediction = cut_at_quote(tokenizer.decode(ids))
    row = _base_row(method, "comparable", record, qt, prompt)
    row.update(
        prediction=prediction, **score_sample(tokenizer, prediction, record.gold(qt), record.lang)
    )
    rows.append(row)
  return rows


def run_method(
    *,
    method: str,
    config: LlamaConfig,
    params,
    tokenizer,
    files: Sequence[LoadedFile],
    hp: Any = None,
    protocols: Sequence[str] = PROTOCOLS,
    query_types: Sequence[str] = QUERY_TYPES,
    score_tokenizer=None,
    score_tokenizer_name: str = MODEL_TOKENIZER,
    batch_size: int = 8,
    pad: dict | None = None,
    pre_cache: dict | None = None,
    second_moments=None,
    engine=None,
    engine_held_bytes: int = 0,
) -> tuple[list[dict], dict]:
  """Edit once per record group (batches of `batch_size` requests, one vmapped optimisation
  each), ask every language of the group under each protocol. `method` UNEDITED asks the base
  model; MEMIT needs `second_moments` (stats.load_or_compute). The reference protocol reads each
  edit on the float32 `params` with its delta applied; the comparable protocol reads the whole
  batch of edits in one engine call when `engine` (the in-context runs' Engine over the same
  model) is given, each row with its own edit's delta in the forward pass (comparable_rows; else
  answers.greedy per edit). engine_held_bytes: what the caller holds on each device beside the
  engine. Returns (rows, stats {"edits", "groups", "skipped": [messages]}); a group whose edit
  cannot be built (ROME, MEMIT: subject not in the prompt) is skipped and named in `skipped`."""
  unknown = [p for p in protocols if p not in PROTOCOLS]
  if unknown:
    raise ValueError(f"unknown protocol(s) {unknown}; valid: {', '.join(PROTOCOLS)}")
  groups = edit_groups(files)
  rows: list[dict] = []
  stats = {"edits": 0, "groups": len(groups), "skipped": []}
  pre_cache = {} if pre_cache is None else pre_cache
  for start in range(0, len(groups), batch_size):
    chunk = groups[start : start + batch_size]
    delta = None
    if method == UNEDITED:
      usable = chunk
    else:
      usable, skipped = editable(method, chunk)
      stats["skipped"] += skipped
      if not usable:
        continue
      delta, _ = methods.edit(
          method,
          config,
          params,
          tokenizer,
          [g.request for g in usable],
          hp,
          second_moments=second_moments,
          **(pad or {}),
      )
      stats["edits"] += len(usable)
    if "reference" in protocols:
      for r, group in enumerate(usable):
        rows += reference_rows(  # the edited copy is freed when the call returns
            method=method,
            config=config,
            params=params
            if delta is None
            else delta_lib.apply_delta(params, delta_lib.row(delta, r)),
            base_params=params,
            tokenizer=tokenizer,
            records=group.records,
            query_types=query_types,
            score_tokenizer=score_tokenizer,
            score_tokenizer_name=score_tokenizer_name,
            pre_cache=pre_cache,
        )
    if "comparable" in protocols:
      records = [rec for g in usable for rec in g.records]
      rows += comparable_rows(
          method=method,
          config=config,
          params=params,
          tokenizer=tokenizer,
          records=records,
          query_types=query_types,
          delta=delta,
          record_edits=[r for r, g in enumerate(usable) for _ in g.records],
          # every batch's tables padded to one number of edits: one program set per method
          edit_slots=min(batch_size, len(groups)),
          engine=engine,
          # the batch's delta stays on the devices while the engine reads it
          engine_held_bytes=engine_held_bytes + memory.device_bytes(delta),
      )
    del delta  # freed before the next batch's edits
  return rows, stats


def summarise(rows: Sequence[dict]) -> dict:
  """results[method][protocol][dataset][lang][query_type] = {"n", "em", "f1_ref", "f1",
  "f1_norm"} (× 100, 2 decimals, metrics.score)."""
  cells: dict[tuple, list[dict]] = {}
  for row in rows:
    key = (row["method"], row["protocol"], row["dataset"], row["lang"], row["query_type"])
    cells.setdefault(key, []).append(row)
  out: dict = {}
  for (m, p, d, lang, qt), cell in cells.items():
    entry = {"n": len(cell)}
    entry.update({k: metrics.score([r[k] for r in cell]) for k in metrics.TEXT_METRICS})
    out.setdefault(m, {}).setdefault(p, {}).setdefault(d, {}).setdefault(lang, {})[qt] = entry
  return out
