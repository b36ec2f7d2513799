"""The fork's baseline output files (ercong21/MultiKnow `baselines/`), written with
`--reference_layout` for the weight-editing methods' `reference` protocol, beside the runner's:

  OUTPUT_DIR/output/{METHOD}_{zsRE|Coun|Wiki}_{lang}_results_{size}.json
      what its run script saves per method, dataset and target language: a list, one item per
      record, {"case_id", "pre": {...}, "post": {...}}, each side holding
      reliability {ans, target}, generalization {ans, target}, locality {neighborhood_acc: {ans}},
      portability {one_hop_acc: {ans, target}} (the fields its evaluate_test.py reads; `pre` is
      the unedited model's answer). {size} is the fork's `--ds_size` (0: the whole file); here
      --limit, 0 without one. Its evaluate_test.py reads only the `_0` files.
  OUTPUT_DIR/csv-results/{zsre|coun|wiki}_analysis_results.csv
      what its evaluate_test.py writes: rows (Method, Metric) for each method (sorted) and
      Reliability, Generality, Locality, Portability; columns {lang}_F1, {lang}_EM per language
      (sorted); F1 the fork's c²/(|a|·|b|) and EM x 100, 2 decimals; locality against the pre-edit
      answer. Rebuilt from every finished reference-protocol unit of the dataset.

The fork's F1 tokenises with Llama-2's tokenizer; here the reference protocol's score tokenizer
(the model's own, named in the samples' `score_tokenizer`).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Mapping, Sequence

from bmike_jax import paths
from bmike_jax.runner import store as store_lib
from bmike_jax.runner.units import Unit

METHOD_TAGS = {"ft": "FT", "lora": "LoRA", "rome": "ROME", "kn": "KN", "memit": "MEMIT"}
DATASET_TAGS = {"zsre": "zsRE", "counterfact": "Coun", "wikifactdiff": "Wiki"}
METRIC_NAMES = {
    "reliability": "Reliability",
    "generality": "Generality",
    "locality": "Locality",
    "portability": "Portability",
}
OUTPUT_FOLDER = "output"
CSV_FOLDER = "csv-results"


def results_name(unit: Unit, limit: int | None) -> str:
  return f"{METHOD_TAGS[unit.method]}_{DATASET_TAGS[unit.dataset]}_{unit.lang}_results_{limit or 0}.json"


def csv_name(dataset: str) -> str:
  return f"{DATASET_TAGS[dataset].lower()}_analysis_results.csv"


def _side(rows: Mapping[str, dict], answer: str) -> dict:
  side = {}
  if "reliability" in rows:
    side["reliability"] = {
        "ans": rows["reliability"][answer],
        "target": rows["reliability"]["gold"],
    }
  if "generality" in rows:
    side["generalization"] = {
        "ans": rows["generality"][answer],
        "target": rows["generality"]["gold"],
    }
  if "locality" in rows:
    side["locality"] = {"neighborhood_acc": {"ans": rows["locality"][answer]}}
  if "portability" in rows:
    side["portability"] = {
        "one_hop_acc": {"ans": rows["portability"][answer], "target": rows["portability"]["gold"]}
    }
  return side


def results_items(samples: Sequence[dict]) -> list[dict]:
  """The fork's per-record items from one unit's reference-protocol samples (record order)."""
  records: dict = {}
  for s in samples:
    records.setdefault(s["case_id"], {})[s["query_type"]] = s
  return [
      {"case_id": case_id, "pre": _side(rows, "pre_prediction"), "post": _side(rows, "prediction")}
      for case_id, rows in records.items()
  ]


def analysis_csv(cells: Mapping[tuple[str, str], dict]) -> str:
  """cells[(method, lang)] = a unit's metrics by query type ({"em", "f1_ref", ...})."""
  methods = sorted({METHOD_TAGS[m] for m, _ in cells})
  langs = sorted({lang for _, lang in cells})
  by_tag = {(METHOD_TAGS[m], lang): v for (m, lang), v in cells.items()}
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["Method", "Metric"] + [f"{lang}_{k}" for lang in langs for k in ("F1", "EM")])
  for tag in methods:
    for qt, name in METRIC_NAMES.items():
      row = [tag, name]
      for lang in langs:
        cell = by_tag.get((tag, lang), {}).get(qt)
        row += ["", ""] if cell is None else [f"{cell['f1_ref']}", f"{cell['em']}"]
      writer.writerow(row)
  return buf.getvalue()


def write_unit(output_dir: str, unit: Unit, samples: Sequence[dict], limit: int | None) -> None:
  text = json.dumps(results_items(samples), ensure_ascii=False, indent=4) + "\n"
  store_lib.atomic_write_text(
      paths.join(output_dir, OUTPUT_FOLDER, results_name(unit, limit)), text
  )


def write_analysis(output_dir: str, dataset: str, finished: Mapping[Unit, dict]) -> None:
  """The dataset's analysis CSV from the finished reference-protocol units' metrics."""
  cells = {
      (u.method, u.lang): doc["query_types"]
      for u, doc in finished.items()
      if u.dataset == dataset and u.method in METHOD_TAGS and u.setup == "reference"
  }
  if cells:
    store_lib.atomic_write_text(
        paths.join(output_dir, CSV_FOLDER, csv_name(dataset)), analysis_csv(cells)
    )
