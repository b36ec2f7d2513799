"""The whole benchmark run: units in order, each finished unit written atomically, resumable."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Callable

import flax
import jax
from absl import logging

import bmike_jax
from bmike_jax import data as data_lib
from bmike_jax import metrics
from bmike_jax.runner import distributed, summary
from bmike_jax.runner.evaluate import evaluate_unit
from bmike_jax.runner.run_config import RunConfig
from bmike_jax.runner.store import OutputStore
from bmike_jax.runner.units import Unit, enumerate_units


def code_version() -> str:
  """Git hash of the code that ran ("+dirty" with local changes), or "unknown"."""
  here = os.path.dirname(os.path.abspath(bmike_jax.__file__))
  try:
    head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def check_inputs(cfg: RunConfig) -> None:
  """Fails fast, before the model loads, on a missing data file or pool."""
  for dataset in cfg.datasets:
    data_lib.load_pool(cfg.data_dir, dataset, langs=cfg.langs)
    for lang in cfg.langs:
      path = data_lib.dataset_path(cfg.data_dir, dataset, lang)
      if not os.path.isfile(path):
        raise data_lib.DataError(path, f"missing data file for dataset {dataset!r}, language "
                                 f"{lang!r} (--data_dir={cfg.data_dir})")


@dataclasses.dataclass
class RunState:
  """What the run has finished: per-unit metrics files, in unit order."""

  units: list[Unit]
  metrics: dict[Unit, dict]

  def results(self) -> dict:
    out: dict = {}
    for unit in self.units:
      if unit in self.metrics:
        out.setdefault(unit.dataset, {}).setdefault(unit.setup, {})[unit.lang] = (
            self.metrics[unit]["query_types"])
    return out

  def data_counts(self) -> dict:
    out: dict = {}
    for unit, m in self.metrics.items():
      out.setdefault(unit.dataset, {})[unit.lang] = m["data"]
    return {d: dict(sorted(v.items())) for d, v in sorted(out.items())}


def _by_query_type(rows: list[dict], query_types) -> dict:
  """query_type -> {"n", "em", ...} in flag order (same aggregation as the report's re-scoring)."""
  table = metrics.aggregate_rows(rows, keys=("query_type",))
  return {qt: table[qt] for qt in query_types if qt in table}


def results_document(cfg: RunConfig, state: RunState, model_info: dict, engine_stats: dict,
                     flag_values: dict) -> dict:
  return {
      "flags": flag_values,
      "versions": {"bmike_jax": bmike_jax.__version__, "jax": jax.__version__,
                   "flax": flax.__version__, "code": code_version()},
      "model": model_info,
      "variants": {
          "f1_ref": "reference F1 of SPEC: precision x recall over model token ids",
          "f1": "standard token F1 (harmonic mean) over model token ids",
          "f1_norm": "language-aware normalized F1 in the manner of the MLQA evaluation script",
          "lik_*_loc_ans": "likelihood comparison of alt against loc_ans (reference)",
          "lik_*_old": "likelihood comparison of alt against old (corrected)",
      },
      "data": {"data_dir": cfg.data_dir, "counts": state.data_counts()},
      "units": {"planned": len(state.units), "finished": len(state.metrics)},
      "engine": engine_stats,
      "results": state.results(),
  }


def run(cfg: RunConfig, flag_values: dict, build_engine: Callable, progress=None) -> dict:
  """Runs every unfinished unit; returns the results document (also in results.json).

  `build_engine(cfg) -> (engine, tokenizer, model_info)` is called only when work remains.
  """
  distributed.maybe_initialize(cfg.distributed, cfg.coordinator_address, cfg.num_processes,
                               cfg.process_id)
  writer = distributed.is_writer()
  store = OutputStore(cfg.output_dir)
  check_inputs(cfg)
  if writer:
    store.prepare(cfg.result_identity())
  units = list(enumerate_units(cfg.datasets, cfg.langs, cfg.setups))
  state = RunState(units, {u: store.load_metrics(u) for u in units if store.is_finished(u)})
  todo = [u for u in units if u not in state.metrics]
  logging.info("%d units planned, %d already finished, %d to run", len(units),
               len(units) - len(todo), len(todo))
  if not todo:
    logging.info("nothing to run: every unit is finished in %s", cfg.output_dir)
    return store.load_results()
  engine, tokenizer, model_info = build_engine(cfg)
  bar = progress(total=len(units), initial=len(units) - len(todo)) if progress else None
  loaded_key, loaded = None, None
  start = time.perf_counter()
  for unit in todo:
    if loaded_key != (unit.dataset, unit.lang):
      loaded = data_lib.load_file(cfg.data_dir, unit.dataset, unit.lang, limit=cfg.limit)
      pool = data_lib.load_pool(cfg.data_dir, unit.dataset)
      loaded_key = (unit.dataset, unit.lang)
    rows = evaluate_unit(engine, tokenizer, loaded, pool, unit.setup, cfg.query_types,
                         cfg.likelihood)
    unit_doc = {
        "unit": dataclasses.asdict(unit),
        "data": {"file": os.path.relpath(loaded.path, cfg.data_dir), "n_total": loaded.n_total,
                 "n_skipped": loaded.n_skipped, "n_used": len(loaded.records)},
        "query_types": _by_query_type(rows, cfg.query_types),
    }
    state.metrics[unit] = unit_doc
    if writer:
      store.write_unit(unit, rows, unit_doc)
      store.write_results(results_document(cfg, state, model_info, engine.stats(), flag_values))
    if bar is not None:
      bar.update(1)
      bar.set_postfix_str(unit.name)
  if bar is not None:
    bar.close()
  elapsed = time.perf_counter() - start
  stats = dict(engine.stats(), run_seconds=round(elapsed, 3))
  document = results_document(cfg, state, model_info, stats, flag_values)
  if writer:
    store.write_samples([u for u in units if u in state.metrics])
    store.write_results(document)
  logging.info("compilations: %d; %s", stats.get("compile_count", -1), stats)
  print(summary.summary_tables(document["results"]), flush=True)
  return document
