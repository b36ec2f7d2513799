"""Units of work: one dataset x setup x target language (all its query types).

A unit is what the runner finishes, writes atomically and skips on resume.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence


@dataclasses.dataclass(frozen=True, order=True)
class Unit:
  dataset: str
  lang: str
  setup: str

  @property
  def name(self) -> str:
    return f"{self.dataset}/{self.setup}/{self.lang}"


def enumerate_units(
    datasets: Sequence[str], langs: Sequence[str], setups: Sequence[str]
) -> Iterator[Unit]:
  """Dataset, then language, then setup: consecutive units share one loaded data file."""
  for dataset in datasets:
    for lang in langs:
      for setup in setups:
        yield Unit(dataset, lang, setup)
