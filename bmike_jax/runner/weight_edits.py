"""The weight-editing methods in the runner (--methods=ft,lora,rome,kn,memit).

Each record's edit (en.src -> en.alt, subject en.subject) is made once and read in every requested
language under every requested protocol (editing/protocols.run_method); the runner's units are
(method, dataset, language, protocol), and the pending units of one method and dataset are computed
together, so that they share their edits. The edited models are never kept: each edit is a delta
(editing/delta.py), applied to the Editor's float32 copy of the base params for the edit's
optimisation and the reference protocol's teacher-forced read, and added per row in the engine's
forward pass for the comparable protocol (model/row_deltas.py: the rows of a batch of edits share
the engine's batches, on its own params), whose answers the engine reads as it reads the
in-context runs' (same dtype, KV cache, batches and mesh; its throughput counters in results.json
include these reads).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import logging

from bmike_jax import checkpoints
from bmike_jax import data as data_lib
from bmike_jax.checkpoints import hub
from bmike_jax.editing import batch_size as batch_size_lib
from bmike_jax.editing import forward, methods, protocols, stats, templates
from bmike_jax.engine import memory
from bmike_jax.runner import distributed, fingerprint
from bmike_jax.runner.run_config import FlagError, RunConfig
from bmike_jax.runner.units import Unit


def check_layers(cfg: RunConfig) -> None:
  """Every method's layers exist in the model: checked from the checkpoint's config, before the
  weights load (an error names the flag)."""
  if not cfg.edit_methods:
    return
  source = hub.resolve(cfg.checkpoint, flag="checkpoint") or checkpoints.default_gguf_path()
  config = checkpoints.load_config(source)
  for m in cfg.edit_methods:
    try:
      methods.check_layers(config, cfg.hparams(m))
    except ValueError as e:
      raise FlagError(f"--{m}_hparams: {e}") from None


def add_counts(before: dict | None, now: dict) -> dict:
  """One method's edit statistics over runs in one folder: edits and seconds summed (a resumed
  method and dataset edits its records again), skipped records listed once, the batch sizes (and
  --edit_batch_size=auto's memory accounts) by dataset, the latest run's where both have one."""
  if not before:
    return dict(now)
  skipped = list(before.get("skipped", []))
  skipped += [s for s in now.get("skipped", []) if s not in skipped]
  out = {
      "edits": before.get("edits", 0) + now.get("edits", 0),
      "skipped": skipped,
      "seconds": round(before.get("seconds", 0.0) + now.get("seconds", 0.0), 3),
  }
  for key in ("edit_batch_size", "edit_memory"):
    merged = {**before.get(key, {}), **now.get(key, {})}
    if merged:
      out[key] = merged
  return out


class Editor:
  """What the weight edits of one run share: float32 stacked params, the tokenizer, ROME's
  context templates, MEMIT's second moments and the unedited answers (`pre_cache`)."""

  def __init__(
      self, cfg: RunConfig, engine, tokenizer, model_fingerprint: str, previous: dict | None = None
  ):
    self.cfg = cfg
    self.engine = engine
    self.config = engine.config
    params = forward.stacked(engine.params, engine.config)
    self.params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    # the float32 copy's bytes on one device, held while the engine reads the edited models
    self.held_bytes_per_device = memory.device_bytes(self.params)
    self.tokenizer = tokenizer
    self.fingerprint = model_fingerprint
    self.pre_cache: dict = {}
    self.templates: tuple[str, ...] | None = None
    self.corpus_sha256: str | None = None  # MEMIT's corpus, hashed once a run
    self.info: dict = {}  # method -> {"edits", "skipped", "seconds", "edit_batch_size", ...}
    # results.json's weight_edits.methods of the folder's earlier runs (their batch sizes)
    self.previous = previous or {}

  def hparams(self, method: str):
    hp = self.cfg.hparams(method)
    if (
        method in ("rome", "memit")
        and not hp.context_templates
        and self.cfg.edit_context_templates == "generated"
    ):
      if self.templates is None:
        self.templates = templates.generate(self.config, self.params, self.tokenizer)
      hp = dataclasses.replace(hp, context_templates=self.templates)
    return hp

  def second_moments(self, hp):
    layers = "_".join(str(x) for x in hp.layers)
    if self.corpus_sha256 is None:
      self.corpus_sha256 = fingerprint.file_sha256(self.cfg.memit_corpus)
    corpus = self.corpus_sha256[:16]
    cache = (
        os.path.join(
            self.cfg.memit_stats_dir,
            f"{fingerprint.short(self.fingerprint)}-{layers}-{corpus}.npz",
        )
        if self.cfg.memit_stats_dir
        else None
    )
    return stats.load_or_compute(
        cache,
        corpus_path=self.cfg.memit_corpus,
        corpus_sha256=self.corpus_sha256,
        model_name=self.fingerprint,
        config=self.config,
        params=self.params,
        tokenizer=self.tokenizer,
        layers=hp.layers,
    )

  def batch_size(self, method: str, dataset: str, hp, files, moments) -> tuple[int, dict | None]:
    """(edits per batch, --edit_batch_size=auto's memory account or None) of `method` on
    `dataset`: the flag's number; with auto, the size an earlier run of the folder used for them
    (a resume edits as it did), else editing/batch_size's choice within the row share of device
    memory less what the engine and this Editor hold. The same on every process: `previous` is
    process 0's, and so is the probe's choice."""
    if self.cfg.edit_batch_size is not None:
      return self.cfg.edit_batch_size, None
    earlier = self.previous.get(method, {}).get("edit_batch_size", {}).get(dataset)
    if earlier is not None:
      logging.info(
          "%s on %s: %d edits per batch, as the folder's earlier run", method, dataset, earlier
      )
      return int(earlier), None
    engine = self.engine  # its kept prompt KV may still be held from the in-context units
    budget = memory.row_budget(
        engine.mesh,
        weight_bytes=engine.weight_bytes,
        kept_kv_bytes=engine.kept_kv_bytes if engine.keep_prompt_kv else 0,
    )
    if budget is not None:
      budget -= self.held_bytes_per_device
    usable, _ = protocols.editable(method, protocols.edit_groups(files))
    requests = [g.request for g in usable]
    size, account = batch_size_lib.auto_size(
        method,
        self.config,
        self.params,
        self.tokenizer,
        requests,
        hp,
        budget=budget,
        params_bytes=self.held_bytes_per_device,
        second_moments_shape=None if moments is None else tuple(moments.shape),
    )
    size, account = distributed.broadcast_json([size, account])
    logging.info("%s on %s: %d edits per batch (auto: %s)", method, dataset, size, account)
    return int(size), account

  def run(self, method: str, dataset: str, units: Sequence[Unit]):
    """(samples of each of `units` (one method and dataset), loaded data file by language): each
    record edited once, every language and protocol of the units read with that edit."""
    cfg = self.cfg
    langs = list(dict.fromkeys(u.lang for u in units))
    wanted = {u.setup for u in units}
    files = [
        data_lib.load_file(cfg.data_dir, dataset, lang, limit=cfg.limit, limit_mode=cfg.limit_mode)
        for lang in langs
    ]
    hp = self.hparams(method)
    moments = self.second_moments(hp) if method == "memit" else None
    size, account = self.batch_size(method, dataset, hp, files, moments)
    start = time.perf_counter()
    rows, info = protocols.run_method(
        method=method,
        config=self.config,
        params=self.params,
        tokenizer=self.tokenizer,
        files=files,
        hp=hp,
        protocols=[p for p in cfg.protocols if p in wanted],
        query_types=cfg.query_types,
        batch_size=size,
        pre_cache=self.pre_cache,
        second_moments=moments,
        engine=self.engine,
        engine_held_bytes=self.held_bytes_per_device,
    )
    seconds = time.perf_counter() - start
    for message in info["skipped"]:
      logging.warning("%s: not edited: %s", method, message)
    entry = self.info.setdefault(method, {"edits": 0, "skipped": [], "seconds": 0.0})
    entry["edits"] += info["edits"]
    entry["skipped"] += info["skipped"]
    entry["seconds"] = round(entry["seconds"] + seconds, 3)
    entry.setdefault("edit_batch_size", {})[dataset] = size
    if account is not None:
      entry.setdefault("edit_memory", {})[dataset] = account
    logging.info(
        "%s on %s: %d edits, %d languages, %.1f s",
        method,
        dataset,
        info["edits"],
        len(langs),
        seconds,
    )
    samples = {
        u: [r for r in rows if r["lang"] == u.lang and r["protocol"] == u.setup] for u in units
    }
    return samples, dict(zip(langs, files))

  def document(self) -> dict:
    out = {"methods": self.info}
    if self.templates is not None:
      out["context_templates"] = list(self.templates)
    return out
