import math

import numpy as np
import pytest

from bmike_jax.metrics import (
    aggregate,
    aggregate_rows,
    answer_tokens,
    exact_match,
    inverse_perplexity,
    likelihood_comparison,
    normalized_f1,
    reference_f1,
    score,
    token_f1,
)


def normalize_answer(text: str, lang: str) -> str:
  """The answer's normalized tokens (what f1_norm compares), joined for readable asserts."""
  return " ".join(answer_tokens(text, lang))


def test_exact_match_is_plain_string_equality():
  assert exact_match("2006", "2006") == 1.0
  assert exact_match(" 2006", "2006") == 0.0  # the reference keeps the answer as is
  assert exact_match("paris", "Paris") == 0.0
  assert exact_match("", "") == 1.0
  assert exact_match("", "x") == 0.0


def test_reference_f1_empty_rules():
  assert reference_f1([], []) == 1.0
  assert reference_f1([3], []) == 0.0
  assert reference_f1([], [3]) == 0.0


def test_reference_f1_is_precision_times_recall():
  assert reference_f1([1, 2, 3], [1, 2]) == pytest.approx(4 / 6)  # c=2
  assert reference_f1([1, 2], [1, 2]) == 1.0
  assert reference_f1([1, 2], [3, 4]) == 0.0
  assert reference_f1([5, 5, 5], [5, 7]) == pytest.approx(1 / 6)  # multiset: c=1
  assert reference_f1([5, 5], [5, 5, 7]) == pytest.approx(4 / 6)  # c=2
  assert reference_f1([7, 5, 5], [5, 7, 7, 5]) == pytest.approx(9 / 12)  # c=3


def _reference_loop(a_words, b_words):
  """The reference's overlap loop, transcribed, to cross-check the multiset count."""
  a_words, b_words, k = list(a_words), list(b_words), len(a_words) * len(b_words)
  hits = 0
  for word in a_words.copy():
    if word in b_words:
      a_words.remove(word)
      b_words.remove(word)
      hits += 1
  return hits * hits / k


def test_reference_f1_agrees_with_reference_loop():
  rng = np.random.default_rng(0)
  for _ in range(200):
    a = rng.integers(0, 5, rng.integers(1, 8)).tolist()
    b = rng.integers(0, 5, rng.integers(1, 8)).tolist()
    assert reference_f1(a, b) == pytest.approx(_reference_loop(a, b))


def test_token_f1_harmonic_mean():
  assert token_f1([], []) == 1.0
  assert token_f1([1], []) == 0.0
  assert token_f1([1, 2, 3], [1, 2]) == pytest.approx(0.8)  # P=2/3 R=1
  assert token_f1([5, 5, 5], [5, 7]) == pytest.approx(0.4)  # c=1 P=1/3 R=1/2
  assert token_f1([5, 5], [5, 5, 7]) == pytest.approx(0.8)  # c=2 P=1 R=2/3
  assert token_f1([1, 2], [3, 4]) == 0.0


def test_normalize_english_punctuation_and_articles():
  assert normalize_answer("The Eiffel Tower!", "en") == "eiffel tower"
  assert normalize_answer("  A  cat, an owl ", "en") == "cat owl"
  assert normalize_answer("theatre", "en") == "theatre"  # whole words only
  assert normalize_answer("$1,000", "en") == "1000"  # ASCII symbols too, as MLQA
  assert normalized_f1("The Eiffel Tower.", "eiffel tower", "en") == 1.0


def test_normalize_unicode_punctuation():
  assert normalize_answer("«Paris»", "fr") == "paris"
  assert normalize_answer("„Berlin“ – Stadt", "de") == "berlin stadt"
  assert normalize_answer("東京。", "ja") == "東 京"
  assert normalized_f1("¿Madrid?", "madrid", "es") == 1.0


def test_articles_only_for_mlqa_languages():
  assert normalize_answer("Der Erste Weltkrieg", "de") == "erste weltkrieg"
  assert normalized_f1("Der Erste Weltkrieg", "Erster Weltkrieg", "de") == pytest.approx(0.5)
  assert normalize_answer("La Paz", "es") == "paz"
  assert normalize_answer("La Paz", "fr") == "la paz"
  assert normalize_answer("The String", "nl") == "the string"
  assert normalize_answer("những con mèo", "vi") == "con mèo"
  # MLQA replaces every Arabic "ال" by a space, even inside words ("عالمية" -> "ع", "مية").
  assert answer_tokens("الحرب العالمية الأولى", "ar") == ["حرب", "ع", "مية", "أولى"]
  assert normalized_f1("الحرب العالمية الأولى", "حرب عالمية أولى", "ar") == 1.0


def test_cjk_thai_hangul_split_into_characters():
  assert answer_tokens("第一次世界大战", "zh") == list("第一次世界大战")
  # 7 vs 4 characters, all 4 shared: P=4/7 R=1 -> 8/11
  assert normalized_f1("第一次世界大战", "世界大战", "zh") == pytest.approx(8 / 11)
  assert answer_tokens("東京 Tower", "ja") == ["東", "京", "tower"]
  assert answer_tokens("カタカナとひらがな", "ja") == list("カタカナとひらがな")
  assert answer_tokens("서울 특별시", "ko") == ["서", "울", "특", "별", "시"]
  assert answer_tokens("ลอนดอน", "th") == list("ลอนดอน")
  # 10 vs 6 Thai characters, the 6 all shared: P=6/10 R=1 -> 0.75
  assert normalized_f1("กรุงลอนดอน", "ลอนดอน", "th") == pytest.approx(0.75)
  assert normalized_f1("2006", "พ.ศ. 2549", "th") == 0.0  # Buddhist calendar year


def test_normalized_f1_empty_rules():
  assert normalized_f1("", "", "en") == 1.0
  assert normalized_f1("The", "", "en") == 1.0  # both empty once normalized
  assert normalized_f1("", "Paris", "en") == 0.0
  assert normalized_f1("!!", "Paris", "fr") == 0.0
  assert normalized_f1("Paris", "", "fr") == 0.0


def test_normalized_f1_language_code_checked():
  assert normalized_f1("x", "x", "zh-cn") == 1.0
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    normalized_f1("x", "x", "xx")


def test_inverse_perplexity():
  assert inverse_perplexity([math.log(0.5), math.log(0.5)]) == pytest.approx(0.5)
  assert inverse_perplexity([math.log(0.25), 0.0]) == pytest.approx(0.5)  # geometric mean
  assert inverse_perplexity(np.log(np.array([0.5, 0.5, 0.5], dtype=np.float32))) == pytest.approx(
      0.5
  )
  assert inverse_perplexity([0.0]) == 1.0
  with pytest.raises(ValueError, match="at least one continuation token"):
    inverse_perplexity([])


def test_likelihood_comparison():
  assert likelihood_comparison(0.5, 0.25) == (1.0, 0.25)
  assert likelihood_comparison(0.3, 0.3) == (0.0, 0.0)  # a tie is no success, as in the reference
  success, magnitude = likelihood_comparison(0.1, 0.4)
  assert success == 0.0 and magnitude == pytest.approx(-0.3)


def test_aggregate():
  assert aggregate([1, 0, 1, 1]) == {"n": 4, "mean": 0.75}
  assert aggregate([0.5]) == {"n": 1, "mean": 0.5}
  assert aggregate([]) == {"n": 0, "mean": None}


def test_score_rounds_like_reference_my_avg():
  assert score([1, 0, 1, 1]) == 75.0
  assert score([1, 0, 0]) == 33.33
  assert score([1, 1, 0]) == 66.67
  assert score([0.125]) == 12.5
  assert score([]) is None
  # 23 of 160: sum*100/n is exactly 14.375 and rounds (half to even) to 14.38, as the
  # reference's my_avg; 100*mean would be 14.374999999999998 and round to 14.37.
  values = [1.0] * 23 + [0.0] * 137
  assert score(values) == 14.38
  assert round(100 * aggregate(values)["mean"], 2) == 14.37


def _row(dataset, setup, lang, query_type, em, f1_ref=0.5, f1=0.5, f1_norm=0.5, **extra):
  return {
      "dataset": dataset,
      "setup": setup,
      "lang": lang,
      "query_type": query_type,
      "case_id": 0,
      "em": em,
      "f1_ref": f1_ref,
      "f1": f1,
      "f1_norm": f1_norm,
      **extra,
  }


def test_aggregate_rows_nested_results():
  rows = [
      _row("zsre", "zero_shot", "de", "reliability", 1.0, f1_ref=1.0, f1=1.0, f1_norm=1.0),
      _row("zsre", "zero_shot", "de", "reliability", 0.0, f1_ref=0.25, f1=0.5, f1_norm=0.0),
      _row("zsre", "zero_shot", "de", "locality", 0.0),
      _row("zsre", "one_shot", "th", "reliability", 1.0),
  ]
  results = aggregate_rows(rows)
  assert results == {
      "zsre": {
          "zero_shot": {
              "de": {
                  "reliability": {"n": 2, "em": 50.0, "f1_ref": 62.5, "f1": 75.0, "f1_norm": 50.0},
                  "locality": {"n": 1, "em": 0.0, "f1_ref": 50.0, "f1": 50.0, "f1_norm": 50.0},
              }
          },
          "one_shot": {
              "th": {
                  "reliability": {"n": 1, "em": 100.0, "f1_ref": 50.0, "f1": 50.0, "f1_norm": 50.0}
              }
          },
      }
  }


def test_aggregate_rows_likelihood_reference_and_corrected():
  lik = dict(dataset="wikifactdiff", setup="few_shot_specific", lang="af", query_type="reliability")
  rows = [
      _row(
          **lik, em=1.0, inv_ppl_alt=0.5, inv_ppl_loc_ans=0.25, inv_ppl_old=0.75
      ),  # loc: +0.25 win; old: -0.25
      _row(
          **lik, em=0.0, inv_ppl_alt=0.25, inv_ppl_loc_ans=0.5, inv_ppl_old=0.125
      ),  # loc: -0.25;     old: +0.125 win
      _row(
          **lik, em=0.0, inv_ppl_alt=0.5, inv_ppl_loc_ans=0.0, inv_ppl_old=None
      ),  # loc: +0.5 win; no old (`oud`)
  ]
  leaf = aggregate_rows(rows, metrics=("em",))["wikifactdiff"]["few_shot_specific"]["af"][
      "reliability"
  ]
  # EM rounded to 2 decimals; the likelihood figures unrounded, as the reference prints them
  assert leaf == {
      "n": 3,
      "em": 33.33,
      "lik_success_loc_ans": 200 / 3,
      "lik_magnitude_loc_ans": 50 / 3,  # (0.25 - 0.25 + 0.5) / 3
      "lik_success_old": 50.0,
      "lik_magnitude_old": -6.25,  # (-0.25 + 0.125) / 2
      "n_lik_loc_ans": 3,
      "n_lik_old": 2,
  }


def test_aggregate_rows_likelihood_without_usable_pairs():
  row = _row(
      "counterfact",
      "zero_shot",
      "ru",
      "generality",
      1.0,
      inv_ppl_alt=None,
      inv_ppl_loc_ans=None,
      inv_ppl_old=None,
  )
  leaf = aggregate_rows([row], metrics=("em",))["counterfact"]["zero_shot"]["ru"]["generality"]
  assert leaf == {
      "n": 1,
      "em": 100.0,
      "lik_success_loc_ans": None,
      "lik_magnitude_loc_ans": None,
      "n_lik_loc_ans": 0,
      "lik_success_old": None,
      "lik_magnitude_old": None,
      "n_lik_old": 0,
  }


def test_aggregate_rows_custom_keys_and_missing_metric():
  rows = [
      _row("zsre", "zero_shot", "de", "reliability", 1.0),
      _row("zsre", "zero_shot", "ru", "reliability", 0.0),
  ]
  assert aggregate_rows(rows, keys=("dataset",), metrics=("em",)) == {"zsre": {"n": 2, "em": 50.0}}
  with pytest.raises(ValueError, match="no value for metric 'f1_norm'"):
    aggregate_rows([{**rows[0], "f1_norm": None}])
