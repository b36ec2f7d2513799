import dataclasses
import json
import os
from pathlib import Path

import pytest

from bmike_jax import data
from bmike_jax.data import (
    DATASETS,
    QUERY_TYPES,
    SAMPLE_DATA_DIR,
    DataError,
    Demonstration,
    LoadedFile,
    Record,
    Side,
    dataset_path,
    default_data_dir,
    load_file,
    load_pool,
)
from tools.make_sample import RECORDS_PER_FILE, SAMPLE_LANGS, make_sample

from tests.data_dirs import HAS_REAL, REAL_DIR, needs_real

SIDE = {
    "case_id": 7,
    "subject": "S",
    "src": "Q?",
    "rephrase": "Q2?",
    "alt": "A",
    "loc": "L?",
    "loc_ans": "LA",
    "port": "P?",
    "port_ans": "PA",
}


# ---- real data ---------------------------------------------------------------------------


@needs_real
@pytest.mark.parametrize(
    "dataset, used, skipped, total",
    [("zsre", 704, 39, 743), ("counterfact", 1014, 17, 1031), ("wikifactdiff", 773, 11, 784)],
)
def test_real_hebrew_counts(dataset, used, skipped, total):
  loaded = load_file(REAL_DIR, dataset, "he")
  assert (len(loaded.records), loaded.n_skipped, loaded.n_total) == (used, skipped, total)
  assert len(loaded.skipped_indices) == skipped
  assert all(r.lang == "he" and r.target.case_id == r.en.case_id for r in loaded.records)


@needs_real
def test_real_skipped_records_are_those_without_the_side():
  raw = json.loads(dataset_path(REAL_DIR, "zsre", "he").read_text(encoding="utf-8"))
  loaded = load_file(REAL_DIR, "zsre", "he")
  assert loaded.skipped_indices == tuple(i for i, r in enumerate(raw) if "he" not in r)
  assert {r.index for r in loaded.records}.isdisjoint(loaded.skipped_indices)


@needs_real
@pytest.mark.parametrize(
    "dataset, total", [("zsre", 743), ("counterfact", 1031), ("wikifactdiff", 784)]
)
def test_real_english_target_is_the_en_side(dataset, total):
  loaded = load_file(REAL_DIR, dataset, "en")
  assert (len(loaded.records), loaded.n_skipped) == (total, 0)
  assert all(r.target is r.en for r in loaded.records)


@needs_real
def test_real_empty_loc_ans_in_wikifactdiff():
  for lang in ("en", "de", "th"):
    loaded = load_file(REAL_DIR, "wikifactdiff", lang)
    empty = sorted(r.case_id for r in loaded.records if r.target.loc_ans == "")
    assert empty == [883, 1118, 2191, 2746, 2870]
    assert sorted(r.case_id for r in loaded.records if r.en.loc_ans == "") == empty


@needs_real
def test_real_oud_record_keeps_the_quirk_visible():
  loaded = load_file(REAL_DIR, "wikifactdiff", "af")
  (odd,) = [r for r in loaded.records if r.target.stray_keys]
  assert (odd.index, odd.case_id) == (491, 3121)
  assert odd.target.old is None
  assert odd.target.stray_keys == ("oud",)
  assert dict(odd.target.stray_fields)["oud"] == "Noorse Publieke Padadministrasie"
  assert odd.en.old == "Norwegian Public Roads Administration"
  assert sum(r.target.old is None for r in loaded.records) == 1


@needs_real
def test_real_female_record_in_zsre_latin():
  loaded = load_file(REAL_DIR, "zsre", "la")
  (odd,) = [r for r in loaded.records if r.target.stray_keys]
  assert (odd.index, odd.case_id, odd.target.stray_keys) == (365, 365, ("female",))
  assert odd.target.old is None  # zsRE has no `old`


@needs_real
def test_real_old_only_in_counterfact_and_wikifactdiff():
  assert all(r.target.old is None for r in load_file(REAL_DIR, "zsre", "de").records)
  assert all(r.target.old is not None for r in load_file(REAL_DIR, "counterfact", "de").records)


@needs_real
def test_real_pools():
  for dataset in DATASETS:
    pool = load_pool(REAL_DIR, dataset, langs=("zh-cn", "en", "ceb"))
    assert [d.case_id for d in pool] == list(range(1, 33))
    assert [d.type for d in pool[:8]] == [
        "copy",
        "update",
        "update",
        "update",
        "retain",
        "retain",
        "portability",
        "portability",
    ]
    assert all(len(d.lines) == 53 for d in pool)
    assert all(d.new_fact.startswith('New fact: "') for d in pool)


@needs_real
def test_real_limit_counts_usable_records():
  full = load_file(REAL_DIR, "zsre", "he")
  first_skip = full.skipped_indices[0]
  cut = load_file(REAL_DIR, "zsre", "he", limit=first_skip + 2)
  assert [r.index for r in cut.records] == [r.index for r in full.records[: first_skip + 2]]
  assert first_skip not in [r.index for r in cut.records]
  assert (cut.n_total, cut.n_skipped) == (full.n_total, full.n_skipped)


# ---- shipped sample ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("lang", SAMPLE_LANGS)
def test_sample_loads(dataset, lang):
  loaded = load_file(SAMPLE_DATA_DIR, dataset, lang)
  assert isinstance(loaded, LoadedFile)
  assert (loaded.dataset, loaded.lang) == (dataset, lang)
  assert len(loaded.records) == RECORDS_PER_FILE
  assert loaded.n_total == RECORDS_PER_FILE + loaded.n_skipped


def test_sample_exercises_skipping():
  skipped = {
      (d, l): load_file(SAMPLE_DATA_DIR, d, l).n_skipped for d in DATASETS for l in SAMPLE_LANGS
  }
  assert {k for k, n in skipped.items() if n} == {
      ("zsre", "hi"),
      ("zsre", "zh"),
      ("wikifactdiff", "ru"),
  }


def test_sample_pools_are_complete_for_sample_languages():
  for dataset in DATASETS:
    pool = load_pool(SAMPLE_DATA_DIR, dataset, langs=SAMPLE_LANGS)
    assert len(pool) == 32 and all(isinstance(d, Demonstration) for d in pool)
    assert all(set(d.lines) == set(SAMPLE_LANGS) for d in pool)


def test_sample_record_fields():
  record = load_file(SAMPLE_DATA_DIR, "zsre", "de").records[0]
  assert record.case_id == 0 and record.index == 0
  assert record.en.src == "When was the inception of IAAF Combined Events Challenge?"
  assert (
      record.query("reliability")
      == "Wann wurde die IAAF Combined Events Challenge ins Leben gerufen?"
  )
  assert record.query("generality") == "Wann wurde die IAAF Combined Events Challenge gestartet?"
  assert record.query("locality") == "Wie lautet der Titel der letzten Episode von SpongeBob?"
  assert record.query("portability").startswith("Um welche Art von Sportveranstaltung")
  assert [record.gold(q) for q in QUERY_TYPES] == ["2006", "2006", "The String", "Leichtathletik"]
  assert [record.gold_en(q) for q in QUERY_TYPES] == ["2006", "2006", "The String", "Athletics"]
  with pytest.raises(ValueError, match="unknown query type 'fluency'.*reliability"):
    record.query("fluency")


def test_sample_alias_and_limit():
  loaded = load_file(SAMPLE_DATA_DIR, "zsre", "zh-cn", limit=2)
  assert loaded.lang == "zh" and len(loaded.records) == 2
  assert load_file(SAMPLE_DATA_DIR, "zsre", "de", limit=0).records == ()
  with pytest.raises(ValueError, match="limit"):
    load_file(SAMPLE_DATA_DIR, "zsre", "de", limit=-1)


def test_sample_is_small():
  total = sum(p.stat().st_size for p in SAMPLE_DATA_DIR.rglob("*") if p.is_file())
  assert total < 512 * 1024


@needs_real
def test_sample_regenerates_byte_identical(tmp_path):
  written = make_sample(REAL_DIR, tmp_path)
  shipped = sorted(p.relative_to(SAMPLE_DATA_DIR) for p in SAMPLE_DATA_DIR.rglob("*.json"))
  assert sorted(p.relative_to(tmp_path) for p in written) == shipped
  for rel in shipped:
    assert (tmp_path / rel).read_bytes() == (SAMPLE_DATA_DIR / rel).read_bytes(), rel


# ---- API details -------------------------------------------------------------------------


def test_records_are_frozen():
  record = load_file(SAMPLE_DATA_DIR, "counterfact", "ja").records[0]
  assert isinstance(record, Record) and isinstance(record.target, Side)
  with pytest.raises(dataclasses.FrozenInstanceError):
    record.target.alt = "x"
  assert record.target.old is not None and record.target.stray_keys == ()


def test_default_data_dir(monkeypatch):
  monkeypatch.delenv("BMIKE53_DIR", raising=False)
  assert default_data_dir() == SAMPLE_DATA_DIR
  assert (default_data_dir() / "zsRE" / "zsre_test_de.json").is_file()
  monkeypatch.setenv("BMIKE53_DIR", "/somewhere/bmike53")
  assert default_data_dir() == Path("/somewhere/bmike53")


def test_dataset_path():
  assert dataset_path("/d", "zsre", "zh-cn") == Path("/d/zsRE/zsre_test_zh.json")
  assert dataset_path("/d", "counterfact", "de") == Path("/d/CounterFact/counterfact_test_de.json")
  assert dataset_path("/d", "wikifactdiff", "en") == Path("/d/WikiFactDiff/wfd_test_en.json")


# ---- errors on small broken files ----------------------------------------------------------


def _write(tmp_path, obj, dataset="zsre", lang="de", raw=None):
  path = dataset_path(tmp_path, dataset, lang)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(raw if raw is not None else json.dumps(obj, ensure_ascii=False), encoding="utf-8")
  return path


def _error(tmp_path, obj=None, raw=None, dataset="zsre", lang="de"):
  path = _write(tmp_path, obj, dataset, lang, raw)
  with pytest.raises(DataError) as err:
    load_file(tmp_path, dataset, lang)
  assert str(path) in str(err.value)
  assert isinstance(err.value, ValueError)
  return err.value


def test_valid_small_file(tmp_path):
  _write(tmp_path, [{"en": SIDE, "de": SIDE}, {"en": SIDE}])
  loaded = load_file(tmp_path, "zsre", "de")
  assert (len(loaded.records), loaded.n_total, loaded.n_skipped, loaded.skipped_indices) == (
      1,
      2,
      1,
      (1,),
  )


def test_error_missing_file(tmp_path):
  with pytest.raises(DataError, match="zsre_test_de.json: file not found"):
    load_file(tmp_path, "zsre", "de")


def test_error_malformed_json(tmp_path):
  err = _error(tmp_path, raw='[\n {"en": \n')
  assert "malformed JSON at line 3 column 1" in str(err)


def test_error_not_utf8(tmp_path):
  path = dataset_path(tmp_path, "zsre", "de")
  path.parent.mkdir(parents=True)
  path.write_bytes(b'["\xff"]')
  with pytest.raises(DataError, match="not UTF-8"):
    load_file(tmp_path, "zsre", "de")


def test_error_top_level_not_list(tmp_path):
  assert "top level is an object, expected a list" in str(_error(tmp_path, {"en": SIDE}))


def test_error_record_not_object(tmp_path):
  err = _error(tmp_path, [{"en": SIDE, "de": SIDE}, ["en"]])
  assert err.index == 1 and "record 1: record is a list, expected an object" in str(err)


def test_error_side_not_object(tmp_path):
  err = _error(tmp_path, [{"en": SIDE, "de": "text"}])
  assert "record 0, field 'de': side is a string" in str(err)


def test_error_missing_required_field(tmp_path):
  side = {k: v for k, v in SIDE.items() if k != "loc_ans"}
  err = _error(tmp_path, [{"en": SIDE, "de": SIDE}, {"en": SIDE, "de": side}])
  assert (err.index, err.field) == (1, "de.loc_ans")
  assert "record 1, field 'de.loc_ans': missing required field" in str(err)


def test_error_missing_en_side(tmp_path):
  err = _error(tmp_path, [{"de": SIDE}])
  assert "record 0, field 'en': record has no 'en' side" in str(err)


@pytest.mark.parametrize(
    "name, value, described",
    [
        ("case_id", "7", "a string, expected an integer"),
        ("case_id", True, "a boolean, expected an integer"),
        ("alt", 2006, "an integer, expected a string"),
        ("src", None, "null, expected a string"),
        ("old", ["x"], "a list, expected a string"),
    ],
)
def test_error_wrong_type(tmp_path, name, value, described):
  err = _error(tmp_path, [{"en": SIDE, "de": {**SIDE, name: value}}], dataset="counterfact")
  assert f"record 0, field 'de.{name}': is {described}" in str(err)


def test_error_unknown_language_key(tmp_path):
  err = _error(tmp_path, [{"en": SIDE, "xx": SIDE}])
  assert "record 0, field 'xx': unknown language code 'xx'" in str(err)


def test_error_case_id_mismatch(tmp_path):
  err = _error(tmp_path, [{"en": SIDE, "de": {**SIDE, "case_id": 8}}])
  assert "case_id 8 differs from the en side's 7" in str(err)


def test_error_unknown_language_argument(tmp_path):
  with pytest.raises(DataError, match="unknown language code 'klingon'.*af, ar"):
    load_file(tmp_path, "zsre", "klingon")


def test_error_unknown_dataset(tmp_path):
  with pytest.raises(
      DataError, match="unknown dataset 'zsRE'; valid: zsre, counterfact, wikifactdiff"
  ):
    load_file(tmp_path, "zsRE", "de")
  with pytest.raises(DataError, match="unknown dataset"):
    load_pool(tmp_path, "mcounterfact")


def test_stray_keys_and_missing_old_do_not_crash(tmp_path):
  side = {k: v for k, v in SIDE.items()}
  _write(
      tmp_path, [{"en": {**SIDE, "old": "O"}, "de": {**side, "oud": "OU"}}], dataset="wikifactdiff"
  )
  record = load_file(tmp_path, "wikifactdiff", "de").records[0]
  assert record.target.old is None and record.en.old == "O"
  assert record.target.stray_fields == (("oud", "OU"),)


# ---- pool errors -------------------------------------------------------------------------

POOL_ENTRY = {
    "case_id": 1,
    "type": "copy",
    "new_fact": 'New fact: "Q? A"',
    "en": 'Question: "Q?" Answer: "A"',
    "de": 'Question: "F?" Answer: "A"',
}


def _write_pool(tmp_path, obj, dataset="zsre"):
  path = data.pool_path(tmp_path, dataset)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


def test_pool_missing_language(tmp_path):
  path = _write_pool(tmp_path, [POOL_ENTRY, {k: v for k, v in POOL_ENTRY.items() if k != "de"}])
  assert len(load_pool(tmp_path, "zsre")) == 2
  with pytest.raises(DataError) as err:
    load_pool(tmp_path, "zsre", langs=("de",))
  assert f"{path}, record 1, field 'de': pool entry has no line for language 'de'" == str(err.value)
  pool = load_pool(tmp_path, "zsre")
  with pytest.raises(DataError, match="record 1, field 'de'"):
    pool[1].line("de")


@pytest.mark.parametrize(
    "entry, expected",
    [
        (
            {k: v for k, v in POOL_ENTRY.items() if k != "new_fact"},
            "field 'new_fact': missing required field",
        ),
        ({**POOL_ENTRY, "case_id": "1"}, "field 'case_id': is a string, expected an integer"),
        ({**POOL_ENTRY, "xx": "line"}, "field 'xx': unknown language code 'xx'"),
        ({**POOL_ENTRY, "de": 3}, "field 'de': is an integer, expected a string"),
        ("entry", "record 0: pool entry is a string"),
    ],
)
def test_pool_errors(tmp_path, entry, expected):
  _write_pool(tmp_path, [entry])
  with pytest.raises(DataError, match=expected):
    load_pool(tmp_path, "zsre")


def test_pool_file_errors(tmp_path):
  with pytest.raises(DataError, match="zsre_multi.json: file not found"):
    load_pool(tmp_path, "zsre")
  _write_pool(tmp_path, {"entries": []})
  with pytest.raises(DataError, match="top level is an object"):
    load_pool(tmp_path, "zsre")
