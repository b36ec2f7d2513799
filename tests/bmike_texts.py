"""Real BMIKE-53 text for model and tokenizer tests: the full data (tests/data_dirs.py) when
present, else the sample shipped in the package (en de ru ar hi zh ja th)."""

from __future__ import annotations

from pathlib import Path

from bmike_jax import data, prompts
from tests.data_dirs import HAS_REAL, REAL_DIR

# One language per script: Latin, Cyrillic, Arabic, Devanagari, CJK (zh, ja), Thai.
SCRIPT_LANGS = ("de", "ru", "ar", "hi", "zh", "ja", "th")
# More scripts when the full data is there: Greek, Hebrew, Korean, Armenian, Georgian, Tamil, Bengali.
EXTRA_LANGS = ("el", "he", "ko", "hy", "ka", "ta", "bn", "vi", "uk")


def data_dir() -> Path:
  return REAL_DIR if HAS_REAL else data.SAMPLE_DATA_DIR


def langs() -> tuple[str, ...]:
  return SCRIPT_LANGS + (EXTRA_LANGS if HAS_REAL else ())


def bmike_prompts(
    langs_=SCRIPT_LANGS,
    setups=("zero_shot", "one_shot"),
    dataset="zsre",
    query_types=("reliability",),
    record_index=0,
) -> list[tuple[str, str]]:
  """(label, prompt text) of real BMIKE-53 prompts: per language one record (the
  `record_index`-th usable one), every setup; the query type cycles through `query_types` over
  the languages."""
  pool = data.load_pool(data_dir(), dataset)
  out = []
  for n, lang in enumerate(langs_):
    records = data.load_file(data_dir(), dataset, lang, limit=record_index + 1).records
    record, query_type = (
        records[min(record_index, len(records) - 1)],
        query_types[n % len(query_types)],
    )
    for setup in setups:
      out.append(
          (
              f"{dataset}/{lang}/{setup}/{query_type}/{record.case_id}",
              prompts.build_prompt(pool, setup, lang, record, query_type),
          )
      )
  return out


def bmike_strings(limit_per_lang: int = 6) -> list[str]:
  """Questions and answers of every query type, in many scripts (targets and English sides)."""
  out = []
  for lang in langs():
    for dataset in ("zsre", "counterfact"):
      for record in data.load_file(data_dir(), dataset, lang, limit=limit_per_lang).records:
        for qt in data.QUERY_TYPES:
          out += [record.query(qt), record.gold(qt)]
        out += [record.en.src, record.en.alt]
  return [s for s in out if s]
