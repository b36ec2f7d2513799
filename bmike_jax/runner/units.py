"""Units of work: one dataset x setup x target language (all its query types), for a method.

A unit is what the runner finishes, writes atomically and skips on resume. In-context units
(method "ike") have the prompt setups; weight-editing units have the protocols as their setup
(their edits are shared by every language and protocol of a dataset, runner/run.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

# The method name of the in-context setups (--methods=ike): the one spelling every module uses.
IKE = "ike"


@dataclasses.dataclass(frozen=True, order=True)
class Unit:
  dataset: str
  lang: str
  setup: str
  method: str = IKE

  @property
  def name(self) -> str:
    name = f"{self.dataset}/{self.setup}/{self.lang}"
    return name if self.method == IKE else f"{self.method}/{name}"


def enumerate_units(
    datasets: Sequence[str],
    langs: Sequence[str],
    setups: Sequence[str],
    methods: Sequence[str] = (IKE,),
    protocols: Sequence[str] = (),
) -> Iterator[Unit]:
  """In-context units first (dataset, then language, then setup: consecutive units share one
  loaded data file), then per weight-editing method: dataset, language, protocol."""
  if IKE in methods:
    for dataset in datasets:
      for lang in langs:
        for setup in setups:
          yield Unit(dataset, lang, setup)
  for method in methods:
    if method == IKE:
      continue
    for dataset in datasets:
      for lang in langs:
        for protocol in protocols:
          yield Unit(dataset, lang, protocol, method)
