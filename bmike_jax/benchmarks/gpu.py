"""GPU section of the bench (`--gpu_synthetic_8b`): a randomly initialised Llama-3.1-8B-shaped model
in bfloat16 on one accelerator, synthetic prompts of the real prompts' token lengths.

What it measures (all through the public `Engine.generate`):
- per setup (zero_shot, one_shot, few_shot_mixed): prompts/s of full greedy answers (15 new tokens;
  a random model never stops at a quote, so this is a worst case for the answer length), compile
  time apart (a cold pass, then the timed warm pass on the same shapes);
- prefill MFU: a prefill-only pass (max_new_tokens=1), unique prompt tokens x 2 x params / time,
  against the device's dense bf16 peak;
- decode step time: one full batch of equal-length prompts, generate with max_new_tokens (15)
  minus with 1, over 14, against the HBM floor (parameter bytes / bandwidth; the KV bytes read per step
  are shown beside it);
- a projection of the full sweep (4 setups x 3 datasets x 53 languages x 4 query types) from the
  per-setup rates.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Sequence

import numpy as np

from bmike_jax.benchmarks import flops
from bmike_jax.benchmarks import tables

SWEEP_LANGUAGES = 53
SWEEP_RECORDS = {"zsre": 743, "counterfact": 1031, "wikifactdiff": 784}
SWEEP_QUERY_TYPES = 4
# Setup of the full sweep -> the measured setup whose prompt lengths and grouping stand for it.
SWEEP_SETUPS = {"zero_shot": "zero_shot", "one_shot": "one_shot",
                "few_shot_mixed": "few_shot_mixed", "few_shot_specific": "few_shot_mixed"}
GPU_SETUPS = ("zero_shot", "one_shot", "few_shot_mixed")
# Length buckets of configs/8b.flags: the section's default, so it compiles what an 8B run compiles.
EIGHT_B_FLAGFILE_BUCKETS = (128, 256, 512, 1024, 2048, 4096)
# Token lengths used when the embedded tokenizer cannot be loaded: (shared prefix, mean suffix).
FALLBACK_LENGTHS = {"zero_shot": (0, 54), "one_shot": (60, 60), "few_shot_mixed": (490, 60)}


def llama31_8b_config():
  from bmike_jax.model import LlamaConfig, RopeScaling

  return LlamaConfig(
      vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
      num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
      max_position_embeddings=131072, tie_word_embeddings=False,
      rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192),
      bos_token_id=128000, eos_token_ids=(128001,))


def tiny_config():
  """Same code path, toy sizes: for smoke tests of this section on a CPU (--synthetic_model=tiny)."""
  import dataclasses

  big = llama31_8b_config()
  return dataclasses.replace(
      big, vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=16, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,),
      rope_scaling=dataclasses.replace(big.rope_scaling, original_max_position_embeddings=1024))


class SyntheticTokenizer:
  """What the engine needs of a tokenizer, for random token ids: no quote tokens (answers always
  run to max_new_tokens unless the EOS id comes up), decode to ''."""

  def __init__(self, config):
    self.vocab_size = config.vocab_size
    self.bos_id = config.bos_token_id
    self.eos_ids = list(config.eos_token_ids)

  def quote_token_mask(self):
    return np.zeros((self.vocab_size,), bool)

  def decode(self, ids) -> str:
    del ids
    return ""


def is_accelerator() -> bool:
  import jax

  return jax.devices()[0].platform in ("gpu", "cuda", "rocm", "tpu")


def real_lengths(data_dir: str, dataset: str, langs: Sequence[str], records: int,
                 setups: Sequence[str]) -> tuple[dict, dict]:
  """(setup -> [(shared prefix length, [suffix lengths])] per language group, source): lengths of
  the real prompts tokenized with the embedded (SmolLM2) tokenizer; FALLBACK_LENGTHS without it.
  `source` says which."""
  source = {"dataset": dataset, "langs": list(langs), "records": records}
  try:
    from bmike_jax import checkpoints
    from bmike_jax import tokenizer as tokenizer_lib
    from bmike_jax.benchmarks import workload
    from bmike_jax.engine.layout import common_prefix_length

    tok = tokenizer_lib.load_tokenizer(checkpoints.default_gguf_path())
    out = {}
    for g in workload.build_groups(data_dir, dataset, langs, setups, records):
      ids = [tok.encode(t) for t in g.texts]
      p = common_prefix_length(ids)
      out.setdefault(g.setup, []).append((p, [len(x) - p for x in ids]))
    return out, {**source, "tokenizer": "SmolLM2-135M (embedded GGUF)", "data_dir": str(data_dir)}
  except Exception as e:  # pylint: disable=broad-except  (lengths only; fall back)
    print(f"bench: real prompt lengths unavailable ({e}); using fixed lengths", flush=True)
    n = records * SWEEP_QUERY_TYPES
    return ({s: [(FALLBACK_LENGTHS[s][0], [FALLBACK_LENGTHS[s][1]] * n)] * len(langs)
             for s in setups}, {**source, "tokenizer": f"none: fixed FALLBACK_LENGTHS ({e})"})


def write_lengths(path: str, lengths: dict, source: dict) -> None:
  """Saves `real_lengths`' result (with where it came from) as JSON, for a GPU machine that has
  neither the data nor the embedded tokenizer (`--gpu_lengths`)."""
  import json
  import os

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"source": source, "lengths": {s: [[p, list(suf)] for p, suf in groups]
                                             for s, groups in lengths.items()}}, f)


def read_lengths(path: str, setups: Sequence[str]) -> tuple[dict, dict]:
  """(lengths, source) from a `write_lengths` file; ValueError naming the file when it is unreadable
  or lacks one of `setups`."""
  import json

  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    lengths = {s: [(int(p), [int(x) for x in suf]) for p, suf in groups]
               for s, groups in raw["lengths"].items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"--gpu_lengths={path}: not a prompt-lengths file written by "
                     f"--gpu_write_lengths ({e})") from None
  bad = [s for s, groups in lengths.items()
         if not groups or any(p < 0 or not suf or min(suf) < 1 for p, suf in groups)]
  if bad:
    raise ValueError(f"--gpu_lengths={path}: setup(s) {', '.join(bad)} have no groups, an empty "
                     "group or a length below 1")
  missing = [s for s in setups if s not in lengths]
  if missing:
    raise ValueError(f"--gpu_lengths={path}: has no lengths for setup(s) {', '.join(missing)} "
                     f"(it has {', '.join(sorted(lengths))})")
  return lengths, raw.get("source", {})


def synthetic_group(rng: np.random.Generator, vocab: int, bos: int | None, prefix_len: int,
                    suffix_lens: Sequence[int]) -> list[list[int]]:
  """Random ids: one shared prefix (BOS + prefix_len - 1 tokens), then per prompt its suffix."""
  lo = 3  # keep clear of the usual special ids 0..2
  prefix = ([bos] if bos is not None else []) + rng.integers(lo, vocab, max(0, prefix_len - 1)).tolist()
  if prefix_len == 0 and bos is not None:
    prefix = [bos]
  return [prefix + rng.integers(lo, vocab, max(1, n)).tolist() for n in suffix_lens]


def _timed_pass(engine, groups) -> tuple[float, int, int, int]:
  """(seconds, prompts, prompt tokens, prefill tokens computed) of one pass over `groups`."""
  engine.reset_stats()
  t0 = time.perf_counter()
  for ids in groups:
    engine.generate(ids)
  seconds = time.perf_counter() - t0
  st = engine.stats
  return seconds, st.prompts, st.prompt_tokens, st.prefill_tokens


def _device_memory() -> dict:
  import jax

  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")}


def run(args) -> dict:
  """args: a namespace with model, batch_size, data_dir, dataset, langs, records, decode_repeats,
  hbm_bandwidth, peak_flops, length_buckets, setups, matmul_size, max_new_tokens, and optionally
  lengths ((lengths, source) from `read_lengths`; default: `real_lengths` of the data). Returns a
  JSON-able result dict."""
  import jax
  import jax.numpy as jnp

  from bmike_jax.engine import Engine
  from bmike_jax.engine import buckets as buckets_lib
  from bmike_jax.engine import layout as layout_lib
  from bmike_jax.model import init_params
  from bmike_jax.model import layer_layout

  device = jax.devices()[0]
  config = llama31_8b_config() if args.model == "llama3_8b" else tiny_config()
  spec = flops.lookup_device(device.device_kind)
  bandwidth = args.hbm_bandwidth or (spec.hbm_bytes_per_s if spec else None)
  peak = args.peak_flops or (spec.bf16_flops if spec else None)
  out = {"device": device.device_kind, "platform": device.platform, "model": args.model,
         "num_params": config.num_params, "batch_size": args.batch_size,
         "hbm_bandwidth": bandwidth,
         "hbm_bandwidth_source": "flag" if args.hbm_bandwidth else ("table" if spec else None),
         "peak_bf16_flops": peak,
         "peak_source": "flag" if args.peak_flops else ("table" if spec else None)}
  print(f"bench[gpu]: {device.device_kind}: measuring the bf16 matmul peak", flush=True)
  out["measured_matmul"] = flops.matmul_peak(n=args.matmul_size, dtype="bfloat16", reps=10)
  if peak is None:
    peak = out["measured_matmul"]["flops"]
    out["peak_bf16_flops"], out["peak_source"] = peak, "measured"

  print(f"bench[gpu]: initialising {args.model} ({config.num_params / 1e9:.2f}B params, bf16)",
        flush=True)
  t0 = time.perf_counter()
  # The layout the engine runs on this device (per layer on accelerators), so it converts nothing.
  scan_layers = layer_layout.default_scan_layers(device.platform)
  out["scan_layers"] = scan_layers
  params = jax.jit(lambda: init_params(config, seed=0, dtype=jnp.bfloat16,
                                       scan_layers=scan_layers))()
  jax.block_until_ready(params)
  out["init_seconds"] = time.perf_counter() - t0
  param_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  out["param_bytes"] = param_bytes
  tokenizer = SyntheticTokenizer(config)
  rng = np.random.default_rng(0)
  if getattr(args, "lengths", None):  # (lengths, source) from read_lengths
    lengths, out["lengths_source"] = args.lengths
  else:
    lengths, out["lengths_source"] = real_lengths(args.data_dir, args.dataset, args.langs,
                                                  args.records, args.setups)
  groups = {s: [synthetic_group(rng, config.vocab_size, config.bos_token_id, p, suf)
                for p, suf in lengths[s]] for s in args.setups}
  buckets = tuple(args.length_buckets or EIGHT_B_FLAGFILE_BUCKETS)
  out["length_buckets"] = list(buckets)

  def make(max_new_tokens):
    return Engine(config, params, tokenizer, batch_size=args.batch_size, length_buckets=buckets,
                  max_new_tokens=max_new_tokens, prefix_reuse=True, dtype=jnp.bfloat16,
                  decode_halvings=0)  # as configs/8b.flags

  # Decode-step groups: one full batch of equal-length prompts per length class, at the median
  # suffix length of the setup (shapes the passes below have compiled already).
  decode_sets = {}
  for s in [x for x in ("zero_shot", "few_shot_mixed") if x in args.setups]:
    p_len, suf = lengths[s][0]
    decode_sets[s] = synthetic_group(rng, config.vocab_size, config.bos_token_id, p_len,
                                     [int(statistics.median(suf))] * args.batch_size)

  # Full answers and prefill only (max_new_tokens=1), per setup; then the decode groups on the same
  # two engines: step time = (t(max_new_tokens) - t(1)) / (max_new_tokens - 1).
  per_setup, decode_times, shapes = {}, {}, {}
  for max_new, label in ((args.max_new_tokens, "full"), (1, "prefill")):
    engine = make(max_new)
    for s in args.setups:
      print(f"bench[gpu]: {label} {s}: cold pass", flush=True)
      cold = _timed_pass(engine, groups[s])
      print(f"bench[gpu]: {label} {s}: warm pass", flush=True)
      warm = _timed_pass(engine, groups[s])
      r = per_setup.setdefault(s, {})
      r[label] = {"seconds": warm[0], "cold_seconds": cold[0], "prompts": warm[1],
                  "prompt_tokens": warm[2], "prefill_tokens": warm[3],
                  "compile_seconds": max(0.0, cold[0] - warm[0])}
    for s, ids in decode_sets.items():
      print(f"bench[gpu]: {label} decode-step group {s}", flush=True)
      engine.generate(ids)  # compiles only if these shapes are new
      runs = []
      for _ in range(args.decode_repeats):
        t0 = time.perf_counter()
        engine.generate(ids)
        runs.append(time.perf_counter() - t0)
      decode_times.setdefault(s, {})[label] = min(runs)
      if label == "full":
        plen = layout_lib.common_prefix_length(ids)
        plen = plen if plen >= engine.min_prefix else 0
        pb = buckets_lib.pick_bucket(plen, engine.length_buckets) if plen else 0
        sb = buckets_lib.pick_bucket(len(ids[0]) - plen, engine.length_buckets)
        shapes[s] = (engine.batch_size, pb, layout_lib.cache_length(sb, max_new))
    out.setdefault("compile_counts", {})[label] = engine.compile_count
    del engine
    gc.collect()
  for s, r in per_setup.items():
    f, p = r["full"], r["prefill"]
    f["prompts_per_s"] = f["prompts"] / f["seconds"]
    p["flops"] = flops.prefill_flops(p["prefill_tokens"], config.num_params)
    p["mfu"] = p["flops"] / p["seconds"] / peak
  out["setups"] = per_setup

  decode = {}
  steps = args.max_new_tokens - 1
  for s, t in decode_times.items():
    batch, pb, slots = shapes[s]
    step = (t["full"] - t["prefill"]) / steps if steps > 0 else None
    # k and v, bf16, every slot read by the masked attention: the shared prefix once, own caches
    kv_bytes = (config.num_layers * (pb + batch * slots) * config.num_kv_heads * config.head_dim
                * 2 * 2)
    floor = flops.hbm_floor_seconds(param_bytes, bandwidth) if bandwidth else None
    floor_kv = flops.hbm_floor_seconds(param_bytes + kv_bytes, bandwidth) if bandwidth else None
    decode[s] = {"prompt_length": len(decode_sets[s][0]), "batch": batch, "cache_slots": slots,
                 "step_seconds": step, "t_prefill_only": t["prefill"], "t_full": t["full"],
                 "steps": steps, "kv_bytes": kv_bytes, "floor_seconds": floor,
                 "floor_kv_seconds": floor_kv,
                 "ratio": step / floor if floor and step else None,
                 "ratio_kv": step / floor_kv if floor_kv and step else None}
  out["decode"] = decode
  out["device_memory"] = _device_memory()

  # Projection of the full sweep.
  per_setup_prompts = SWEEP_LANGUAGES * sum(SWEEP_RECORDS.values()) * SWEEP_QUERY_TYPES
  projection = {}
  for sweep_setup, measured in SWEEP_SETUPS.items():
    if measured in per_setup:
      rate = per_setup[measured]["full"]["prompts_per_s"]
      projection[sweep_setup] = {"prompts": per_setup_prompts, "measured_as": measured,
                                 "prompts_per_s": rate, "seconds": per_setup_prompts / rate}
  out["projection"] = projection
  out["projection_complete"] = len(projection) == len(SWEEP_SETUPS)
  out["projected_seconds"] = sum(p["seconds"] for p in projection.values())
  return out


def markdown(res: dict) -> str:
  fmt, pct, ratio = tables._fmt, tables._pct, tables._ratio  # pylint: disable=protected-access
  lines = [f"### GPU: synthetic {res['model']} (bf16, random weights) on {res['device']}", ""]
  mm = res["measured_matmul"]
  lines += [
      f"- parameters: {res['num_params'] / 1e9:.3f}B, {res['param_bytes'] / 1e9:.2f} GB; "
      f"engine batch size {res['batch_size']}; length buckets "
      f"{','.join(map(str, res.get('length_buckets', [])))}; decoder layers "
      # (runs before the layout choice existed have no scan_layers: they were scanned)
      f"{'unrolled (per-layer params)' if res.get('scan_layers') is False else 'scanned (stacked params)'}",
      (f"- HBM bandwidth used: {fmt(res['hbm_bandwidth'] / 1e12)} TB/s "
       f"({res['hbm_bandwidth_source']})" if res["hbm_bandwidth"] else
       "- HBM bandwidth: unknown device (pass --hbm_bandwidth)") + "; dense bf16 peak used: "
      f"{fmt(res['peak_bf16_flops'] / 1e12)} TFLOP/s ({res['peak_source']}); measured bf16 "
      f"matmul ({mm['n']}²): {fmt(mm['flops'] / 1e12)} TFLOP/s",
      f"- device memory peak: {fmt((res['device_memory'].get('peak_bytes_in_use') or 0) / 2**30)} GiB",
      "",
      tables.md_table(
          ("setup", "prompts", "mean prompt tokens", "unique tokens", "time (s)", "prompts/s",
           "compile (s)", "prefill-only (s)", "prefill MFU"),
          [[s, r["full"]["prompts"], fmt(r["full"]["prompt_tokens"] / max(1, r["full"]["prompts"])),
            r["prefill"]["prefill_tokens"], fmt(r["full"]["seconds"]), fmt(r["full"]["prompts_per_s"]),
            fmt(r["full"]["compile_seconds"] + r["prefill"]["compile_seconds"]),
            fmt(r["prefill"]["seconds"], 3), pct(r["prefill"]["mfu"])]
           for s, r in res["setups"].items()]),
      "",
      tables.md_table(
          ("decode (prompt length)", "batch", "cache slots", "step (ms)", "HBM floor (ms)",
           "step / floor", "floor incl. KV (ms)", "step / floor incl. KV"),
          [[f"{s} ({d['prompt_length']})", d["batch"], d["cache_slots"],
            fmt(d["step_seconds"] * 1e3, 3),
            fmt(d["floor_seconds"] * 1e3 if d["floor_seconds"] else None, 3), ratio(d["ratio"]),
            fmt(d["floor_kv_seconds"] * 1e3 if d["floor_kv_seconds"] else None, 3),
            ratio(d["ratio_kv"])] for s, d in res["decode"].items()]),
      "",
  ]
  proj = res["projection"]
  rows = [[s, f"{p['prompts']:,}", p["measured_as"], fmt(p["prompts_per_s"]),
           fmt(p["seconds"] / 3600, 2)] for s, p in proj.items()]
  rows.append(["total", f"{sum(p['prompts'] for p in proj.values()):,}", "", "",
               fmt(res["projected_seconds"] / 3600, 2)])
  lines += [
      "Synthetic prompts copy the token lengths (and the shared demonstration prefix) of the real "
      "prompts under the SmolLM2 tokenizer; lengths from: "
      + ", ".join(f"{k} {v}" for k, v in res.get("lengths_source", {}).items()) + ".", "",
      "Projected full sweep (3 datasets × 53 languages × 4 query types per setup; greedy answers "
      "only, no likelihood scoring; 15 tokens per answer since random weights never close the "
      "quote):", "",
      tables.md_table(("setup", "prompts", "rate measured as", "prompts/s", "hours"), rows)]
  if not res["projection_complete"]:
    lines.append("\n(not every setup was measured: the total covers the measured ones only)")
  worst = [d["ratio"] for d in res["decode"].values() if d["ratio"] is not None]
  if worst:
    lines += ["", f"- target: decode step within 1.25× the HBM floor: worst {max(worst):.2f}× → "
              f"{'PASS' if max(worst) <= 1.25 else 'FAIL'}"]
  return "\n".join(lines)
