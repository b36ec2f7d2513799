"""Language confusion: the decision steps, the counts and rates, and the gold check."""

import pytest

from bmike_jax.analysis import confusion
from bmike_jax.languages import LANGUAGES


@pytest.fixture(scope="module")
def detector():
  return confusion.Detector(LANGUAGES, min_confidence=0.7)


@pytest.mark.parametrize(
    "pred, gold, gold_en, lang, expected",
    [
        # empty answers are their own category, whatever the golds
        ("", "Москва", "Moscow", "ru", ("empty", "empty")),
        ("  \n", "Berlin", "Berlin", "de", ("empty", "empty")),
        # golds identical in both languages: undecidable, even when the answer equals them
        ("Berlin", "Berlin", "Berlin", "de", ("undecidable", "same gold")),
        (" adobe", "Adobe", "Adobe ", "ru", ("undecidable", "same gold")),
        # equal to the English gold only: confused (trimmed, case-folded)
        (" Moscow", "Москва", "Moscow", "ru", ("english", "equals English gold")),
        ("black forest", "Schwarzwald", "Black Forest", "de", ("english", "equals English gold")),
        ("Schwarzwald", "Schwarzwald", "Black Forest", "de", ("target", "equals target gold")),
        # no letters at all
        ("2549", "2549", "2006", "th", ("target", "equals target gold")),
        ("1990 (?)", "1991", "1990 год", "ru", ("undecidable", "no letters")),
        # script check for non-Latin targets
        ("Город Москва", "Москва", "Moscow", "ru", ("target", "target script")),
        ("the city of Moscow", "Москва", "Moscow", "ru", ("english", "Latin letters only")),
        ("iPhone Москва", "Москва", "Moscow", "ru", ("target", "target script")),
        ("Αθήνα", "Москва", "Moscow", "ru", ("undecidable", "other script")),
        ("ドイツ連邦", "ドイツ", "Germany", "ja", ("target", "target script")),
        ("東京都", "東京", "Tokyo", "ja", ("target", "target script")),
        ("Federal Republic", "ドイツ", "Germany", "ja", ("english", "Latin letters only")),
        # Latin-script targets: py3langid restricted to {target, en}
        (
            "the capital city of the United Kingdom",
            "London",
            "London Town",
            "de",
            ("english", "langid"),
        ),
        (
            "die Hauptstadt von Deutschland ist schön",
            "Berlin",
            "Berlin City",
            "de",
            ("target", "langid"),
        ),
        ("Москва", "Paris", "Paris City", "fr", ("undecidable", "other script")),
        # Cebuano: no py3langid model, Latin script: nothing else decides
        (
            "the capital city of Germany",
            "Alemanya",
            "Germany",
            "ceb",
            ("undecidable", "no language-id model"),
        ),
        ("Germany", "Alemanya", "Germany", "ceb", ("english", "equals English gold")),
    ],
)
def test_decide_steps(detector, pred, gold, gold_en, lang, expected):
  assert detector.decide(pred, gold, gold_en, lang) == expected


def test_low_confidence_is_undecidable():
  strict = confusion.Detector(LANGUAGES, min_confidence=0.999)
  loose = confusion.Detector(LANGUAGES, min_confidence=0.0)
  # a short proper name is not clearly German or English
  assert strict.identify("Manfred", "de") == ("undecidable", "low confidence")
  assert loose.identify("Manfred", "de")[1] == "langid"


def test_py3langid_coverage(detector):
  missing = sorted(c for c in LANGUAGES if not detector.has_model(c))
  assert missing == ["ceb"]


def sample(lang, pred, gold, gold_en, setup="zero_shot", query_type="reliability"):
  return {
      "dataset": "zsre",
      "setup": setup,
      "lang": lang,
      "query_type": query_type,
      "prediction": pred,
      "gold": gold,
      "gold_en": gold_en,
  }


def test_counts_and_rates(detector):
  rows = [
      sample("ru", "Moscow", "Москва", "Moscow"),  # english
      sample("ru", "Москва", "Москва", "Moscow"),  # target
      sample("ru", "", "Москва", "Moscow"),  # empty
      sample("ru", "1990", "1990", "1990"),  # undecidable
      sample("ru", "Moscow City", "Москва", "Moscow"),  # english (script)
      sample("ru", "Moscow", "Москва", "Moscow", query_type="locality"),
      sample("en", "Moscow", "Moscow", "Moscow"),  # English target: skipped
  ]
  counts, reasons = confusion.confusion_counts(rows, detector)
  assert counts[("zsre", "zero_shot", "ru", "reliability")] == {
      "target": 1,
      "english": 2,
      "undecidable": 1,
      "empty": 1,
  }
  assert counts[("zsre", "zero_shot", "ru", "locality")]["english"] == 1
  assert not any(k[2] == "en" for k in counts)
  assert reasons["equals English gold"] == 2 and reasons["Latin letters only"] == 1
  r = confusion.rates(counts[("zsre", "zero_shot", "ru", "reliability")])
  assert r == {
      "n": 5,
      "english": 40.0,
      "undecidable": 20.0,
      "empty": 20.0,
      "english_decided": round(100 * 2 / 3, 2),
  }
  assert (
      confusion.rates({"target": 0, "english": 0, "undecidable": 2, "empty": 0})["english_decided"]
      is None
  )


def test_validate_on_golds(detector):
  rows = [
      sample("ru", "x", "Москва", "Moscow"),
      sample("ru", "y", "Москва", "Moscow", setup="one_shot"),  # same pair: counted once
      sample("ru", "x", "Apple", "Apple Inc."),  # target gold in Latin: judged english
      sample("ru", "x", "2549", "2006"),  # numbers: neither is decided
      sample("ru", "x", "Adobe", "Adobe"),  # identical golds: left out
      sample("ja", "x", "ドイツ", "Germany"),
  ]
  v = confusion.validate(rows, detector)
  ru = v["ru"]
  assert ru["pairs"] == 3
  assert ru["decided"] == 4 and ru["correct"] == 3
  assert ru["target_ok"] == 1 and ru["english_ok"] == 2
  assert ru["accuracy"] == 75.0
  assert ru["coverage"] == round(100 * 4 / 6, 2)
  assert v["ja"]["accuracy"] == 100.0 and v["ja"]["coverage"] == 100.0


def test_two_way_models_do_not_touch_the_base(detector):
  detector.identify("die Hauptstadt von Deutschland", "de")
  detector.identify("la capitale de la France", "fr")
  assert len(detector._base.nb_classes) > 100
  assert set(detector._two_way["de"].nb_classes) == {"de", "en"}
