"""Read a run directory and recompute every metric from its samples.jsonl.

The result has the nesting of results.json:
results[dataset][setup][lang][query_type] = {"n", "em", "f1_ref", "f1", "f1_norm", ...}.
"""

import json
import os

from bmike_jax import metrics
from bmike_jax.languages import LANGUAGE_ALIASES, normalize_lang
from bmike_jax.runner import units

REQUIRED_FIELDS = (
    "dataset",
    "lang",
    "setup",
    "query_type",
    "case_id",
    "prediction",
    "gold",
    "gold_en",
)
LIKELIHOOD_FIELDS = ("inv_ppl_alt", "inv_ppl_loc_ans", "inv_ppl_old")
# Weight-editing rows (runs with --methods) also carry these (analysis/methods.py).
METHOD_FIELDS = ("method", "protocol", "pre_prediction", "scored_against")
KEPT_FIELDS = REQUIRED_FIELDS + LIKELIHOOD_FIELDS + METHOD_FIELDS  # prompt and scores dropped
TEXT_FIELDS = ("dataset", "lang", "setup", "query_type", "prediction", "gold", "gold_en")


class ReportError(Exception):
  """Bad or missing input of the report; the message names the file (and line)."""


def _row_error(path, lineno, message):
  return ReportError(f"{path}, line {lineno}: {message}")


def _check_row(row, path, lineno):
  if not isinstance(row, dict):
    raise _row_error(path, lineno, "expected a JSON object")
  missing = [k for k in REQUIRED_FIELDS if k not in row]
  if missing:
    raise _row_error(path, lineno, "missing field(s) " + ", ".join(missing))
  for key in TEXT_FIELDS:
    if not isinstance(row[key], str):
      raise _row_error(path, lineno, f"field {key!r} must be a string, got {row[key]!r}")
  for key in LIKELIHOOD_FIELDS:
    value = row.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise _row_error(path, lineno, f"field {key!r} must be a number or null")
  try:
    row["lang"] = normalize_lang(row["lang"])
  except ValueError as e:
    raise _row_error(path, lineno, str(e)) from None


def sample_key(row):
  return (
      row.get("method") or units.IKE,
      row["dataset"],
      row["setup"],
      row["lang"],
      row["query_type"],
      str(row["case_id"]),
  )


def load_samples(path):
  """Rows of samples.jsonl, checked, one per (dataset, setup, lang, query type, case).

  Returns (rows, notes): notes are human-readable lines about what was skipped (a cut
  last line of a run still being written; repeated rows, of which the last is kept).
  """
  if not os.path.isfile(path):
    raise ReportError(f"{path}: file not found")
  rows, notes, repeats = {}, [], []
  lineno = 0
  try:
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        row = _parse_line(line, path, lineno, notes)
        if row is None:
          continue
        key = sample_key(row)
        if key in rows:
          repeats.append((lineno, rows[key]["_line"]))
        rows[key] = row
  except UnicodeDecodeError as e:
    raise ReportError(f"{path}, line {lineno + 1}: not UTF-8 ({e.reason})") from None
  except OSError as e:
    raise ReportError(f"{path}: cannot read ({e})") from None
  if repeats:
    first = ", ".join(f"line {a} repeats line {b}" for a, b in repeats[:3])
    notes.append(
        f"{path}: {len(repeats)} repeated row(s) (same dataset, setup, lang, "
        f"query type, case_id; {first}); the later one is kept"
    )
  return list(rows.values()), notes


def _parse_line(line, path, lineno, notes):
  """The checked row of one line (only the fields the report uses), or None to skip it."""
  if not line.strip():
    return None
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    if not line.endswith("\n"):  # only the last line can lack its newline
      notes.append(
          f"{path}, line {lineno}: incomplete last line skipped " "(run still being written?)"
      )
      return None
    raise _row_error(path, lineno, f"malformed JSON ({e.msg}, column {e.colno})") from None
  _check_row(row, path, lineno)
  kept = {k: row[k] for k in KEPT_FIELDS if k in row}
  kept["_line"] = lineno
  return kept


def load_results(path):
  """results.json as a dict, or None when the file does not exist."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ReportError(f"{path}, line {e.lineno}: malformed JSON ({e.msg})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ReportError(f"{path}: cannot read ({e})") from None
  if not isinstance(data, dict):
    raise ReportError(f"{path}: expected a JSON object")
  return data


def stored_scores(results_json):
  """The results[dataset][setup][lang][query_type] part of a results.json dict."""
  if results_json is None:
    return {}
  scores = results_json.get("results", {})
  return scores if isinstance(scores, dict) else {}


def tokenizer_source(results_json):
  """The tokenizer source path named in results.json's "model" section, or None."""
  if not results_json:
    return None
  model = results_json.get("model")
  if isinstance(model, dict) and isinstance(model.get("tokenizer"), str):
    return model["tokenizer"]
  return None


class _CachedEncoder:
  """Encodes strings without BOS, each distinct string once."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer
    self._cache = {}

  def __call__(self, text):
    ids = self._cache.get(text)
    if ids is None:
      ids = list(self._tokenizer.encode(text, add_bos=False))
      self._cache[text] = ids
    return ids


def score_row(row, encode):
  """The answer metrics of one samples.jsonl row, recomputed (encode: text -> token ids)."""
  return metrics.answer_scores(row["prediction"], row["gold"], row["lang"], encode=encode)


def rescore(rows, tokenizer):
  """Recompute all metrics of `rows` (from load_samples) into the results.json nesting.

  Answer metrics are recomputed per row from prediction and gold; the likelihood metrics
  from the rows' inv_ppl_* fields. Aggregation is the runner's own
  (metrics.aggregate_rows), so unchanged samples give results.json's numbers.
  """
  encode = _CachedEncoder(tokenizer)
  fresh = []
  for row in rows:
    new = {k: v for k, v in row.items() if not k.startswith("_")}
    new.update(score_row(row, encode))
    fresh.append(new)
  return metrics.aggregate_rows(fresh)


def compare(rescored, stored):
  """Differences between re-scored and stored results.

  Returns (n_compared_cells, differences); each difference is
  (dataset, setup, lang, query_type, key, stored_value, rescored_value). Cells that the
  stored results lack (a run still going) are not differences; cells only in the stored
  results are reported with rescored_value None.
  """
  differences, n_cells = [], 0
  for dataset, by_setup in stored.items():
    for setup, by_lang in (by_setup or {}).items():
      for lang, by_query in (by_lang or {}).items():
        for query_type, cell in (by_query or {}).items():
          new = (
              rescored.get(dataset, {})
              .get(setup, {})
              .get(LANGUAGE_ALIASES.get(lang, lang), {})
              .get(query_type)
          )
          if new is None:
            differences.append((dataset, setup, lang, query_type, "*", "present", None))
            continue
          n_cells += 1
          for key in sorted(set(cell) | set(new)):
            if cell.get(key) != new.get(key):
              differences.append(
                  (dataset, setup, lang, query_type, key, cell.get(key), new.get(key))
              )
  return n_cells, differences
