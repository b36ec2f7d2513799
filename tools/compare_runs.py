"""Two runs of the same prompts side by side (e.g. --dtype=float32 against --dtype=bfloat16):
the share of answers that are identical, and the largest change of any aggregate cell.

    python -m tools.compare_runs --base=outputs/f32 --other=outputs/bf16 [--out=FILE.json]

Answers are matched by (dataset, lang, setup, query_type, case_id); cells are every number of
results.json's `results[dataset][setup][lang][query_type]` present in both (n excluded).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This tool's flags (defined only when it runs as a script, so tests can import it beside
  other tools)."""
  flags.DEFINE_string("base", None, "Output directory of the reference run.")
  flags.DEFINE_string("other", None, "Output directory of the run compared with it.")
  flags.DEFINE_string("out", "", "Also write the comparison as JSON here.")


KEY = ("dataset", "lang", "setup", "query_type", "case_id")


def _samples(directory: str) -> dict:
  with open(os.path.join(directory, "samples.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {tuple(r[k] for k in KEY): r for r in rows}


def _cells(directory: str) -> dict:
  with open(os.path.join(directory, "results.json"), encoding="utf-8") as f:
    results = json.load(f)["results"]
  return {
      (d, s, l, q, metric): value
      for d, by_setup in results.items()
      for s, by_lang in by_setup.items()
      for l, by_qt in by_lang.items()
      for q, cell in by_qt.items()
      for metric, value in cell.items()
      if isinstance(value, (int, float)) and not metric.startswith("n")
  }


def compare(base: str, other: str) -> dict:
  a, b = _samples(base), _samples(other)
  common = sorted(set(a) & set(b))
  if not common:
    raise SystemExit(f"no answers in common between {base} and {other}")
  same = sum(a[k]["prediction"] == b[k]["prediction"] for k in common)
  by_metric: dict = {}
  ca, cb = _cells(base), _cells(other)
  for key in sorted(set(ca) & set(cb)):
    if ca[key] is None or cb[key] is None:
      continue
    change = abs(ca[key] - cb[key])
    metric = key[-1]
    if metric not in by_metric or change > by_metric[metric]["change"]:
      by_metric[metric] = {
          "change": round(change, 6),
          "cell": "/".join(map(str, key[:-1])),
          "base": ca[key],
          "other": cb[key],
      }
  return {
      "answers": len(common),
      "identical": same,
      "identical_share": round(same / len(common), 4),
      "largest_cell_change": by_metric,
  }


def main(argv):
  del argv
  table = compare(FLAGS.base, FLAGS.other)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1)
  print(
      f"{table['identical']}/{table['answers']} answers identical "
      f"({100 * table['identical_share']:.1f}%)"
  )
  print("| metric | largest change of a cell | cell | base | other |")
  print("|---|---|---|---|---|")
  for metric, row in table["largest_cell_change"].items():
    print(f"| {metric} | {row['change']} | {row['cell']} | {row['base']} | {row['other']} |")
  return 0


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
