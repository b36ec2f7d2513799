"""Synthetic run directories for the report tests (test inputs, not expected outputs)."""

import json
import os


class WhitespaceTokenizer:
  """A tiny tokenizer: one id per white-space separated word (ids given on first sight)."""

  def __init__(self):
    self.vocab = {}

  def encode(self, text, add_bos=True):
    ids = [self.vocab.setdefault(word, len(self.vocab) + 1) for word in text.split()]
    return [0] + ids if add_bos else ids

  def decode(self, ids):
    names = {i: w for w, i in self.vocab.items()}
    return " ".join(names[i] for i in ids if i in names)


# lang -> (target gold, English gold) pairs; answers are drawn from them by pattern
GOLDS = {
    "de": [
        ("Hauptstadt von Bayern", "capital of Bavaria"),
        ("Vereinigte Staaten", "United States"),
        ("Berlin", "Berlin"),
        ("Schwarzwald", "Black Forest"),
    ],
    "fr": [
        ("la capitale de la France", "the capital of France"),
        ("Allemagne", "Germany"),
        ("Paris", "Paris"),
        ("Forêt-Noire", "Black Forest"),
    ],
    "ru": [
        ("Москва", "Moscow"),
        ("Германия", "Germany"),
        ("1990", "1990"),
        ("Чёрный лес", "Black Forest"),
    ],
    "ja": [("東京", "Tokyo"), ("ドイツ", "Germany"), ("2006", "2006"), ("黒い森", "Black Forest")],
    "ceb": [
        ("Alemanya", "Germany"),
        ("Estados Unidos", "United States"),
        ("Manila", "Manila"),
        ("Itom nga Lasang", "Black Forest"),
    ],
    "en": [
        ("Germany", "Germany"),
        ("United States", "United States"),
        ("Paris", "Paris"),
        ("Black Forest", "Black Forest"),
    ],
}
QUERY_TYPES = ("reliability", "generality", "locality", "portability")


def answer(pattern, gold, gold_en):
  """Answer of a synthetic model: 0 target gold, 1 English gold, 2 empty, 3 gold + extra word."""
  return [gold, gold_en, "", gold + " extra"][pattern % 4]


def synthetic_rows(
    datasets=("zsre", "counterfact"), setups=("zero_shot", "few_shot_specific"), langs=tuple(GOLDS)
):
  rows = []
  for d, dataset in enumerate(datasets):
    for s, setup in enumerate(setups):
      for l, lang in enumerate(langs):
        for q, query_type in enumerate(QUERY_TYPES):
          for case, (gold, gold_en) in enumerate(GOLDS[lang]):
            pattern = case + d + s * (l % 3) + q
            row = {
                "dataset": dataset,
                "lang": lang,
                "setup": setup,
                "query_type": query_type,
                "case_id": case,
                "prompt": "...",
                "prediction": answer(pattern, gold, gold_en),
                "gold": gold,
                "gold_en": gold_en,
                "em": None,
                "f1_ref": None,
                "f1": None,
                "f1_norm": None,
            }
            if dataset != "zsre" and query_type in ("reliability", "generality"):
              row["inv_ppl_alt"] = 0.1 * (1 + (pattern % 5))
              row["inv_ppl_loc_ans"] = 0.25
              row["inv_ppl_old"] = None if case == 3 else 0.05 * (1 + case)
            rows.append(row)
  return rows


def write_run(run_dir, rows, results=None, model=None, raw_lines=None):
  """samples.jsonl (rows, or raw_lines as given) and results.json (when results is given)."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "samples.jsonl"), "w", encoding="utf-8") as f:
    if raw_lines is not None:
      f.write(raw_lines)
    else:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
  if results is not None:
    doc = {
        "model": model or {"name": "synthetic", "tokenizer": "/nonexistent/tokenizer"},
        "units": {"planned": 1, "finished": 1},
        "results": results,
    }
    with open(os.path.join(run_dir, "results.json"), "w", encoding="utf-8") as f:
      json.dump(doc, f, ensure_ascii=False)
  return run_dir
