import importlib.util
import json
import unicodedata
from pathlib import Path

import pytest

from bmike_jax.data import SAMPLE_DATA_DIR, load_file, load_pool
from bmike_jax.languages import LANGUAGES, SCRIPT_NAME_PREFIXES, Language, normalize_lang, script_share

from tests.data_dirs import HAS_REAL, REAL_DIR, needs_real

SPEC_CODES = (
    "af ar az be bg bn ca ceb cs cy da de el en es et eu fa fi fr ga gl he hi hr hu hy id it ja ka "
    "ko la lt lv ms nl pl pt ro ru sk sl sq sr sv ta th tr uk ur vi zh"
).split()
SAMPLE_CODES = ("en", "de", "ru", "ar", "hi", "zh", "ja", "th")


def test_all_53_codes_present():
  assert len(SPEC_CODES) == 53
  assert sorted(LANGUAGES) == sorted(SPEC_CODES)


def test_language_records_are_consistent():
  for code, lang in LANGUAGES.items():
    assert lang.code == code
    assert lang.script in SCRIPT_NAME_PREFIXES
    assert lang.is_latin == (lang.script == "Latin")
    assert len(lang.iso639_3) == 3 and lang.iso639_3.isalpha() and lang.iso639_3.islower()
  assert len({lang.iso639_3 for lang in LANGUAGES.values()}) == 53
  assert LANGUAGES["en"].name == "English"
  assert (
      LANGUAGES["en"].iso639_3,
      LANGUAGES["de"].iso639_3,
      LANGUAGES["zh"].iso639_3,
      LANGUAGES["ceb"].iso639_3,
  ) == ("eng", "deu", "zho", "ceb")


def test_language_rejects_contradictory_is_latin():
  with pytest.raises(ValueError, match="is_latin"):
    Language("xx", "X", "Cyrillic", True, "xxx")


def test_language_is_frozen():
  with pytest.raises(AttributeError):
    LANGUAGES["en"].name = "Other"


def test_normalize_lang_aliases_and_errors():
  assert normalize_lang("zh-cn") == "zh"
  assert normalize_lang("zh-CN") == "zh"
  assert normalize_lang("ceb") == "ceb"
  with pytest.raises(ValueError) as err:
    normalize_lang("xx")
  assert "'xx'" in str(err.value) and "af, ar" in str(err.value) and "zh" in str(err.value)
  with pytest.raises(ValueError, match="unknown language code None"):
    normalize_lang(None)


def test_script_share_counts_letters_only():
  assert script_share("Привет, мир 123!", "Cyrillic") == 1.0
  assert script_share("abc где", "Latin") == 0.5
  assert script_share("123 ...", "Latin") == 0.0
  assert script_share("東京へ行く", "Japanese") == 1.0
  assert script_share("東京へ行く", "Han") == 0.6


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_names_match_lang_json(code):
  dirs = [SAMPLE_DATA_DIR] + ([REAL_DIR] if HAS_REAL else [])
  for data_dir in dirs:
    names = json.loads((data_dir / "lang.json").read_text(encoding="utf-8"))
    if code in names:
      assert names[code] == LANGUAGES[code].name
  if HAS_REAL and code != "en":
    assert code in json.loads((REAL_DIR / "lang.json").read_text(encoding="utf-8"))


def _target_text(data_dir, lang):
  loaded = load_file(data_dir, "zsre", lang)
  return "".join(r.target.src + r.target.rephrase for r in loaded.records)


def _assert_script_dominates(text, claimed):
  share = script_share(text, claimed)
  assert share > 0.5, f"only {share:.2f} of the letters are {claimed}"
  for other, prefixes in SCRIPT_NAME_PREFIXES.items():
    if other != claimed and not set(SCRIPT_NAME_PREFIXES[claimed]) <= set(prefixes):
      assert script_share(text, other) < share, f"{other} outweighs {claimed}"


@needs_real
@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_script_matches_real_data(code):
  _assert_script_dominates(_target_text(REAL_DIR, code), LANGUAGES[code].script)


@pytest.mark.parametrize("code", SAMPLE_CODES)
def test_script_matches_sample_data(code):
  _assert_script_dominates(_target_text(SAMPLE_DATA_DIR, code), LANGUAGES[code].script)


@pytest.mark.parametrize("data_dir", [SAMPLE_DATA_DIR, pytest.param(REAL_DIR, marks=needs_real)])
def test_chinese_has_no_kana_and_japanese_does(data_dir):
  def kana_share(text):
    letters = [ch for ch in text if ch.isalpha()]
    return sum(
        unicodedata.name(ch, "").startswith(("HIRAGANA", "KATAKANA")) for ch in letters
    ) / len(letters)

  assert kana_share(_target_text(data_dir, "zh")) < 0.01
  assert kana_share(_target_text(data_dir, "ja")) > 0.3


@needs_real
def test_serbian_is_latin_in_test_files_but_cyrillic_in_pools():
  assert script_share(_target_text(REAL_DIR, "sr"), "Latin") > 0.9
  pool = load_pool(REAL_DIR, "zsre")
  lines = "".join(d.lines["sr"].replace("Question:", "").replace("Answer:", "") for d in pool)
  assert script_share(lines, "Cyrillic") > 0.9


def test_iso_codes_match_lang2vec_table():
  spec = importlib.util.find_spec("lang2vec")
  table = Path(spec.submodule_search_locations[0]) / "data" / "letter_codes.json" if spec else None
  if table is None or not table.is_file():
    pytest.skip("lang2vec data not installed")
  letter_codes = json.loads(table.read_text())
  for code, lang in LANGUAGES.items():
    assert letter_codes.get(code, code) == lang.iso639_3, code
