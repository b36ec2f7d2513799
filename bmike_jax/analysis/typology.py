"""Typological similarity to English (URIEL via lang2vec) and its correlation with scores.

lang2vec 1.1.2 (the installed version) has no distance function (later versions download
precomputed URIEL distances at run time, which this offline engine cannot do). So the
similarity is computed here from the URIEL feature vectors that lang2vec ships in its
`data/` folder:

    similarity(L) = cosine(vector(L), vector(eng))

over the entries both vectors have (lang2vec marks missing values -1). Feature sets:
syntactic `syntax_knn`, phonological `phonology_knn` (both kNN-imputed, so complete),
geographic `geo` (URIEL GEOCOORDS: distances to 299 fixed points on the globe) and genetic
`fam` (membership in each Glottolog family node; the cosine of two such 0/1 vectors is the
number of shared nodes over the geometric mean of the node counts, and a language with no
family node, an isolate such as Basque, gets 0).

The vectors are read from lang2vec's data files with numpy, selecting exactly what
`lang2vec.get_features` selects (same file, source and feature-name prefix; a test checks
that the two agree). lang2vec's own `get_features` is not called at run time: it re-reads
the compressed arrays once per language and per feature name (minutes for `fam`), and its
module needs `pkg_resources`, which setuptools >= 81 no longer ships.
"""

import functools
import importlib.util
import math
import os
import warnings

import numpy as np
from scipy import stats

FEATURES = {
    "syntactic": "syntax_knn",
    "phonological": "phonology_knn",
    "geographic": "geo",
    "genetic": "fam",
}
# lang2vec's FEATURE_SETS_DICT entries of the four sets: (file, source, feature prefix)
LANG2VEC_SETS = {
    "syntax_knn": ("feature_predictions.npz", "predicted", "S_"),
    "phonology_knn": ("feature_predictions.npz", "predicted", "P_"),
    "geo": ("geocoord_features.npz", "GEOCOORDS", ""),
    "fam": ("family_features.npz", "FAM", ""),
}
ENGLISH_ISO = "eng"
SOURCE_LANG = "en"
MIN_LANGUAGES = 3
METHOD = (
    "cosine similarity to English of the URIEL vectors shipped with lang2vec 1.1.2 "
    "(syntax_knn, phonology_knn, geo, fam), read from its data files; that version "
    "has no distance function"
)


def lang2vec_data_dir():
  """The `data/` folder of the installed lang2vec package (found without importing it)."""
  spec = importlib.util.find_spec("lang2vec")
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError("lang2vec is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=16)
def feature_vectors(iso_codes, feature_set):
  """({iso: vector}, {iso: reason}) for the codes lang2vec knows / does not know.

  iso_codes: a tuple of ISO 639-3 codes. Missing values (-1) become NaN.
  """
  filename, source, prefix = LANG2VEC_SETS[feature_set]
  with np.load(os.path.join(lang2vec_data_dir(), filename)) as database:
    langs = {code: i for i, code in enumerate(database["langs"].tolist())}
    columns = [i for i, name in enumerate(database["feats"].tolist()) if name.startswith(prefix)]
    source_index = int(np.where(database["sources"] == source)[0][0])
    data = database["data"]
  vectors, missing = {}, {}
  for code in iso_codes:
    if code not in langs:
      missing[code] = f"not in lang2vec {feature_set}"
      continue
    vector = data[langs[code], columns, source_index].astype(np.float64)
    vector[vector == -1.0] = np.nan
    vectors[code] = vector
  return vectors, missing


def cosine_similarity(a, b):
  """Cosine over the entries present in both (NaN = missing); None when none is; 0.0
  when one vector is all zeros there."""
  present = ~(np.isnan(a) | np.isnan(b))
  if not present.any():
    return None
  a, b = a[present], b[present]
  norm = float(np.linalg.norm(a) * np.linalg.norm(b))
  if norm == 0.0:
    return 0.0
  return float(np.dot(a, b) / norm)


def similarity_to_english(languages, exclude=(SOURCE_LANG,)):
  """({lang: {feature: similarity}}, {lang: reason}) for the languages of `languages`.

  A language is excluded (and listed with the reason) when lang2vec lacks it for any of
  the four feature sets, or a similarity cannot be computed.
  """
  langs = [code for code in languages if code not in exclude]
  iso = {code: languages[code].iso639_3 for code in langs}
  similarities = {code: {} for code in langs}
  excluded = {}
  for feature, feature_set in FEATURES.items():
    codes = tuple(sorted({ENGLISH_ISO, *iso.values()}))
    vectors, missing = feature_vectors(codes, feature_set)
    if ENGLISH_ISO not in vectors:
      raise RuntimeError(f"lang2vec has no {feature_set} vector for English")
    for code in langs:
      if iso[code] in missing:
        excluded.setdefault(code, missing[iso[code]])
        continue
      value = cosine_similarity(vectors[iso[code]], vectors[ENGLISH_ISO])
      if value is None:
        excluded.setdefault(code, f"no {feature_set} values shared with English")
      else:
        similarities[code][feature] = value
  return {c: s for c, s in similarities.items() if c not in excluded}, excluded


def correlate(xs, ys):
  """Pearson and Spearman of paired values, with p-values.

  Returns {"n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"}; the four
  statistics are None when n < MIN_LANGUAGES or either side is constant.
  """
  xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
  out = {
      "n": int(len(xs)),
      "pearson_r": None,
      "pearson_p": None,
      "spearman_rho": None,
      "spearman_p": None,
  }
  if len(xs) < MIN_LANGUAGES or np.ptp(xs) == 0 or np.ptp(ys) == 0:
    return out
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pearson = stats.pearsonr(xs, ys)
    spearman = stats.spearmanr(xs, ys)
  values = (
      float(pearson.statistic),
      float(pearson.pvalue),
      float(spearman.statistic),
      float(spearman.pvalue),
  )
  if any(math.isnan(v) for v in values):
    return out
  out.update(zip(("pearson_r", "pearson_p", "spearman_rho", "spearman_p"), values))
  return out


def correlations(results, similarities, metrics, exclude=(SOURCE_LANG,)):
  """Correlation of per-language scores with each similarity.

  Returns {(dataset, setup, query_type, metric, feature): correlate(...) result}.
  """
  out = {}
  for dataset, by_setup in results.items():
    for setup, by_lang in by_setup.items():
      query_types = sorted({q for cells in by_lang.values() for q in cells})
      for query_type in query_types:
        for metric in metrics:
          for feature in FEATURES:
            xs, ys = [], []
            for lang, cells in sorted(by_lang.items()):
              value = cells.get(query_type, {}).get(metric)
              sim = similarities.get(lang, {}).get(feature)
              if lang in exclude or value is None or sim is None:
                continue
              xs.append(sim)
              ys.append(value)
            out[(dataset, setup, query_type, metric, feature)] = correlate(xs, ys)
  return out
