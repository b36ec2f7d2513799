"""The whole benchmark run: units in order, each finished unit written atomically, resumable."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import subprocess
import time
from typing import Callable

import flax
import jax
import numpy as np
from absl import logging

import bmike_jax
from bmike_jax import checkpoints
from bmike_jax.checkpoints import hub
from bmike_jax import data as data_lib
from bmike_jax import metrics, paths
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.model import llama
from bmike_jax.runner import distributed, fingerprint, fork_layout, reference_layout, summary
from bmike_jax.runner import weight_edits
from bmike_jax.runner.evaluate import evaluate_unit
from bmike_jax.runner.run_config import IKE, PRECISIONS, RunConfig
from bmike_jax.runner.store import OutputError, OutputStore, with_method
from bmike_jax.runner.units import Unit, enumerate_units


def code_version() -> str:
  """Git hash of the code that ran ("+dirty" with local changes), or "unknown"."""
  here = os.path.dirname(os.path.abspath(bmike_jax.__file__))
  try:
    head = subprocess.run(
        ["git", "-C", here, "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def check_inputs(cfg: RunConfig) -> None:
  """Fails fast, before the model loads, on a missing data file or pool, or an unusable path."""
  paths.check_flags(cfg)
  for dataset in cfg.datasets:
    data_lib.load_pool(cfg.data_dir, dataset, langs=cfg.langs)
    for lang in cfg.langs:
      path = data_lib.dataset_path(cfg.data_dir, dataset, lang)
      if not paths.isfile(str(path)):
        raise data_lib.DataError(
            path,
            f"missing data file for dataset {dataset!r}, language "
            f"{lang!r} (--data_dir={cfg.data_dir})",
        )


@dataclasses.dataclass
class RunState:
  """What the run has finished: per-unit metrics files, in unit order."""

  units: list[Unit]
  metrics: dict[Unit, dict]

  def results(self, method: str = IKE) -> dict:
    """results[dataset][setup][lang][query_type] of one method (the weight-editing methods'
    setups are the protocols)."""
    out: dict = {}
    for unit in self.units:
      if unit in self.metrics and unit.method == method:
        out.setdefault(unit.dataset, {}).setdefault(unit.setup, {})[unit.lang] = self.metrics[unit][
            "query_types"
        ]
    return out

  def results_by_method(self) -> dict:
    methods = list(dict.fromkeys(u.method for u in self.units))
    return {m: self.results(m) for m in methods}

  def data_files(self) -> dict:
    """Data and pool file (relative to the data folder) -> sha256, of the finished units."""
    out = {}
    for m in self.metrics.values():
      out[m["data"]["file"]] = m["data"].get("sha256")
      if "pool_file" in m["data"]:
        out[m["data"]["pool_file"]] = m["data"].get("pool_sha256")
    return dict(sorted(out.items()))

  def data_counts(self) -> dict:
    out: dict = {}
    for unit, m in self.metrics.items():
      out.setdefault(unit.dataset, {})[unit.lang] = m["data"]
    return {d: dict(sorted(v.items())) for d, v in sorted(out.items())}


def _by_query_type(rows: list[dict], query_types) -> dict:
  """query_type -> {"n", "em", ...} in flag order (same aggregation as the report's re-scoring)."""
  table = metrics.aggregate_rows(rows, keys=("query_type",))
  return {qt: table[qt] for qt in query_types if qt in table}


def library_versions() -> dict:
  import tokenizers  # pylint: disable=import-outside-toplevel

  versions = {
      "bmike_jax": bmike_jax.__version__,
      "jax": jax.__version__,
      "jaxlib": getattr(jax.lib, "__version__", None) or _dist_version("jaxlib"),
      "flax": flax.__version__,
      "numpy": np.__version__,
      "tokenizers": tokenizers.__version__,
      "orbax-checkpoint": _dist_version("orbax-checkpoint"),
      "transformers": _dist_version("transformers"),
      "python": platform.python_version(),
      "code": code_version(),
  }
  return versions


def _dist_version(name: str) -> str | None:
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def variants_document(cfg: RunConfig, model_info: dict) -> dict:
  """Which variant of every reference quirk each number is (SPEC: the reference's behaviour is a
  named option, the corrected one beside it)."""
  return {
      "decode_cleanup": {
          "ran": cfg.decode_cleanup,
          "meaning": tokenizer_lib.DECODE_CLEANUPS[cfg.decode_cleanup],
          "tokenizer_config_asks": model_info.get("tokenizer_config_clean_up"),
          "applied": model_info.get("decode_cleanup_applied"),
          "reference": cfg.decode_cleanup == "reference",
      },
      "precision": {
          "dtype": cfg.dtype,
          "matmul_precision": llama.matmul_precision(cfg.dtype).name,
          "meaning": PRECISIONS[cfg.dtype],
          "reference": cfg.dtype == "float32",
      },
      "limit_mode": {
          "ran": cfg.limit_mode,
          "meaning": data_lib.LIMIT_MODES[cfg.limit_mode],
          "reference": cfg.limit_mode == "reference_lcount",
          "limit": cfg.limit,
      },
      "likelihood": {
          "lik_*_loc_ans": "1/PPL(alt) against 1/PPL(loc_ans): the reference's comparison",
          "lik_*_old": "1/PPL(alt) against 1/PPL(old): the corrected comparison",
          "rounding": "success and magnitude x 100, unrounded (the reference prints %.6f)",
      },
      "scores": {
          "em": "exact match of the cut answer and the gold string (reference), x 100, 2 decimals",
          "f1_ref": "reference F1 of SPEC: precision x recall over model token ids",
          "f1": "standard token F1 (harmonic mean) over model token ids",
          "f1_norm": "language-aware normalized F1 in the manner of the MLQA evaluation script",
      },
  }


def run_document() -> dict:
  devices = jax.devices()
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "process_count": jax.process_count(),
  }


def results_document(
    cfg: RunConfig,
    state: RunState,
    model_info: dict,
    engine_stats: dict,
    flag_values: dict,
    edits: dict | None = None,
) -> dict:
  document = {
      "flags": flag_values,
      "versions": library_versions(),
      "run": run_document(),
      "model": model_info,
      "variants": variants_document(cfg, model_info),
      "data": {
          "data_dir": cfg.data_dir,
          "counts": state.data_counts(),
          "files_sha256": state.data_files(),
      },
      "units": {"planned": len(state.units), "finished": len(state.metrics)},
      "engine": engine_stats,
      "results": state.results(),
  }
  if any(u.method != IKE for u in state.units):  # `results` stays the in-context one; every
    document["results_by_method"] = state.results_by_method()  # method keyed by name here
    document["weight_edits"] = edits or {}
  return document


@functools.lru_cache(maxsize=None)
def _data_file_sha256(path: str) -> str:
  return fingerprint.file_sha256(path)


def check_finished_data(cfg: RunConfig, state: RunState) -> None:
  """A finished unit was computed from the data file as it is now (its sha256), or the rerun
  stops with an error naming the file."""
  for unit, doc in state.metrics.items():
    for key, path in (
        ("sha256", data_lib.dataset_path(cfg.data_dir, unit.dataset, unit.lang)),
        ("pool_sha256", data_lib.pool_path(cfg.data_dir, unit.dataset)),
    ):
      recorded = doc["data"].get(key)
      if recorded is not None and recorded != _data_file_sha256(str(path)):
        raise OutputError(
            f"{path}: changed since unit {unit.name} was finished in {cfg.output_dir} (sha256 "
            f"was {recorded[:12]}..., now {_data_file_sha256(str(path))[:12]}...). Use another "
            "--output_dir, or restore the data file."
        )


def _previous_edits(store: OutputStore) -> dict:
  """results.json's "weight_edits" of the folder's earlier runs (kept for the methods a rerun
  holds but does not run), {} without one."""
  try:
    return store.load_results().get("weight_edits") or {}
  except (OSError, ValueError, paths.PathError):
    return {}


def model_identity(cfg: RunConfig) -> dict:
  """The checkpoint's fingerprint (a missing or unknown checkpoint is reported here, first)."""
  source = hub.resolve(cfg.checkpoint, flag="checkpoint") or checkpoints.default_gguf_path()
  checkpoints.source_kind(source)
  return {"model_fingerprint": fingerprint.model_fingerprint(source)}


def run(cfg: RunConfig, flag_values: dict, build_engine: Callable, progress=None) -> dict:
  """Runs every unfinished unit; returns the results document (also in results.json).

  `build_engine(cfg) -> (engine, tokenizer, model_info)` is called only when work remains.
  """
  distributed.maybe_initialize(
      cfg.distributed, cfg.coordinator_address, cfg.num_processes, cfg.process_id
  )
  writer = distributed.is_writer()
  check_inputs(cfg)
  store = OutputStore(cfg.output_dir)
  identity = {**cfg.result_identity(), **model_identity(cfg)}
  weight_edits.check_layers(cfg)
  if "memit" in cfg.edit_methods:
    identity["weight_edits"]["memit"]["corpus_sha256"] = _data_file_sha256(cfg.memit_corpus)

  def plan(held: list[str]) -> list[Unit]:
    """The asked units, and the finished units of the methods the folder holds besides (a rerun
    that drops a method keeps its results in results.json and samples.jsonl)."""
    methods = (IKE, *cfg.edit_methods, *(m for m in held if m not in cfg.methods))
    return list(enumerate_units(cfg.datasets, cfg.langs, cfg.setups, methods, cfg.protocols))

  units, finished = distributed.finished_units(store, identity, plan)
  units = [u for u in units if u.method in cfg.methods or u in finished]
  state = RunState(units, finished)
  check_finished_data(cfg, state)
  todo = [u for u in units if u not in state.metrics]
  logging.info(
      "%d units planned, %d already finished, %d to run",
      len(units),
      len(units) - len(todo),
      len(todo),
  )
  if not todo:
    logging.info("nothing to run: every unit is finished in %s", cfg.output_dir)
    return distributed.broadcast_json(store.load_results() if writer else None)
  engine, tokenizer, model_info = build_engine(cfg)
  model_info = {**model_info, "fingerprint": identity["model_fingerprint"]}
  if writer:
    store.write_tokenizer(tokenizer)
  bar = progress(total=len(units), initial=len(units) - len(todo)) if progress else None
  loaded_key, loaded = None, None
  start = time.perf_counter()
  editor = None
  keyed = any(u.method != IKE for u in units)
  # process 0's (it reads the folder): every process sizes its edit batches from the same record
  previous_edits = distributed.broadcast_json(_previous_edits(store) if writer else {})

  def edits_document() -> dict | None:
    """The edit statistics of the folder's runs (this one's added to the earlier ones') of the
    methods it holds."""
    now = editor.document() if editor else {}
    held = {u.method for u in units}
    methods = {m: v for m, v in previous_edits.get("methods", {}).items() if m in held}
    for m, counts in now.get("methods", {}).items():
      methods[m] = weight_edits.add_counts(methods.get(m), counts)
    return {**previous_edits, **now, "methods": methods} if keyed else None

  def finish(unit, rows, loaded, pool_path=None):
    if keyed:  # a folder with weight edits keys every row by method, in-context ones too
      rows = with_method(rows, unit.method)
    data_doc = {
        "file": os.path.relpath(loaded.path, cfg.data_dir),
        "n_total": loaded.n_total,
        "n_skipped": loaded.n_skipped,
        "n_used": len(loaded.records),
        "sha256": _data_file_sha256(str(loaded.path)),
    }
    if pool_path is not None:
      data_doc.update(
          pool_file=os.path.relpath(pool_path, cfg.data_dir),
          pool_sha256=_data_file_sha256(str(pool_path)),
      )
    unit_doc = {
        "unit": dataclasses.asdict(unit),
        "data": data_doc,
        "query_types": _by_query_type(rows, cfg.query_types),
    }
    state.metrics[unit] = unit_doc

    def write():  # process 0 only; all processes hear whether it worked (writer_does)
      store.write_unit(unit, rows, unit_doc)
      if cfg.reference_layout and unit.method == IKE:
        reference_layout.write_unit(cfg.output_dir, model_info["checkpoint"], unit, rows)
      if cfg.reference_layout and unit.setup == "reference" and unit.method != IKE:
        fork_layout.write_unit(cfg.output_dir, unit, rows, cfg.limit)
        fork_layout.write_analysis(cfg.output_dir, unit.dataset, state.metrics)
      store.write_results(
          results_document(
              cfg,
              state,
              model_info,
              engine.stats.as_dict(),
              flag_values,
              edits_document(),
          )
      )

    distributed.writer_does(
        write, f"--output_dir {cfg.output_dir!r}: cannot write unit {unit.name}"
    )
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(unit.name)

  for unit in (u for u in todo if u.method == IKE):
    if loaded_key != (unit.dataset, unit.lang):
      loaded = data_lib.load_file(
          cfg.data_dir, unit.dataset, unit.lang, limit=cfg.limit, limit_mode=cfg.limit_mode
      )
      pool = data_lib.load_pool(cfg.data_dir, unit.dataset)
      pool_path = data_lib.pool_path(cfg.data_dir, unit.dataset)
      loaded_key = (unit.dataset, unit.lang)
    rows = evaluate_unit(
        engine, tokenizer, loaded, pool, unit.setup, cfg.query_types, cfg.likelihood
    )
    finish(unit, rows, loaded, pool_path)
  groups: dict = {}
  for unit in (u for u in todo if u.method != IKE):
    groups.setdefault((unit.method, unit.dataset), []).append(unit)
  for (method, dataset), group in groups.items():
    if editor is None:
      editor = weight_edits.Editor(
          cfg,
          engine,
          tokenizer,
          identity["model_fingerprint"],
          previous=previous_edits.get("methods"),
      )
    samples, files = editor.run(method, dataset, group)
    for unit in group:
      finish(unit, samples[unit], files[unit.lang])
  if bar is not None:
    bar.close()
  elapsed = time.perf_counter() - start
  stats = dict(engine.stats.as_dict(), run_seconds=round(elapsed, 3))
  document = results_document(cfg, state, model_info, stats, flag_values, edits_document())

  def write_run():
    store.write_samples([u for u in units if u in state.metrics], keyed)
    store.write_results(document)

  distributed.writer_does(write_run, f"--output_dir {cfg.output_dir!r}: cannot write the results")
  logging.info("compilations: %d; %s", stats.get("compile_count", -1), stats)
  print(summary.summary_tables(document["results"]), flush=True)
  for method in cfg.edit_methods:
    print(f"=== method {method}", flush=True)
    print(summary.summary_tables(document["results_by_method"].get(method, {})), flush=True)
  return document
