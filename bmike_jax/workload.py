"""Which prompts go to the engine together: the one rule the runner, the benchmarks and the
fidelity tool share.

A unit of the benchmark (one dataset x setup x language) asks every record each query type. The
prompts of one engine call share their demonstrations, so that the engine computes that shared
prefix once: all query types of a record together, except under `few_shot_specific`, whose
demonstrations depend on the query type (one call per query type). Within a call the prompts are
in record-major order (record 0's query types, then record 1's, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from bmike_jax import prompts as prompts_lib
from bmike_jax.data import Demonstration, LoadedFile, Record

# Setups whose demonstrations depend on the query type: one engine call per query type.
PER_QUERY_TYPE_SETUPS = ("few_shot_specific",)


@dataclasses.dataclass(frozen=True)
class Query:
  """One prompt: a record asked one query type."""

  record: Record
  query_type: str
  prompt: str


@dataclasses.dataclass(frozen=True)
class PromptGroup:
  """The prompts of one engine call: one dataset x language x setup (x query type where the setup
  splits them), sharing their demonstrations."""

  dataset: str
  lang: str
  setup: str
  query_types: tuple[str, ...]
  queries: tuple[Query, ...]

  @property
  def key(self) -> str:
    """Unique within a workload: "lang/setup", plus "/query_type" for a split setup."""
    key = f"{self.lang}/{self.setup}"
    return key + f"/{self.query_types[0]}" if self.setup in PER_QUERY_TYPE_SETUPS else key

  @property
  def prompts(self) -> list[str]:
    return [q.prompt for q in self.queries]

  @property
  def names(self) -> list[str]:
    """One name per prompt, for messages about it: "dataset/lang/setup record N (query_type)"."""
    return [
        f"{self.dataset}/{self.lang}/{self.setup} record {q.record.index} ({q.query_type})"
        for q in self.queries
    ]


def query_type_groups(setup: str, query_types: Sequence[str]) -> list[tuple[str, ...]]:
  """The query types asked in one engine call, per call, for `setup`."""
  if setup in PER_QUERY_TYPE_SETUPS:
    return [(qt,) for qt in query_types]
  return [tuple(query_types)]


def unit_groups(
    *, loaded: LoadedFile, pool: Sequence[Demonstration], setup: str, query_types: Sequence[str]
) -> list[PromptGroup]:
  """The engine calls of one unit (the records of `loaded` under `setup`), in call order."""
  prompts_lib.check_setup(setup)
  groups = []
  for qts in query_type_groups(setup, query_types):
    queries = tuple(
        Query(record, qt, prompts_lib.build_prompt(pool, setup, loaded.lang, record, qt))
        for record in loaded.records
        for qt in qts
    )
    groups.append(PromptGroup(loaded.dataset, loaded.lang, setup, qts, queries))
  return groups
