"""Language confusion: did the model answer in English instead of the target language?

Each answer gets one category:

- "empty": nothing but white space.
- "undecidable": the target and English gold strings are the same (after trimming and
  case folding), or the answer has no letters (numbers, punctuation), or is written in a
  script that is neither the target's nor Latin, or the target language has no
  py3langid model and the script says nothing (a Latin-script target), or py3langid's
  two-way confidence is below `min_confidence`.
- "english": the answer equals the English gold and not the target gold; or, for a
  non-Latin-script target, all its letters are Latin; or py3langid, restricted to
  {target, en}, says en.
- "target": the answer equals the target gold; or, for a non-Latin-script target, it has
  letters of the target's script; or py3langid restricted to {target, en} says target.

Decisions carry a reason, so the report can say how many were decided by which step.
"""

import copy
import unicodedata

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from bmike_jax.languages import script_share

CATEGORIES = ("target", "english", "undecidable", "empty")
ENGLISH = "en"


def _norm(text):
  return unicodedata.normalize("NFKC", text).strip().casefold()


class Detector:
  """Target-vs-English decisions for answers (see the module docstring)."""

  def __init__(self, languages, min_confidence=0.0):
    self.languages = languages
    self.min_confidence = min_confidence
    self._base = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    self._known = set(self._base.labels)
    self._two_way = {}
    self._cache = {}

  def has_model(self, lang):
    """Whether py3langid knows `lang` (else Latin-script answers stay undecidable)."""
    return lang in self._known

  def _identifier(self, lang):
    ident = self._two_way.get(lang)
    if ident is None:
      ident = copy.copy(self._base)  # set_languages rebinds arrays: the base stays whole
      ident.set_languages([lang, ENGLISH])
      self._two_way[lang] = ident
    return ident

  def identify(self, text, lang):
    """(category, reason) for `text` from its letters alone (no gold strings)."""
    key = (text, lang)
    if key not in self._cache:
      self._cache[key] = self._identify(text, lang)
    return self._cache[key]

  def _identify(self, text, lang):
    if not text.strip():
      return "empty", "empty"
    if not any(ch.isalpha() for ch in text):
      return "undecidable", "no letters"
    language = self.languages[lang]
    latin = script_share(text, "Latin")
    if not language.is_latin:
      if script_share(text, language.script) > 0:
        return "target", "target script"
      if latin == 1.0:
        return "english", "Latin letters only"
      return "undecidable", "other script"
    if latin == 0.0:
      return "undecidable", "other script"
    if not self.has_model(lang):
      return "undecidable", "no language-id model"
    label, confidence = self._identifier(lang).classify(text.strip())
    if confidence < self.min_confidence:
      return "undecidable", "low confidence"
    return ("english" if label == ENGLISH else "target"), "langid"

  def decide(self, prediction, gold, gold_en, lang):
    """(category, reason) for one answer, using the gold strings first."""
    if not prediction.strip():
      return "empty", "empty"
    pred, target, english = _norm(prediction), _norm(gold), _norm(gold_en)
    if target == english:
      return "undecidable", "same gold"
    if pred == english:
      return "english", "equals English gold"
    if pred == target:
      return "target", "equals target gold"
    return self.identify(prediction, lang)


def confusion_counts(rows, detector):
  """{(dataset, setup, lang, query_type): {category: count}} and {reason: count}.

  Rows whose language is unknown to the detector's languages are skipped.
  """
  counts, reasons = {}, {}
  for row in rows:
    lang = row["lang"]
    if lang == ENGLISH or lang not in detector.languages:
      continue
    category, reason = detector.decide(row["prediction"], row["gold"], row["gold_en"], lang)
    key = (row["dataset"], row["setup"], lang, row["query_type"])
    cell = counts.setdefault(key, dict.fromkeys(CATEGORIES, 0))
    cell[category] += 1
    reasons[reason] = reasons.get(reason, 0) + 1
  return counts, reasons


def rates(cell):
  """Shares (x 100, 2 decimals) of one count cell.

  english: English answers among all answers; undecidable and empty likewise;
  english_decided: English answers among those decided (target or English), None when
  none was decided.
  """
  n = sum(cell.values())
  decided = cell["target"] + cell["english"]
  share = lambda k: round(100.0 * k / n, 2) if n else None
  return {
      "n": n,
      "english": share(cell["english"]),
      "undecidable": share(cell["undecidable"]),
      "empty": share(cell["empty"]),
      "english_decided": round(100.0 * cell["english"] / decided, 2) if decided else None,
  }


def validate(rows, detector):
  """Accuracy of `identify` on the gold strings themselves, per language.

  For each language, each distinct (gold, gold_en) pair with differing strings is
  classified twice: the target gold should come out "target", the English gold
  "english". Returns {lang: {"pairs", "decided", "correct", "accuracy", "coverage",
  "target_ok", "english_ok"}} (accuracy over decided strings, coverage = decided / all,
  both x 100).
  """
  pairs = {}
  for row in rows:
    lang = row["lang"]
    if lang == ENGLISH or lang not in detector.languages:
      continue
    if _norm(row["gold"]) == _norm(row["gold_en"]):
      continue
    pairs.setdefault(lang, set()).add((row["gold"], row["gold_en"]))
  report = {}
  for lang, lang_pairs in sorted(pairs.items()):
    decided = correct = target_ok = english_ok = 0
    for gold, gold_en in lang_pairs:
      for text, expected in ((gold, "target"), (gold_en, "english")):
        category, _ = detector.identify(text, lang)
        if category in ("target", "english"):
          decided += 1
          if category == expected:
            correct += 1
            if expected == "target":
              target_ok += 1
            else:
              english_ok += 1
    total = 2 * len(lang_pairs)
    report[lang] = {
        "pairs": len(lang_pairs),
        "decided": decided,
        "correct": correct,
        "target_ok": target_ok,
        "english_ok": english_ok,
        "accuracy": round(100.0 * correct / decided, 2) if decided else None,
        "coverage": round(100.0 * decided / total, 2),
    }
  return report
