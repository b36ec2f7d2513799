"""The output directory: one atomic file set per finished unit, and the run-level files rebuilt from them.

Layout of OUTPUT_DIR:
  run.json                                the settings that change numbers (checked on resume)
  units/{dataset}/{setup}/{lang}.samples.jsonl
  units/{dataset}/{setup}/{lang}.metrics.json   written last: its presence marks the unit finished
  csv/{dataset}/{setup}/{lang}.csv        the reference's columns: case_id, metric, input, prediction, true
  units/{method}/..., csv/{method}/...    the same for a weight-editing method (setup: the protocol)
  samples.jsonl                           every finished unit's samples, in unit order
  results.json                            flags, versions, model, data counts, compilations, results
  tokenizer/                              the run's tokenizer (what `report` re-scores with)
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable

from bmike_jax import paths
from bmike_jax.runner.units import IKE, Unit

TOKENIZER_DIR = "tokenizer"


# run.json's key for the weight-editing methods' own settings: {method: {setting: value}}.
METHODS_KEY = "weight_edits"


class OutputError(ValueError):
  """The output directory cannot be used (unwritable, or holds incompatible results)."""


def merge_identity(
    previous: dict, current: dict, has_units: Callable[[str], bool] = lambda method: True
) -> tuple[dict, list[str]]:
  """(run.json for a folder of `previous` rerun with `current`, the settings that differ).

  Shared settings must be equal; a method's settings must be equal where both hold the method
  and the folder has finished units of it (`has_units`: else, as after a run stopped before its
  first unit of the method, the new settings replace the old). A method only one of them holds
  is no conflict: the merged identity holds every method."""
  differing = [
      f"{k}: was {previous.get(k)!r}, now {current.get(k)!r}"
      for k in sorted((set(previous) | set(current)) - {METHODS_KEY})
      if previous.get(k) != current.get(k)
  ]
  held, asked = previous.get(METHODS_KEY) or {}, current.get(METHODS_KEY) or {}
  if "hparams" in held:  # 2026-11-30 .. 12-05: one entry for all methods, batch size unrecorded
    differing.append(f"{METHODS_KEY}: was {held!r}, recorded by an earlier runner")
    held = {}
  for m in (m for m in asked if m in held and held[m] != asked[m] and has_units(m)):
    differing += [
        f"{m} {k}: was {held[m].get(k)!r}, now {asked[m].get(k)!r}"
        for k in sorted(set(held[m]) | set(asked[m]))
        if held[m].get(k) != asked[m].get(k)
    ]
  merged = {k: v for k, v in current.items() if k != METHODS_KEY}
  if held or asked:
    merged[METHODS_KEY] = {**held, **asked}
  return merged, differing


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` so that `path` holds either the old or the whole new content, even on kill -9."""
  paths.write_text(path, text)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


class OutputStore:
  """Reads and writes one run's output directory."""

  def __init__(self, output_dir: str):
    paths.check(output_dir, flag="output_dir")
    self.root = output_dir

  def _path(self, *parts: str) -> str:
    return paths.join(self.root, *parts)

  def unit_path(self, unit: Unit, suffix: str) -> str:
    return self._path(
        "units", *_method_part(unit), unit.dataset, unit.setup, f"{unit.lang}.{suffix}"
    )

  def csv_path(self, unit: Unit) -> str:
    return self._path("csv", *_method_part(unit), unit.dataset, unit.setup, f"{unit.lang}.csv")

  # -- start of a run ---------------------------------------------------------------------------

  def prepare(self, identity: dict) -> list[str]:
    """Creates the directory, checks it is writable, and refuses results of other settings.

    The settings every unit shares must equal run.json's; the weight-editing methods'
    (identity[METHODS_KEY], one entry per method) must agree only for the methods both hold, so
    that a rerun may add or drop methods: run.json then records every method the folder holds
    (its own, then the new ones). Returns those methods."""
    paths.check_access(self.root, flag="output_dir")
    try:
      paths.makedirs(self.root)
      probe = self._path(".write-probe")
      paths.write_text(probe, "ok")
      paths.remove(probe)
    except OSError as e:
      raise OutputError(f"--output_dir {self.root!r} is not writable: {e.strerror or e}") from None
    run_file = self._path("run.json")
    merged = identity
    if paths.exists(run_file):
      try:
        previous = json.loads(paths.read_text(run_file))
      except (OSError, json.JSONDecodeError) as e:
        raise OutputError(
            f"{run_file}: unreadable ({e}); move it away or use another " "--output_dir"
        ) from None
      merged, differing = merge_identity(previous, identity, self.has_units)
      if differing:
        raise OutputError(
            f"--output_dir {self.root!r} holds results of other settings "
            f"({'; '.join(differing)}). Use another --output_dir, or the same flags to resume."
        )
      if merged != previous:
        atomic_write_json(run_file, merged)
    else:
      atomic_write_json(run_file, identity)
    return list(merged.get(METHODS_KEY, {}))

  # -- units ------------------------------------------------------------------------------------

  def has_units(self, method: str) -> bool:
    """Whether a unit of weight-editing `method` is finished here."""
    folder = self._path("units", method)
    return any(name.endswith(".metrics.json") for name in paths.walk_files(folder))

  def is_finished(self, unit: Unit) -> bool:
    return paths.exists(self.unit_path(unit, "metrics.json"))

  def load_metrics(self, unit: Unit) -> dict:
    return json.loads(paths.read_text(self.unit_path(unit, "metrics.json")))

  def load_samples(self, unit: Unit) -> list[dict]:
    text = paths.read_text(self.unit_path(unit, "samples.jsonl"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]

  def write_unit(self, unit: Unit, samples: list[dict], metrics: dict) -> None:
    """Samples and CSV first, metrics last: a unit counts as finished only when all are there."""
    atomic_write_text(self.unit_path(unit, "samples.jsonl"), _jsonl(samples))
    atomic_write_text(self.csv_path(unit), reference_csv(samples))
    atomic_write_json(self.unit_path(unit, "metrics.json"), metrics)

  # -- run-level files ----------------------------------------------------------------------------

  def write_samples(self, finished: Iterable[Unit], keyed: bool = False) -> None:
    """samples.jsonl of every finished unit, rebuilt atomically (unit order). `keyed`: every row
    carries its method, also an in-context unit's written before its folder had weight edits."""
    with paths.atomic_writer(self._path("samples.jsonl")) as out:
      for unit in finished:
        text = paths.read_text(self.unit_path(unit, "samples.jsonl"))
        if keyed and unit.method == IKE:
          rows = [json.loads(line) for line in text.splitlines() if line.strip()]
          text = _jsonl(with_method(rows, unit.method))
        out.write(text)

  def load_results(self) -> dict:
    return json.loads(paths.read_text(self._path("results.json")))

  def write_results(self, results: dict) -> None:
    atomic_write_json(self._path("results.json"), results)

  def write_tokenizer(self, tokenizer) -> None:
    """The run's tokenizer in TOKENIZER_DIR (tokenizer.json + tokenizer_config.json), so that
    `report` re-scores a copied or fetched folder without the checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
      tokenizer.save(folder)
      for name in sorted(os.listdir(folder)):
        paths.copy_file(os.path.join(folder, name), self._path(TOKENIZER_DIR, name))


def _method_part(unit: Unit) -> tuple[str, ...]:
  """In-context units keep the layout they always had; a weight-editing method gets a folder."""
  return () if unit.method == IKE else (unit.method,)


def with_method(rows: Iterable[dict], method: str) -> list[dict]:
  """Sample rows keyed by method: a row without `method` gets `method` first (an in-context row;
  weight-editing rows carry theirs)."""
  return [r if "method" in r else {"method": method, **r} for r in rows]


def _jsonl(rows: list[dict]) -> str:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def reference_csv(samples: list[dict]) -> str:
  """The reference's per-file CSV: case_id, metric (query type), input (prompt), prediction, true."""
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["case_id", "metric", "input", "prediction", "true"])
  for s in samples:
    writer.writerow([s["case_id"], s["query_type"], s["prompt"], s["prediction"], s["gold"]])
  return buf.getvalue()
