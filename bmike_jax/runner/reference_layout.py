"""The reference's own output files (`--reference_layout`), beside the runner's, so the paper's
analysis scripts read them unchanged (SPEC "The reference's output files"):

  OUTPUT_DIR/result/{model}/icl{0,1,8,8a}_{testdata}_en{L}.csv
      columns case_id, metric, input, prediction, true; `input` is the query alone (the prompt
      without its demonstrations); rows per record in the order reliability, generality,
      locality, portability (the reference's loop), records in file order.
  OUTPUT_DIR/result/{model}/icl{0,1,8,8a}_{testdata}_en{L}.txt
      the run's summary: "F1EM score" (F1_ref and EM per query type, x 100, 2 decimals) and, for
      CounterFact / WikiFactDiff, "PPLS score" (likelihood success and magnitude x 100, `%.6f`,
      unrounded, against `loc_ans` as the reference compares; `old` on a second line, named).

{model} is the checkpoint's name (its last path component, without `.gguf`); {testdata} the data
files' prefix (`zsre`, `counterfact`, `wfd`); icl0 zero-shot, icl1 one-shot, icl8 8-shot mixed,
icl8a 8-shot metric-specific. The txt wording is ours: the reference's txt files are not public;
the numbers in them are the reference's figures.
"""

from __future__ import annotations

import os
from typing import Sequence

from bmike_jax import data as data_lib
from bmike_jax import metrics, paths
from bmike_jax import prompts
from bmike_jax.runner import store as store_lib
from bmike_jax.runner.units import Unit

SETUP_FILE_TAGS = {
    "zero_shot": "icl0",
    "one_shot": "icl1",
    "few_shot_mixed": "icl8",
    "few_shot_specific": "icl8a",
}


def model_name(checkpoint: str) -> str:
  name = os.path.basename(os.path.normpath(checkpoint))
  return name[: -len(".gguf")] if name.endswith(".gguf") else name


def file_stem(unit: Unit) -> str:
  testdata = data_lib.DATASET_FILES[unit.dataset][1]  # the data files' prefix
  return f"{SETUP_FILE_TAGS[unit.setup]}_{testdata}_en{unit.lang}"


def reference_rows(samples: Sequence[dict]) -> list[dict]:
  """Samples in the reference's order: record by record, query types in data.QUERY_TYPES order."""
  order = {qt: k for k, qt in enumerate(data_lib.QUERY_TYPES)}
  records: dict = {}
  for s in samples:
    records.setdefault(s["case_id"], []).append(s)
  return [
      s for rows in records.values() for s in sorted(rows, key=lambda r: order[r["query_type"]])
  ]


def csv_text(samples: Sequence[dict]) -> str:
  rows = [
      {**s, "prompt": prompts.strip_demonstrations(s["prompt"])} for s in reference_rows(samples)
  ]
  return store_lib.reference_csv(rows)


def summary_text(samples: Sequence[dict], unit: Unit) -> str:
  table = metrics.aggregate_rows(samples, keys=("query_type",))
  lines = [f"{file_stem(unit)}", "F1EM score"]
  for qt in data_lib.QUERY_TYPES:
    if qt in table:
      cell = table[qt]
      lines.append(f"{qt}\tF1: {cell['f1_ref']:.2f}\tEM: {cell['em']:.2f}\tn: {cell['n']}")
  lik_lines = []
  for qt in data_lib.QUERY_TYPES:
    cell = table.get(qt, {})
    for other in metrics.LIKELIHOOD_OTHERS:
      if cell.get(f"n_lik_{other}"):
        label = "" if other == "loc_ans" else f" (against {other}, corrected; not the reference)"
        lik_lines.append(
            f"{qt}{label}\tsuccess: {cell[f'lik_success_{other}']:.6f}\t"
            f"magnitude: {cell[f'lik_magnitude_{other}']:.6f}\t"
            f"n: {cell[f'n_lik_{other}']}"
        )
  if lik_lines:
    lines += ["PPLS score"] + lik_lines
  return "\n".join(lines) + "\n"


def write_unit(output_dir: str, checkpoint: str, unit: Unit, samples: Sequence[dict]) -> None:
  folder = paths.join(output_dir, "result", model_name(checkpoint))
  stem = file_stem(unit)
  store_lib.atomic_write_text(paths.join(folder, f"{stem}.csv"), csv_text(samples))
  store_lib.atomic_write_text(paths.join(folder, f"{stem}.txt"), summary_text(samples, unit))
