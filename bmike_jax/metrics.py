"""Scores of BMIKE-53: pure functions on strings, token ids and log-probabilities.

Names say which variant a number is:

- `em`: exact string match.
- `f1_ref`: the reference's "F1" = precision * recall (c*c / (len(pred)*len(gold))).
- `f1`: the standard token F1 (harmonic mean 2PR/(P+R)) on the same token ids.
- `f1_norm`: MLQA-style normalized F1 on text (language-aware).
- Likelihood comparison (CounterFact, WikiFactDiff; reliability, generality): success when
  1/PPL(alt) > 1/PPL(other), magnitude = 1/PPL(alt) - 1/PPL(other).
  `lik_success_loc_ans` / `lik_magnitude_loc_ans`: other = `loc_ans`, as the reference does.
  `lik_success_old` / `lik_magnitude_old`: other = `old` (the corrected comparison).
  Records lacking a value are left out; `n_lik_loc_ans` / `n_lik_old` count those used.

`score(values)` gives every percentage as the reference's `my_avg` does:
`round(sum(values) * 100 / n, 2)`.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

from bmike_jax.languages import normalize_lang

RESULT_KEYS = ("dataset", "setup", "lang", "query_type")
TEXT_METRICS = ("em", "f1_ref", "f1", "f1_norm")
# comparison name -> field of samples.jsonl holding 1/PPL of the other continuation
LIKELIHOOD_OTHERS = {"loc_ans": "inv_ppl_loc_ans", "old": "inv_ppl_old"}


# ---- exact match and F1 on token ids ---------------------------------------------------


def exact_match(pred: str, gold: str) -> float:
  return 1.0 if pred == gold else 0.0


def _overlap(pred_ids: Sequence, gold_ids: Sequence) -> int:
  return sum((Counter(pred_ids) & Counter(gold_ids)).values())


def reference_f1(pred_ids: Sequence[int], gold_ids: Sequence[int]) -> float:
  """The reference's score: c*c / (len(pred)*len(gold)); both empty 1, one empty 0."""
  if not pred_ids or not gold_ids:
    return float(not pred_ids and not gold_ids)
  return _overlap(pred_ids, gold_ids) ** 2 / (len(pred_ids) * len(gold_ids))


def token_f1(pred_ids: Sequence, gold_ids: Sequence) -> float:
  """Harmonic mean of precision and recall of the multiset overlap; same empty rules."""
  if not pred_ids or not gold_ids:
    return float(not pred_ids and not gold_ids)
  common = _overlap(pred_ids, gold_ids)
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_ids), common / len(gold_ids)
  return 2 * precision * recall / (precision + recall)


# ---- MLQA-style normalized F1 ----------------------------------------------------------

ASCII_PUNCTUATION = frozenset(string.punctuation)


def is_punctuation(ch: str) -> bool:
  """Like the MLQA script: Unicode category P*, plus ASCII string.punctuation ($, +, <, ...)."""
  return ch in ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


# MLQA's article patterns (the Arabic one removes every "ال", as MLQA does).
ARTICLE_PATTERNS = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "ar": re.compile(r"\sال^|ال"),
}

# Characters that are each a token of their own: CJK ideographs, kana, Thai, Hangul.
_CHARACTER_TOKEN = re.compile(
    "(["
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"  # CJK ideographs
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # hiragana, katakana
    "\u0e00-\u0e7f"  # Thai
    "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # Hangul
    "])"
)


def answer_tokens(text: str, lang: str) -> list[str]:
  """Lower-case, drop punctuation, drop articles (en/es/de/ar/vi), then split."""
  code = normalize_lang(lang)
  text = "".join(ch for ch in text.lower() if not is_punctuation(ch))
  if code in ARTICLE_PATTERNS:
    text = ARTICLE_PATTERNS[code].sub(" ", text)
  return _CHARACTER_TOKEN.sub(r" \1 ", text).split()


def normalized_f1(pred: str, gold: str, lang: str) -> float:
  return token_f1(answer_tokens(pred, lang), answer_tokens(gold, lang))


def answer_scores(
    prediction: str, gold: str, lang: str, *, encode: Callable[[str], Sequence[int]]
) -> dict[str, float]:
  """The four answer scores (TEXT_METRICS) of one answer; `encode`: text -> token ids without
  BOS (the model's tokenizer). The runner and the re-scoring both call this."""
  pred_ids, gold_ids = encode(prediction), encode(gold)
  return {
      "em": exact_match(prediction, gold),
      "f1_ref": reference_f1(pred_ids, gold_ids),
      "f1": token_f1(pred_ids, gold_ids),
      "f1_norm": normalized_f1(prediction, gold, lang),
  }


# ---- likelihood comparison -------------------------------------------------------------


def inverse_perplexity(token_logprobs: Iterable[float]) -> float:
  """exp(mean log-prob) over the continuation tokens, i.e. 1/PPL.

  Raises ValueError on an empty continuation. (The reference does not: for an empty
  target its `target_ids[:, :-0] = -100` masks nothing, so it scores the whole
  prompt; this happens for WikiFactDiff's 5 empty `loc_ans`.)
  """
  values = [float(x) for x in token_logprobs]
  if not values:
    raise ValueError("inverse_perplexity needs at least one continuation token")
  return math.exp(math.fsum(values) / len(values))


def likelihood_comparison(inv_ppl_alt: float, inv_ppl_other: float) -> tuple[float, float]:
  """(success 1.0/0.0 when 1/PPL(alt) > 1/PPL(other), magnitude = their difference)."""
  return float(inv_ppl_alt > inv_ppl_other), inv_ppl_alt - inv_ppl_other


# ---- aggregation -----------------------------------------------------------------------


def aggregate(values: Sequence[float]) -> dict:
  """{"n", "mean"}; mean is None when there are no values."""
  values = list(values)
  return {"n": len(values), "mean": sum(values) / len(values) if values else None}


def score(values: Sequence[float]) -> float | None:
  """Mean x 100, 2 decimals, computed as the reference's `my_avg`: round(sum * 100 / n, 2).

  None when there are no values. (round(100 * mean, 2) differs in the last digit for
  some n, e.g. 23 of 160: 14.38 here and in the reference, 14.37 that way.)
  """
  values = list(values)
  return round(sum(values) * 100 / float(len(values)), 2) if values else None


def unrounded_score(values: Sequence[float]) -> float | None:
  """Mean x 100, not rounded: the reference prints the likelihood figures with `%.6f`."""
  values = list(values)
  return sum(values) * 100 / float(len(values)) if values else None


def likelihood_scores(rows: Sequence[Mapping[str, Any]]) -> dict:
  """lik_success_* / lik_magnitude_* (x 100, unrounded as the reference prints them) and
  n_lik_* over rows with both 1/PPL values."""
  out = {}
  for name, other in LIKELIHOOD_OTHERS.items():
    pairs = [
        likelihood_comparison(r["inv_ppl_alt"], r[other])
        for r in rows
        if r.get("inv_ppl_alt") is not None and r.get(other) is not None
    ]
    out[f"lik_success_{name}"] = unrounded_score([success for success, _ in pairs])
    out[f"lik_magnitude_{name}"] = unrounded_score([magnitude for _, magnitude in pairs])
    out[f"n_lik_{name}"] = len(pairs)
  return out


def aggregate_rows(
    rows: Iterable[Mapping[str, Any]],
    keys: Sequence[str] = RESULT_KEYS,
    metrics: Sequence[str] = TEXT_METRICS,
) -> dict:
  """Nested results: out[row[k0]]...[row[kn]] = {"n", metric: score, ...}.

  Groups with rows carrying an `inv_ppl_alt` field (CounterFact / WikiFactDiff reliability
  and generality) also get `likelihood_scores`.
  """
  groups: dict[tuple, list] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in keys), []).append(row)
  results: dict = {}
  for group_key, group in groups.items():
    node = results
    for part in group_key[:-1]:
      node = node.setdefault(part, {})
    leaf = {"n": len(group)}
    leaf.update({m: score([_metric(r, m) for r in group]) for m in metrics})
    if any("inv_ppl_alt" in r for r in group):
      leaf.update(likelihood_scores(group))
    node[group_key[-1]] = leaf
  return results


def _metric(row: Mapping[str, Any], name: str) -> float:
  if row.get(name) is None:
    raise ValueError(f"row has no value for metric {name!r}: {dict(row)}")
  return row[name]
