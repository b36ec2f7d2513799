"""Cut the small sample shipped in `bmike_jax/sample_data` from the full bmike53 folder.

    python -m tools.make_sample --source=/work/shared/bmike53 --output=bmike_jax/sample_data

Same layout as bmike53. For each dataset and each sample language: the first
`RECORDS_PER_FILE` records plus, where the file has one, the first record lacking the
target side (so skip-counting is exercised), in file order. The three pools are kept
whole (32 entries) with only the sample languages' lines; `lang.json` lists the sample's
non-English languages. Output is deterministic: UTF-8, ensure_ascii=False, indent=1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bmike_jax.data import DATASETS, POOL_FIELDS, dataset_path, pool_path

SAMPLE_LANGS = ("en", "de", "ru", "ar", "hi", "zh", "ja", "th")
RECORDS_PER_FILE = 6


def sample_records(records: list, lang: str) -> list:
  """First RECORDS_PER_FILE records plus the first one without the `lang` side."""
  keep = set(range(min(RECORDS_PER_FILE, len(records))))
  missing = next((i for i, record in enumerate(records) if lang not in record), None)
  if missing is not None:
    keep.add(missing)
  return [records[i] for i in sorted(keep)]


def sample_pool(entries: list) -> list:
  keys = set(POOL_FIELDS) | set(SAMPLE_LANGS)
  return [{key: value for key, value in entry.items() if key in keys} for entry in entries]


def sample_lang_names(names: dict) -> dict:
  return {code: name for code, name in names.items() if code in SAMPLE_LANGS}


def make_sample(source: Path, output: Path) -> list[Path]:
  """Write the sample under `output`; returns the files written."""
  written = []
  for dataset in DATASETS:
    for lang in SAMPLE_LANGS:
      records = _read(dataset_path(source, dataset, lang))
      written.append(_write(dataset_path(output, dataset, lang), sample_records(records, lang)))
    written.append(
        _write(pool_path(output, dataset), sample_pool(_read(pool_path(source, dataset))))
    )
  written.append(_write(output / "lang.json", sample_lang_names(_read(source / "lang.json"))))
  return written


def _read(path: Path):
  return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, obj) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
  return path


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", type=Path, required=True, help="full bmike53 folder")
  parser.add_argument("--output", type=Path, required=True, help="sample folder to write")
  args = parser.parse_args(argv)
  files = make_sample(args.source, args.output)
  total = sum(f.stat().st_size for f in files)
  print(f"wrote {len(files)} files, {total / 1024:.1f} KiB, under {args.output}")


if __name__ == "__main__":
  main()
