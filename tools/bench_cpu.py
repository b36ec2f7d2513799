"""python -m tools.bench_cpu: bmike-jax against HF transformers on the same BMIKE-53 workload.

One workload (default 64 zsRE records x 4 query types x de, zh x few_shot_mixed, zero_shot;
SmolLM2-135M from the embedded GGUF; float32) through

  (a) HF `generate`, one prompt at a time (the reference way; torch threads = all cores),
  (b) HF `generate` on left-padded batches (best of --hf_batch_sizes),
  (c) bmike-jax without prefix reuse, (d) bmike-jax with it (one `generate` call per
      language x setup group, as the runner does), (e) the same with record stems run once per
      batch too (the engine's default, `stem_reuse`),

each in its own subprocess (peak RSS per system), plus a measured fp32 matmul peak for the FLOP
floor of (d)'s and (e)'s prefill. Prints a ready-to-paste markdown report (tools/tables.py renders it from
the raw numbers); --output also writes it, with every raw number in a .json beside it.

Quick check: python -m tools.bench_cpu --records=4 --langs=de --setups=zero_shot --skip_reference
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from bmike_jax import checkpoints
from tools import paths
from tools import tables
from tools.bench import common
from tools.bench import workload

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "data_dir",
    None,
    "BMIKE-53 data folder (default: tools/paths.py's: the full "
    "data beside the repository when present, else the shipped sample).",
)
flags.DEFINE_string("dataset", "zsre", "Dataset of the workload (zsre, counterfact, wikifactdiff).")
flags.DEFINE_integer(
    "records",
    64,
    "Records per language (the first N usable ones; fewer when the " "data has fewer).",
)
flags.DEFINE_list("langs", ["de", "zh"], "Target languages of the workload.")
flags.DEFINE_list("setups", ["few_shot_mixed", "zero_shot"], "Prompt setups of the workload.")
flags.DEFINE_string(
    "checkpoint",
    None,
    "Model for every system: a .gguf file or a HF directory "
    "(default: the embedded SmolLM2-135M GGUF).",
)
flags.DEFINE_integer("batch_size", 16, "bmike-jax batch size of (c), (d) and (e).")
flags.DEFINE_list("length_buckets", [], "bmike-jax length buckets (default: the engine's).")
flags.DEFINE_integer("max_new_tokens", 15, "Greedy tokens per answer (the reference uses 15).")
flags.DEFINE_list("hf_batch_sizes", ["8", "16", "32"], "Batch sizes tried for (b).")
flags.DEFINE_integer(
    "hf_sweep_prompts",
    128,
    "Choose (b)'s batch size on a sample of about this "
    "many prompts (spread over the groups), then run the whole workload at the "
    "best; 0: run the whole workload at every size.",
)
flags.DEFINE_boolean("skip_reference", False, "Skip (a) (slow: ~2 s per 8-shot prompt on 2 cores).")
flags.DEFINE_boolean("skip_hf_batched", False, "Skip (b).")
flags.DEFINE_list(
    "engine_cold_pass",
    ["d", "e"],
    "bmike-jax systems (c, d, e) timed on a warm pass after "
    "an untimed cold pass over the whole workload; the others run once and their "
    "jax compile-event seconds are subtracted (saves (c)'s ~25 min cold pass).",
)
flags.DEFINE_boolean(
    "prefill_only",
    True,
    "Also time (d) and (e) with max_new_tokens=1 (prefill only) for the FLOP-floor table.",
)
flags.DEFINE_integer("peak_matmul_size", 2048, "n of the n x n fp32 matmul that measures the peak.")
flags.DEFINE_string(
    "output",
    None,
    "Write the markdown report here and the raw numbers to " "the same path with a .json suffix.",
)
flags.DEFINE_string(
    "worker_platform",
    "cpu",
    "JAX_PLATFORMS for the CPU section's workers ('' " "keeps the environment's).",
)
flags.DEFINE_boolean("keep_workdir", False, "Keep the workers' specs, results and logs.")


class WorkerError(RuntimeError):
  pass


MODULE = "tools.bench_cpu"


def run_worker(workdir: str, name: str, spec: dict) -> dict:
  """Runs one system in a fresh `python -m tools.bench.worker` process."""
  spec_path = os.path.join(workdir, f"{name}.spec.json")
  out_path = os.path.join(workdir, f"{name}.out.json")
  log_path = os.path.join(workdir, f"{name}.log")
  with open(spec_path, "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)
  env = dict(os.environ)
  if FLAGS.worker_platform:
    env["JAX_PLATFORMS"] = FLAGS.worker_platform
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  # The worker imports `tools` (not installed): run it from the repository root.
  root = str(paths.REPO_ROOT)
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  common.log(f"{name}: started")
  t0 = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.worker", spec_path, out_path],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        check=False,
        cwd=root,
    )
  if proc.returncode != 0 or not os.path.exists(out_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
      tail = f.read()[-4000:]
    raise WorkerError(f"worker {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
  with open(out_path, encoding="utf-8") as f:
    result = json.load(f)
  common.log(
      f"{name}: done in {time.perf_counter() - t0:.1f}s (peak RSS "
      f"{result.get('peak_rss_mib', 0):.0f} MiB)"
  )
  return result


def _hf_batched(workdir: str, base: dict, groups: list, extra: dict) -> dict:
  """(b) at the best of --hf_batch_sizes: chosen on a sample (or on the whole workload)."""
  sizes = [int(x) for x in FLAGS.hf_batch_sizes]
  if len(sizes) == 1:
    return run_worker(
        workdir,
        f"b_hf_batched_{sizes[0]}",
        {**base, "system": "hf_batched", "batch_size": sizes[0]},
    )
  if FLAGS.hf_sweep_prompts > 0:
    sample = workload.subset(groups, FLAGS.hf_sweep_prompts)
    extra["hf_sweep"] = run_worker(
        workdir,
        "b_hf_sweep",
        {
            **base,
            "groups": [g.to_json() for g in sample],
            "system": "hf_sweep",
            "batch_sizes": sizes,
        },
    )
    rates = {
        e["batch_size"]: tables.aggregate(e, "all")["prompts_per_s"]
        for e in extra["hf_sweep"]["sweep"]
    }
    best = max(rates, key=lambda k: rates[k])
    return run_worker(
        workdir, f"b_hf_batched_{best}", {**base, "system": "hf_batched", "batch_size": best}
    )
  full = {
      bs: run_worker(
          workdir, f"b_hf_batched_{bs}", {**base, "system": "hf_batched", "batch_size": bs}
      )
      for bs in sizes
  }
  extra["hf_sweep"] = {
      "sweep": [{"batch_size": bs, "groups": r["groups"]} for bs, r in full.items()],
      "full_workload": True,
  }
  return full[max(full, key=lambda k: tables.aggregate(full[k], "all")["prompts_per_s"])]


def measure(workdir: str) -> dict:
  """Runs every system; returns the raw numbers (what tools/tables.py renders)."""
  info = tables.machine_info()
  data_dir = FLAGS.data_dir or paths.default_data_dir()
  checkpoint = FLAGS.checkpoint or checkpoints.default_gguf_path()
  groups = workload.build_groups(data_dir, FLAGS.dataset, FLAGS.langs, FLAGS.setups, FLAGS.records)
  if not any(g.texts for g in groups):
    raise app.UsageError(f"no prompts: {data_dir} has no {FLAGS.dataset} records for {FLAGS.langs}")
  groups = [g for g in groups if g.texts]
  n_prompts = sum(len(g.texts) for g in groups)
  common.log(
      f"workload: {n_prompts} prompts in {len(groups)} groups from {data_dir}; "
      f"model {checkpoint}"
  )
  base = {
      "checkpoint": checkpoint,
      "groups": [g.to_json() for g in groups],
      "max_new_tokens": FLAGS.max_new_tokens,
  }
  results, extra = {}, {}
  extra["peak"] = run_worker(
      workdir, "peak", {"system": "peak", "n": FLAGS.peak_matmul_size, "dtype": "float32"}
  )
  if not FLAGS.skip_reference:
    results["a"] = run_worker(workdir, "a_hf_reference", {**base, "system": "hf_reference"})
  if not FLAGS.skip_hf_batched:
    results["b"] = _hf_batched(workdir, base, groups, extra)
  engine_spec = {
      **base,
      "system": "engine",
      "batch_size": FLAGS.batch_size,
      "length_buckets": [int(x) for x in FLAGS.length_buckets],
      "dtype": "float32",
  }
  cold = set(FLAGS.engine_cold_pass)
  no_reuse = {"prefix_reuse": False, "stem_reuse": False}
  results["c"] = run_worker(
      workdir, "c_engine_no_reuse", {**engine_spec, **no_reuse, "cold_pass": "c" in cold}
  )
  for label, name, stems in (("d", "d_engine_reuse", False), ("e", "e_engine_stems", True)):
    results[label] = run_worker(
        workdir,
        name,
        {
            **engine_spec,
            "prefix_reuse": True,
            "stem_reuse": stems,
            "cold_pass": label in cold,
            "prefill_only": FLAGS.prefill_only,
        },
    )
  try:
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  differing = tables.differing_answers(results)
  if differing and "a" in results:
    texts = {(g.key, i): t for g in groups for i, t in enumerate(g.texts)}
    margins = run_worker(
        workdir,
        "hf_margins",
        {
            "system": "hf_margins",
            "checkpoint": checkpoint,
            "max_new_tokens": FLAGS.max_new_tokens,
            "prompts": [texts[(d["key"], d["index"])] for d in differing],
        },
    )
    extra["differing"] = [dict(d, **m) for d, m in zip(differing, margins["prompts"])]
  summary = tables.summarize(results, extra["peak"])
  return {
      "section": "cpu",
      "command": common.command_line(MODULE),
      "machine": info,
      "data_dir": data_dir,
      "checkpoint": checkpoint,
      "flags": {k: FLAGS[k].value for k in _FLAG_NAMES},
      "summary": tables.strip_lists(summary),
      "results": results,
      "extra": extra,
  }


_FLAG_NAMES = (
    "data_dir",
    "dataset",
    "records",
    "langs",
    "setups",
    "checkpoint",
    "batch_size",
    "length_buckets",
    "max_new_tokens",
    "hf_batch_sizes",
    "hf_sweep_prompts",
    "skip_reference",
    "skip_hf_batched",
    "engine_cold_pass",
    "prefill_only",
    "peak_matmul_size",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = tempfile.mkdtemp(prefix="bmike_bench_")
  try:
    raw = measure(workdir)
  except WorkerError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  finally:
    if not FLAGS.keep_workdir:
      shutil.rmtree(workdir, ignore_errors=True)
    else:
      common.log(f"worker files kept in {workdir}")
  common.write_outputs(md=tables.render(raw), raw=raw, output=FLAGS.output)


if __name__ == "__main__":
  app.run(main)
