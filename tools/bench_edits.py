"""python -m tools.bench_edits: weight edits per second, one at a time against batched (jax.vmap),
side by side in one process, and the projected cost of the full weight-editing grid.

For each method: the English edits of the first --records records of zsRE (en.src -> en.alt), on
SmolLM2-135M (the embedded GGUF, float32) with the method's hyper-parameters from --flagfile_hparams
(default configs/smollm2.flags). Each mode runs twice; the first run compiles (its time is printed
as `first`), the second is timed: one-at-a-time = one `methods.edit` call per request, batched =
one call for all of them (one optimisation per request, vmapped).

Projection: edits of every method over the 3 datasets' records (--dataset_records: the counts of
BMIKE-53's files) at the better measured rate, once per record (this runner: one edit serves all 52
target languages) against once per record and target language (the fork's loop, `--lang2`
one language a run). Only the edits are projected, not the reading of the answers.

Reads (--read_langs=de,ru,zh): the comparable protocol's answers of each edited model (its
records' languages x 4 query types), read three ways side by side: `no_cache` = answers.greedy
(float32, every step re-runs the whole rows: the runner's read before 2026-12-06), `engine_per_edit`
= answers.engine_greedy with one call per edit (the in-context runs' engine, float32, that edit's
delta added per row in the forward pass) and `engine_mixed` = one engine call for all the edits,
their rows sharing batches (the runner's read now at --dtype=float32). The edits are FT-L deltas
of one step (FT-L's dense delta is the dearest per-row delta: E products of one `down` matmul);
each read runs twice, the second is timed; the answers of the reads are compared.

Quick check: python -m tools.bench_edits --methods=ft --records=2
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np
from absl import app, flags

from bmike_jax import checkpoints
from bmike_jax import data as data_lib
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.editing import methods as edit_methods
from bmike_jax.editing import stats, templates
from bmike_jax.editing.protocols import edit_groups
from bmike_jax.runner import run_config
from tools import paths

FLAGS = flags.FLAGS
flags.DEFINE_string("methods", "ft,lora,rome,kn", "Comma list of methods to time.")
flags.DEFINE_integer("records", 8, "Edits per mode (the first usable zsRE records).")
flags.DEFINE_string(
    "flagfile_hparams",
    str(paths.REPO_ROOT / "configs" / "smollm2.flags"),
    "Flagfile whose --{method}_hparams lines give the hyper-parameters.",
)
flags.DEFINE_string(
    "memit_corpus",
    "",
    "Corpus for MEMIT's second moments (with --methods=memit). Empty: the English sentences of "
    "the shipped sample (sample_corpus; a stand-in, the reference uses 100k Wikipedia texts).",
)
flags.DEFINE_string(
    "dataset_records",
    "743,1031,784",
    "Records of zsRE, CounterFact, WikiFactDiff (BMIKE-53's files) for the projection.",
)
flags.DEFINE_integer("target_langs", 52, "Target languages of the projection.")
flags.DEFINE_string("output", "", "Also write the raw numbers here (.json).")
flags.DEFINE_string(
    "read_langs", "", "Also time the comparable reads of each edit in these sample languages."
)
flags.DEFINE_integer("read_batch_size", 16, "The engine's batch size for the reads.")


def time_reads(config, params, tokenizer, langs, records: int) -> dict:
  """Seconds of the comparable reads of `records` edits in `langs`: answers.greedy (no KV
  cache), answers.engine_greedy one edit per call and all edits in one call (a float32 engine:
  the runner's read at --dtype=float32), side by side (see the module doc)."""
  from bmike_jax.editing import answers
  from bmike_jax.editing import delta as delta_lib
  from bmike_jax.editing.protocols import comparable_prompt
  from bmike_jax.data import QUERY_TYPES
  from bmike_jax.engine import Engine

  files = [
      data_lib.load_file(data_lib.SAMPLE_DATA_DIR, "zsre", lang, limit=records) for lang in langs
  ]
  groups = edit_groups(files)
  if not groups:
    raise ValueError(f"no zsRE records in the sample for {langs}")
  hp = dataclasses.replace(_hparams("ft", FLAGS.flagfile_hparams), steps=1)
  delta, _ = edit_methods.edit("ft", config, params, tokenizer, [g.request for g in groups], hp)
  prompts = [[comparable_prompt(r, qt) for r in g.records for qt in QUERY_TYPES] for g in groups]
  engine = Engine(
      config,
      params,
      tokenizer,
      batch_size=FLAGS.read_batch_size,
      length_buckets=(32, 48, 64, 96, 128, 192, 256),
  )

  def no_cache():
    return [
        answers.greedy(config, delta_lib.apply_delta(params, delta_lib.row(delta, i)), tokenizer, p)
        for i, p in enumerate(prompts)
    ]

  def per_edit():
    return [
        answers.engine_greedy(
            engine,
            tokenizer,
            p,
            tables=delta_lib.row_tables(
                jax.tree_util.tree_map(lambda a, i=i: a[i][None], delta), config.num_layers
            ),
            prompt_edits=[0] * len(p),
        )
        for i, p in enumerate(prompts)
    ]

  def mixed():
    flat = answers.engine_greedy(
        engine,
        tokenizer,
        [x for p in prompts for x in p],
        tables=delta_lib.row_tables(delta, config.num_layers),
        prompt_edits=[i for i, p in enumerate(prompts) for _ in p],
    )
    ends = np.cumsum([len(p) for p in prompts])
    return [flat[end - len(p) : end] for p, end in zip(prompts, ends)]

  out = {"edits": len(groups), "rows_per_edit": len(prompts[0]), "langs": list(langs)}
  got = {}
  modes = (("no_cache", no_cache), ("engine_per_edit", per_edit), ("engine_mixed", mixed))
  for mode, fn in modes:
    first = time.perf_counter()
    fn()
    first = time.perf_counter() - first
    second = time.perf_counter()
    got[mode] = fn()
    second = time.perf_counter() - second
    out[mode] = {"first_s": round(first, 2), "seconds": round(second, 2)}
    print(f"reads {mode}: first {first:.1f} s, then {second:.1f} s", flush=True)
  for mode, _ in modes[1:]:
    pairs = [(a, b) for x, y in zip(got["no_cache"], got[mode]) for a, b in zip(x, y)]
    out[mode]["identical_to_no_cache"] = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
    out[mode]["speedup"] = round(out["no_cache"]["seconds"] / out[mode]["seconds"], 2)
  return out


def _hparams(method: str, flagfile: str):
  value = ""
  prefix = f"--{method}_hparams="
  if flagfile and os.path.isfile(flagfile):
    with open(flagfile, encoding="utf-8") as f:
      for line in f:
        if line.startswith(prefix):
          value = line.strip()[len(prefix) :]
  return run_config._hparams(method)(f"{method}_hparams", value)  # pylint: disable=protected-access


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def sample_corpus() -> list[str]:
  """The distinct English sentences (src, rephrase, loc, port) of the shipped sample's files of
  all three datasets, in file order: MEMIT's stand-in corpus where none is given. Far smaller than
  the reference's 100k Wikipedia texts (and than the layer width), so its C is ill-conditioned:
  fit for timing the edits, not for judging MEMIT's scores."""
  texts: dict[str, None] = {}
  for dataset in data_lib.DATASETS:
    for record in data_lib.load_file(data_lib.SAMPLE_DATA_DIR, dataset, "en").records:
      for text in (record.en.src, record.en.rephrase, record.en.loc, record.en.port):
        if text.strip():
          texts[text] = None
  return list(texts)


def main(argv):
  del argv
  source = checkpoints.default_gguf_path()
  config, params = checkpoints.load_model(source, dtype="float32")
  tokenizer = tokenizer_lib.load_tokenizer(source)
  loaded = data_lib.load_file(data_lib.SAMPLE_DATA_DIR, "zsre", "de", limit=FLAGS.records)
  requests = [g.request for g in edit_groups([loaded])][: FLAGS.records]
  names = [m.strip() for m in FLAGS.methods.split(",") if m.strip()]
  reads = None
  if FLAGS.read_langs:
    langs = [x.strip() for x in FLAGS.read_langs.split(",") if x.strip()]
    reads = time_reads(config, params, tokenizer, langs, FLAGS.records)
  generated = None
  raw = {
      "model": os.path.basename(source),
      "records": len(requests),
      "cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "devices": str(jax.devices()),
      "methods": {},
  }
  for name in names:
    hp = _hparams(name, FLAGS.flagfile_hparams)
    if name in ("rome", "memit") and not hp.context_templates:
      generated = generated or templates.generate(config, params, tokenizer)
      hp = dataclasses.replace(hp, context_templates=generated)
    moments = None
    if name == "memit":
      corpus = stats.read_corpus(FLAGS.memit_corpus) if FLAGS.memit_corpus else sample_corpus()
      raw["memit_corpus"] = {
          "source": FLAGS.memit_corpus or "shipped sample, English sentences (sample_corpus)",
          "texts": len(corpus),
      }
      start = time.perf_counter()
      moments = stats.second_moments(config, params, tokenizer, corpus, hp.layers)
      raw["memit_corpus"]["second_moments_s"] = round(time.perf_counter() - start, 2)
    usable = []
    for r in requests:
      try:
        edit_methods.check_request(name, r)
        usable.append(r)
      except ValueError:
        pass

    def one_at_a_time():
      return [
          edit_methods.edit(name, config, params, tokenizer, [r], hp, second_moments=moments)[0]
          for r in usable
      ]

    def batched():
      return edit_methods.edit(name, config, params, tokenizer, usable, hp, second_moments=moments)[
          0
      ]

    entry = {"edits": len(usable), "hparams": str(hp)}
    for mode, fn in (("one_at_a_time", one_at_a_time), ("batched", batched)):
      first = _timed(fn)
      second = _timed(fn)
      entry[mode] = {
          "first_s": round(first, 2),
          "seconds": round(second, 2),
          "edits_per_s": round(len(usable) / second, 4),
      }
      print(f"{name} {mode}: first {first:.1f} s, then {second:.1f} s", flush=True)
    entry["speedup"] = round(entry["one_at_a_time"]["seconds"] / entry["batched"]["seconds"], 2)
    raw["methods"][name] = entry
  records = sum(int(x) for x in FLAGS.dataset_records.split(","))
  projection = {}
  for name, entry in raw["methods"].items():
    rate = max(entry["batched"]["edits_per_s"], entry["one_at_a_time"]["edits_per_s"])
    ours, fork = records, records * FLAGS.target_langs
    projection[name] = {
        "edits_once_per_record": ours,
        "hours_once_per_record": round(ours / rate / 3600, 2),
        "edits_per_language": fork,
        "hours_per_language": round(fork / rate / 3600, 1),
        "hours_per_language_one_at_a_time": round(
            fork / entry["one_at_a_time"]["edits_per_s"] / 3600, 1
        ),
    }
  raw["projection"] = {
      "records": records,
      "target_langs": FLAGS.target_langs,
      "methods": projection,
  }
  lines = [
      "| method | edits | one at a time: s (edits/s) | batched: s (edits/s) | speed-up |",
      "|---|---|---|---|---|",
  ]
  for name, e in raw["methods"].items():
    a, b = e["one_at_a_time"], e["batched"]
    lines.append(
        f"| {name} | {e['edits']} | {a['seconds']} ({a['edits_per_s']}) | "
        f"{b['seconds']} ({b['edits_per_s']}) | {e['speedup']}x |"
    )
  lines += [
      "",
      f"Projection ({records} records x {FLAGS.target_langs} target languages, edits only):",
      "",
      "| method | once per record (here): edits, h | once per record and language (fork): "
      "edits, h batched / h one at a time |",
      "|---|---|---|",
  ]
  for name, p in projection.items():
    lines.append(
        f"| {name} | {p['edits_once_per_record']}, {p['hours_once_per_record']} | "
        f"{p['edits_per_language']}, {p['hours_per_language']} / "
        f"{p['hours_per_language_one_at_a_time']} |"
    )
  if reads is not None:
    raw["reads"] = reads
    lines += [
        "",
        f"Comparable reads: {reads['edits']} edits x {reads['rows_per_edit']} rows "
        f"({','.join(reads['langs'])} x 4 query types):",
        "",
        "| read | first run s (compiles) | second run s | speed-up | answers as no_cache |",
        "|---|---|---|---|---|",
        f"| no KV cache (answers.greedy) | {reads['no_cache']['first_s']} | "
        f"{reads['no_cache']['seconds']} | 1x | - |",
    ]
    for mode in ("engine_per_edit", "engine_mixed"):
      r = reads[mode]
      lines.append(
          f"| {mode} (answers.engine_greedy) | {r['first_s']} | {r['seconds']} | "
          f"{r['speedup']}x | {r['identical_to_no_cache']} |"
      )
  print("\n".join(lines))
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(raw, f, indent=1)


if __name__ == "__main__":
  app.run(main)
