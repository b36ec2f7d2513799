"""Typed, validated records of the BMIKE-53 files and demonstration pools.

Layout (`bmike53/` or the shipped `sample_data/`):
`zsRE/zsre_test_{lang}.json`, `CounterFact/counterfact_test_{lang}.json`,
`WikiFactDiff/wfd_test_{lang}.json`, `manual_prompts/{zsre,mcounterfact,wfd}_multi.json`.

Each test file is a JSON list of `{"en": side, "<lang>": side}`. `*_test_en.json` holds
`en` + `de`; for target language `en` the target side is the `en` side itself. Records
without the target side are skipped and counted, as the reference does. Unexpected keys
of a side (`oud`, `female` in the real files) are kept in `Side.stray_fields`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmike_jax.languages import LANGUAGES, normalize_lang
from bmike_jax.paths import as_path  # a local folder or gs://

DATASETS = ("zsre", "counterfact", "wikifactdiff")
QUERY_TYPES = ("reliability", "generality", "locality", "portability")

# dataset -> (folder, file prefix, pool file)
DATASET_FILES = {
    "zsre": ("zsRE", "zsre", "zsre_multi.json"),
    "counterfact": ("CounterFact", "counterfact", "mcounterfact_multi.json"),
    "wikifactdiff": ("WikiFactDiff", "wfd", "wfd_multi.json"),
}
POOL_FOLDER = "manual_prompts"
QUESTION_FIELD = {
    "reliability": "src",
    "generality": "rephrase",
    "locality": "loc",
    "portability": "port",
}
ANSWER_FIELD = {
    "reliability": "alt",
    "generality": "alt",
    "locality": "loc_ans",
    "portability": "port_ans",
}

SIDE_FIELDS = ("case_id", "subject", "src", "alt", "rephrase", "loc", "loc_ans", "port", "port_ans")
OPTIONAL_SIDE_FIELDS = ("old",)
POOL_FIELDS = {"case_id": int, "type": str, "new_fact": str}

SAMPLE_DATA_DIR = Path(__file__).resolve().parent / "sample_data"
DATA_DIR_ENV = "BMIKE53_DIR"


class DataError(ValueError):
  """A problem with a data file: names the file, record index, field and the fault."""

  def __init__(self, path: Any, problem: str, index: int | None = None, field: str | None = None):
    self.path, self.problem, self.index, self.field = str(path), problem, index, field
    where = [self.path]
    if index is not None:
      where.append(f"record {index}")
    if field is not None:
      where.append(f"field {field!r}")
    super().__init__(f"{', '.join(where)}: {problem}")


@dataclass(frozen=True)
class Side:
  case_id: int
  subject: str
  src: str
  alt: str
  rephrase: str
  loc: str
  loc_ans: str
  port: str
  port_ans: str
  old: str | None = None
  stray_fields: tuple[tuple[str, Any], ...] = ()

  @property
  def stray_keys(self) -> tuple[str, ...]:
    return tuple(key for key, _ in self.stray_fields)


@dataclass(frozen=True)
class Record:
  dataset: str
  lang: str
  index: int  # position in the file's list (skipped records included)
  en: Side
  target: Side

  @property
  def case_id(self) -> int:
    return self.en.case_id

  def query(self, query_type: str) -> str:
    """Target-language question: src / rephrase / loc / port."""
    return getattr(self.target, QUESTION_FIELD[check_query_type(query_type)])

  def gold(self, query_type: str) -> str:
    """Target-language answer: alt / alt / loc_ans / port_ans."""
    return getattr(self.target, ANSWER_FIELD[check_query_type(query_type)])

  def gold_en(self, query_type: str) -> str:
    """The same answer on the English side."""
    return getattr(self.en, ANSWER_FIELD[check_query_type(query_type)])


@dataclass(frozen=True)
class LoadedFile:
  """`n_total` and `n_skipped` describe the whole file, even when `limit` cut `records`."""

  dataset: str
  lang: str
  path: Path
  records: tuple[Record, ...]
  n_total: int
  n_skipped: int
  skipped_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Demonstration:
  """One pool entry; `lines[lang]` is `Question: "..." Answer: "..."`."""

  case_id: int
  type: str
  new_fact: str
  lines: dict[str, str] = field(hash=False)
  source: str = ""  # pool file
  index: int = -1  # position in the pool

  def line(self, lang: str) -> str:
    code = normalize_lang(lang)
    if code not in self.lines:
      raise DataError(
          self.source, f"pool entry has no line for language {code!r}", self.index, code
      )
    return self.lines[code]


def check_query_type(query_type: str) -> str:
  if query_type not in QUERY_TYPES:
    raise ValueError(f"unknown query type {query_type!r}; valid: {', '.join(QUERY_TYPES)}")
  return query_type


def check_dataset(dataset: str, where: Any = "<no file>") -> str:
  if dataset not in DATASET_FILES:
    raise DataError(
        where, f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}", field="dataset"
    )
  return dataset


def default_data_dir() -> Path:
  """$BMIKE53_DIR when set, else the small sample shipped inside the package."""
  env = os.environ.get(DATA_DIR_ENV)
  return Path(env) if env else SAMPLE_DATA_DIR


def dataset_path(data_dir: str | os.PathLike, dataset: str, lang: str) -> Path:
  folder, prefix, _ = DATASET_FILES[check_dataset(dataset, data_dir)]
  try:
    code = normalize_lang(lang)
  except ValueError as err:
    raise DataError(
        as_path(data_dir) / folder / f"{prefix}_test_{lang}.json", str(err), field="lang"
    ) from None
  return as_path(data_dir) / folder / f"{prefix}_test_{code}.json"


def pool_path(data_dir: str | os.PathLike, dataset: str) -> Path:
  return as_path(data_dir) / POOL_FOLDER / DATASET_FILES[check_dataset(dataset, data_dir)][2]


# What a record limit counts (name -> meaning); the runner's --limit_mode.
LIMIT_MODES = {
    "usable": "the first N records that have the target-language side (corrected)",
    "reference_lcount": "the reference's --lcount: the file's first N records, then those without "
    "the target-language side dropped (fewer than N where some lack it)",
}


def load_file(
    data_dir: str | os.PathLike,
    dataset: str,
    lang: str,
    limit: int | None = None,
    limit_mode: str = "usable",
) -> LoadedFile:
  """Records of one dataset and target language. `limit` keeps the first N usable records
  (`limit_mode="usable"`), or, as the reference's `--lcount` does, the file's first N records
  and then drops those without the target side (`"reference_lcount"`)."""
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0 or None, got {limit}")
  if limit_mode not in LIMIT_MODES:
    raise ValueError(f"limit_mode must be one of {', '.join(LIMIT_MODES)}, got {limit_mode!r}")
  path = dataset_path(data_dir, dataset, lang)
  code = normalize_lang(lang)
  raw = _read_json_list(path)
  records, skipped = [], []
  for index, item in enumerate(raw):
    en, target = _parse_record(path, index, item, code)
    if target is None:
      skipped.append(index)
    elif limit is None or (len(records) < limit if limit_mode == "usable" else index < limit):
      records.append(Record(dataset, code, index, en, target))
  return LoadedFile(dataset, code, path, tuple(records), len(raw), len(skipped), tuple(skipped))


def load_pool(
    data_dir: str | os.PathLike, dataset: str, langs: tuple[str, ...] = ()
) -> tuple[Demonstration, ...]:
  """The 32 demonstrations of the dataset's pool; `langs` must each have a line in every entry."""
  path = pool_path(data_dir, dataset)
  wanted = tuple(normalize_lang(code) for code in langs)
  pool = tuple(
      _parse_demonstration(path, index, item) for index, item in enumerate(_read_json_list(path))
  )
  for demo in pool:
    for code in wanted:
      demo.line(code)
  return pool


def _read_json_list(path: Path) -> list:
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise DataError(path, "file not found") from None
  except UnicodeDecodeError as err:
    raise DataError(path, f"not UTF-8 text ({err})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    raise DataError(
        path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
    ) from None
  if not isinstance(data, list):
    raise DataError(path, f"top level is {_json_type(data)}, expected a list of records")
  return data


def _parse_record(path: Path, index: int, item: Any, lang: str) -> tuple[Side, Side | None]:
  if not isinstance(item, dict):
    raise DataError(path, f"record is {_json_type(item)}, expected an object", index)
  for key in item:
    if key not in LANGUAGES:
      raise DataError(path, f"unknown language code {key!r} as record key", index, key)
  if "en" not in item:
    raise DataError(path, "record has no 'en' side", index, "en")
  en = _parse_side(path, index, "en", item["en"])
  if lang not in item:
    return en, None
  target = en if lang == "en" else _parse_side(path, index, lang, item[lang])
  if target.case_id != en.case_id:
    raise DataError(
        path,
        f"case_id {target.case_id} differs from the en side's {en.case_id}",
        index,
        f"{lang}.case_id",
    )
  return en, target


def _parse_side(path: Path, index: int, lang: str, side: Any) -> Side:
  if not isinstance(side, dict):
    raise DataError(path, f"side is {_json_type(side)}, expected an object", index, lang)
  values = {}
  for name in SIDE_FIELDS + OPTIONAL_SIDE_FIELDS:
    if name not in side:
      if name in OPTIONAL_SIDE_FIELDS:
        continue
      raise DataError(path, "missing required field", index, f"{lang}.{name}")
    expected = int if name == "case_id" else str
    value = side[name]
    if not isinstance(value, expected) or isinstance(value, bool):
      raise DataError(
          path, f"is {_json_type(value)}, expected {_json_name(expected)}", index, f"{lang}.{name}"
      )
    values[name] = value
  known = set(SIDE_FIELDS + OPTIONAL_SIDE_FIELDS)
  stray = tuple((key, value) for key, value in side.items() if key not in known)
  return Side(**values, stray_fields=stray)


def _parse_demonstration(path: Path, index: int, item: Any) -> Demonstration:
  if not isinstance(item, dict):
    raise DataError(path, f"pool entry is {_json_type(item)}, expected an object", index)
  for name, expected in POOL_FIELDS.items():
    if name not in item:
      raise DataError(path, "missing required field", index, name)
    if not isinstance(item[name], expected) or isinstance(item[name], bool):
      raise DataError(
          path, f"is {_json_type(item[name])}, expected {_json_name(expected)}", index, name
      )
  lines = {}
  for key, value in item.items():
    if key in POOL_FIELDS:
      continue
    if key not in LANGUAGES:
      raise DataError(path, f"unknown language code {key!r} in pool entry", index, key)
    if not isinstance(value, str):
      raise DataError(path, f"is {_json_type(value)}, expected a string", index, key)
    lines[key] = value
  return Demonstration(item["case_id"], item["type"], item["new_fact"], lines, str(path), index)


_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _json_type(value: Any) -> str:
  return _JSON_NAMES.get(type(value), type(value).__name__)


def _json_name(expected: type) -> str:
  return _JSON_NAMES[expected]
