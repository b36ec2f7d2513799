"""Typology: lang2vec similarities (offline) and correlations checked against scipy / numpy."""

import importlib
import os
import sys
import types
import warnings

import numpy as np
import pytest
from scipy import stats

from bmike_jax.analysis import typology
from bmike_jax.languages import LANGUAGES, Language


@pytest.fixture(scope="module")
def similarities():
  return typology.similarity_to_english(LANGUAGES)


def test_every_language_but_english_has_four_similarities(similarities):
  sims, excluded = similarities
  assert excluded == {}
  assert set(sims) == set(LANGUAGES) - {"en"}
  for lang, values in sims.items():
    assert set(values) == set(typology.FEATURES), lang
    assert all(-1.0 <= v <= 1.0 + 1e-9 for v in values.values()), lang


def test_similarities_are_plausible(similarities):
  sims, _ = similarities
  # Germanic languages are closer to English than Japanese in syntax and genealogy
  for feature in ("syntactic", "genetic"):
    assert sims["de"][feature] > sims["ja"][feature]
    assert sims["nl"][feature] > sims["zh"][feature]
  assert sims["eu"]["genetic"] == 0.0  # an isolate shares no family node with English


def import_lang2vec(monkeypatch):
  """lang2vec.lang2vec, with a stand-in pkg_resources when setuptools lacks it."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources' deprecation warning
    try:
      import pkg_resources  # noqa: F401
    except ImportError:
      stand_in = types.ModuleType("pkg_resources")
      stand_in.resource_filename = lambda name, rel: os.path.join(
          os.path.dirname(sys.modules[name].__file__), rel
      )
      monkeypatch.setitem(sys.modules, "pkg_resources", stand_in)
    return importlib.import_module("lang2vec.lang2vec")


def test_vectors_equal_lang2vec_get_features(monkeypatch):
  l2v = import_lang2vec(monkeypatch)
  codes = ("eng", "deu", "jpn", "srp")
  for feature_set in ("syntax_knn", "phonology_knn", "geo"):  # fam: minutes in lang2vec
    assert l2v.FEATURE_SETS_DICT[feature_set] == typology.LANG2VEC_SETS[feature_set]
    table = l2v.get_features(list(codes), feature_set)
    ours, missing = typology.feature_vectors(codes, feature_set)
    assert missing == {}
    for code in codes:
      theirs = np.array([np.nan if v == "--" else v for v in table[code]], float)
      np.testing.assert_allclose(ours[code], theirs, err_msg=f"{feature_set} {code}")
  assert l2v.FEATURE_SETS_DICT["fam"] == typology.LANG2VEC_SETS["fam"]


def test_cosine_of_syntax_vectors():
  vectors, _ = typology.feature_vectors(("deu", "eng"), "syntax_knn")
  a, b = vectors["deu"], vectors["eng"]
  expected = float(a @ b / np.sqrt((a @ a) * (b @ b)))
  sims, _ = typology.similarity_to_english({"de": LANGUAGES["de"]})
  assert sims["de"]["syntactic"] == pytest.approx(expected)


def test_family_vectors_share_germanic_nodes():
  vectors, _ = typology.feature_vectors(("deu", "eng", "jpn"), "fam")
  assert np.nansum(vectors["deu"] * vectors["eng"]) >= 2  # Indo-European, Germanic, ...
  assert np.nansum(vectors["jpn"] * vectors["eng"]) == 0


def test_unknown_language_is_excluded():
  langs = {"de": LANGUAGES["de"], "zz": Language("zz", "Nowhere", "Latin", True, "qqq")}
  sims, excluded = typology.similarity_to_english(langs)
  assert set(sims) == {"de"}
  assert "zz" in excluded and "not in lang2vec" in excluded["zz"]


def test_cosine_similarity_missing_and_zero():
  nan = np.nan
  assert typology.cosine_similarity(
      np.array([1.0, nan, 0.0]), np.array([1.0, 5.0, 1.0])
  ) == pytest.approx(2**-0.5)
  assert typology.cosine_similarity(np.array([nan]), np.array([1.0])) is None
  assert typology.cosine_similarity(np.zeros(3), np.ones(3)) == 0.0


def ranks(values):
  return stats.rankdata(values)


def test_correlate_matches_scipy_and_numpy():
  rng = np.random.default_rng(1)
  xs = rng.uniform(0, 1, 12)
  ys = 40 + 30 * xs + rng.normal(0, 5, 12)
  ys[3] = ys[7]  # a tie for Spearman
  out = typology.correlate(list(xs), list(ys))
  assert out["n"] == 12
  assert out["pearson_r"] == pytest.approx(np.corrcoef(xs, ys)[0, 1])
  assert out["spearman_rho"] == pytest.approx(np.corrcoef(ranks(xs), ranks(ys))[0, 1])
  assert out["pearson_p"] == pytest.approx(stats.pearsonr(xs, ys).pvalue)
  assert out["spearman_p"] == pytest.approx(stats.spearmanr(xs, ys).pvalue)
  # Pearson p from the t distribution, computed here independently
  r = out["pearson_r"]
  t = r * np.sqrt((12 - 2) / (1 - r * r))
  assert out["pearson_p"] == pytest.approx(2 * stats.t.sf(abs(t), 10))


def test_correlate_needs_three_and_variation():
  assert typology.correlate([0.1, 0.2], [1.0, 2.0])["pearson_r"] is None
  assert typology.correlate([0.1, 0.2], [1.0, 2.0])["n"] == 2
  assert typology.correlate([0.1, 0.2, 0.3], [5.0, 5.0, 5.0])["spearman_rho"] is None
  perfect = typology.correlate([0.1, 0.2, 0.3], [1.0, 3.0, 2.0])
  assert perfect["spearman_rho"] == pytest.approx(0.5)


def test_correlations_pair_languages_and_skip_missing():
  sims = {
      "de": {"syntactic": 0.9},
      "fr": {"syntactic": 0.8},
      "ru": {"syntactic": 0.7},
      "ja": {"syntactic": 0.5},
  }
  by_lang = {
      "de": {"reliability": {"em": 60.0}},
      "fr": {"reliability": {"em": 55.0}},
      "ru": {"reliability": {"em": 30.0}},
      "ja": {"reliability": {"em": 35.0}},
      "en": {"reliability": {"em": 99.0}},  # left out
      "xx": {"reliability": {"em": 1.0}},
  }  # no similarity: left out
  out = typology.correlations({"zsre": {"zero_shot": by_lang}}, sims, ("em",))
  got = out[("zsre", "zero_shot", "reliability", "em", "syntactic")]
  xs, ys = [0.9, 0.8, 0.7, 0.5], [60.0, 55.0, 30.0, 35.0]
  assert got["n"] == 4
  assert got["pearson_r"] == pytest.approx(stats.pearsonr(xs, ys).statistic)
  assert got["spearman_rho"] == pytest.approx(0.8)  # ranks 4,3,2,1 vs 4,3,1,2
  assert out[("zsre", "zero_shot", "reliability", "em", "genetic")]["pearson_r"] is None
