"""tools/compare_runs.py on two hand-made output folders: identical share and largest cell change."""

from __future__ import annotations

import importlib.util
import json
import os

TOOL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "compare_runs.py"
)


def _load_tool():
  spec = importlib.util.spec_from_file_location("compare_runs", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  return tool


def _write(folder, predictions, results):
  os.makedirs(folder)
  with open(os.path.join(folder, "samples.jsonl"), "w", encoding="utf-8") as f:
    for case_id, prediction in enumerate(predictions):
      f.write(
          json.dumps(
              {
                  "dataset": "zsre",
                  "lang": "de",
                  "setup": "zero_shot",
                  "query_type": "reliability",
                  "case_id": case_id,
                  "prediction": prediction,
              }
          )
          + "\n"
      )
  with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"results": results}, f)


def test_compare(tmp_path):
  cell = lambda em, lik: {
      "zsre": {
          "zero_shot": {
              "de": {
                  "reliability": {  # noqa: E731
                      "n": 4,
                      "em": em,
                      "f1_ref": 50.0,
                      "lik_success_loc_ans": lik,
                  }
              }
          }
      }
  }
  _write(tmp_path / "a", ["x", "y", "z", "w"], cell(75.0, 50.0))
  _write(tmp_path / "b", ["x", "y", "q", "w"], cell(50.0, 12.5))
  table = _load_tool().compare(str(tmp_path / "a"), str(tmp_path / "b"))
  assert (table["answers"], table["identical"], table["identical_share"]) == (4, 3, 0.75)
  assert table["largest_cell_change"]["em"]["change"] == 25.0
  assert table["largest_cell_change"]["f1_ref"]["change"] == 0.0
  assert table["largest_cell_change"]["lik_success_loc_ans"] == {
      "change": 37.5,
      "cell": "zsre/zero_shot/de/reliability",
      "base": 50.0,
      "other": 12.5,
  }
  assert "n" not in table["largest_cell_change"]
