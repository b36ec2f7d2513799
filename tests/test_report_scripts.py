"""Script groups: Latin vs non-Latin and per-script macro averages."""

from bmike_jax.analysis import scripts
from bmike_jax.languages import LANGUAGES


def cell(em, f1_ref=None):
  out = {"n": 10, "em": em}
  if f1_ref is not None:
    out["f1_ref"] = f1_ref
  return out


RESULTS = {
    "zsre": {
        "zero_shot": {
            "de": {"reliability": cell(60.0, 70.0), "locality": cell(10.0)},
            "fr": {"reliability": cell(40.0, 50.0)},
            "en": {"reliability": cell(99.0, 99.0)},  # source language: left out
            "ru": {"reliability": cell(30.0, 35.0)},
            "uk": {"reliability": cell(20.0, 25.0)},
            "ja": {"reliability": cell(11.0, 12.0)},
            "hi": {"reliability": cell(5.0)},  # no f1_ref: left out of f1_ref means
        },
    },
}


def test_latin_vs_non_latin():
  out = scripts.group_means(RESULTS, "em", scripts.latin_group, LANGUAGES)
  rel = out[("zsre", "zero_shot", "reliability")]
  assert rel["Latin"] == (50.0, 2)  # de, fr
  assert rel["non-Latin"] == (round((30 + 20 + 11 + 5) / 4, 2), 4)
  assert out[("zsre", "zero_shot", "locality")] == {"Latin": (10.0, 1)}


def test_per_script_and_missing_metric():
  out = scripts.group_means(RESULTS, "f1_ref", scripts.script_group, LANGUAGES)
  rel = out[("zsre", "zero_shot", "reliability")]
  assert rel == {"Latin": (60.0, 2), "Cyrillic": (30.0, 2), "Japanese": (12.0, 1)}
  assert ("zsre", "zero_shot", "locality") not in out


def test_unknown_language_and_custom_exclusion():
  results = {"d": {"s": {"xx": {"q": cell(1.0)}, "en": {"q": cell(80.0)}, "de": {"q": cell(20.0)}}}}
  out = scripts.group_means(results, "em", scripts.latin_group, LANGUAGES, exclude=())
  assert out[("d", "s", "q")] == {"Latin": (50.0, 2)}  # en kept, xx unknown


def test_groups_follow_languages_py():
  assert scripts.latin_group(LANGUAGES["sr"]) == "Latin"  # Latin in the test files
  assert scripts.latin_group(LANGUAGES["zh"]) == "non-Latin"
  assert scripts.script_group(LANGUAGES["ur"]) == "Arabic"
