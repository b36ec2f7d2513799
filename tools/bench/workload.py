"""The benchmark's BMIKE-53 workload: prompt texts in groups of one language x setup (the prompts
of a group share their demonstrations, as the runner passes them to the engine)."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from bmike_jax import data as data_lib
from bmike_jax import prompts as prompts_lib


@dataclasses.dataclass
class Group:
  dataset: str
  lang: str
  setup: str
  texts: list[str]
  names: list[str]          # "record {index} ({query_type})"
  query_types: list[str]

  @property
  def key(self) -> str:
    return f"{self.lang}/{self.setup}"

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Group":
    return cls(**d)


def build_groups(data_dir: str, dataset: str, langs: Sequence[str], setups: Sequence[str],
                 records: int, query_types: Sequence[str] = data_lib.QUERY_TYPES) -> list[Group]:
  """One group per (language, setup): every record x query type, in record-major order (the order
  the runner builds them in for setups whose query types share the demonstrations)."""
  pool = data_lib.load_pool(data_dir, dataset)
  groups = []
  for lang in langs:
    loaded = data_lib.load_file(data_dir, dataset, lang, limit=records or None)
    for setup in setups:
      prompts_lib.check_setup(setup)
      texts, names, qts = [], [], []
      for record in loaded.records:
        for qt in query_types:
          texts.append(prompts_lib.build_prompt(pool, setup, lang, record, qt))
          names.append(f"{dataset}/{lang}/{setup} record {record.index} ({qt})")
          qts.append(qt)
      groups.append(Group(dataset, loaded.lang, setup, texts, names, qts))
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
    out.append(Group(g.dataset, g.lang, g.setup, [g.texts[i] for i in idx],
                     [g.names[i] for i in idx], [g.query_types[i] for i in idx]))
  return out
