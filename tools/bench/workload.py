"""The benchmarks' BMIKE-53 workload: prompt texts in the runner's engine calls
(bmike_jax/workload.py decides which prompts go together), as JSON-able groups for the workers."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from bmike_jax import data as data_lib
from bmike_jax import workload


@dataclasses.dataclass
class Group:
  """One engine call of the workload (a workload.PromptGroup) as the workers get it."""

  dataset: str
  lang: str
  setup: str
  key: str  # workload.PromptGroup.key: unique within the workload
  texts: list[str]
  names: list[str]  # "dataset/lang/setup record N (query_type)"
  query_types: list[str]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def sample(self, indices: Sequence[int]) -> "Group":
    return dataclasses.replace(
        self,
        texts=[self.texts[i] for i in indices],
        names=[self.names[i] for i in indices],
        query_types=[self.query_types[i] for i in indices],
    )


def build_groups(
    data_dir: str,
    dataset: str,
    langs: Sequence[str],
    setups: Sequence[str],
    records: int,
    query_types: Sequence[str] = data_lib.QUERY_TYPES,
) -> list[Group]:
  """The engine calls the runner makes for these units (first `records` records per language)."""
  pool = data_lib.load_pool(data_dir, dataset)
  groups = []
  for lang in langs:
    loaded = data_lib.load_file(data_dir, dataset, lang, limit=records or None)
    for setup in setups:
      for g in workload.unit_groups(loaded=loaded, pool=pool, setup=setup, query_types=query_types):
        groups.append(
            Group(
                g.dataset,
                g.lang,
                g.setup,
                g.key,
                g.prompts,
                g.names,
                [q.query_type for q in g.queries],
            )
        )
  return groups


def subset(groups: Sequence[Group], total: int, seed: int = 0) -> list[Group]:
  """About `total` prompts spread evenly over the groups, sampled at random inside each (a sample
  of the workload's length mix, for choosing the HF batch size)."""
  per = max(1, -(-total // max(1, len(groups))))
  out = []
  for g in groups:
    n = len(g.texts)
    # a seeded random sample (an even stride would hit one query type only: prompts are
    # record-major, 4 query types per record)
    idx = list(range(n)) if n <= per else sorted(random.Random(seed).sample(range(n), per))
    out.append(g.sample(idx))
  return out
