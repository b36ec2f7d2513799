"""The GPU benchmark's measurement (tools/bench_gpu.py): a randomly initialised Llama-3.1-8B-shaped
model in bfloat16 on one accelerator, synthetic prompts of the real prompts' token lengths.

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

import dataclasses
import gc
import statistics
import time
from typing import Sequence

import numpy as np

from bmike_jax import checkpoints
from tools.bench import workload
from tools.bench import flops

SWEEP_LANGUAGES = 53
SWEEP_RECORDS = {"zsre": 743, "counterfact": 1031, "wikifactdiff": 784}
SWEEP_QUERY_TYPES = 4
# Setup of the full sweep -> the measured setup whose prompt lengths and grouping stand for it.
SWEEP_SETUPS = {
    "zero_shot": "zero_shot",
    "one_shot": "one_shot",
    "few_shot_mixed": "few_shot_mixed",
    "few_shot_specific": "few_shot_mixed",
}
# Length buckets of configs/8b.flags: the section's default, so it compiles what an 8B run compiles.
EIGHT_B_FLAGFILE_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)
# Token lengths used when the embedded tokenizer cannot be loaded: (shared prefix, mean suffix).
FALLBACK_LENGTHS = {"zero_shot": (0, 54), "one_shot": (60, 60), "few_shot_mixed": (490, 60)}


def llama31_8b_config():
  from bmike_jax.model import LlamaConfig, RopeScaling

  return LlamaConfig(
      vocab_size=128256,
      hidden_size=4096,
      intermediate_size=14336,
      num_layers=32,
      num_heads=32,
      num_kv_heads=8,
      head_dim=128,
      rms_norm_eps=1e-5,
      rope_theta=500000.0,
      max_position_embeddings=131072,
      tie_word_embeddings=False,
      rope_scaling=RopeScaling(
          factor=8.0,
          low_freq_factor=1.0,
          high_freq_factor=4.0,
          original_max_position_embeddings=8192,
      ),
      bos_token_id=128000,
      eos_token_ids=(128001,),
  )


def tiny_config():
  """Same code path, toy sizes: for smoke tests of this section on a CPU (--synthetic_model=tiny)."""
  import dataclasses

  big = llama31_8b_config()
  return dataclasses.replace(
      big,
      vocab_size=512,
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      max_position_embeddings=4096,
      bos_token_id=1,
      eos_token_ids=(2,),
      rope_scaling=dataclasses.replace(big.rope_scaling, original_max_position_embeddings=1024),
  )


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


def real_lengths(
    data_dir: str, dataset: str, langs: Sequence[str], records: int, setups: Sequence[str]
) -> tuple[dict, dict]:
  """(setup -> [(shared prefix length, [suffix lengths])] per language group, source): lengths of
  the real prompts tokenized with the embedded (SmolLM2) tokenizer; FALLBACK_LENGTHS without it.
  `source` says which."""
  source = {"dataset": dataset, "langs": list(langs), "records": records}
  try:
    from bmike_jax import tokenizer as tokenizer_lib
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
    return (
        {s: [(FALLBACK_LENGTHS[s][0], [FALLBACK_LENGTHS[s][1]] * n)] * len(langs) for s in setups},
        {**source, "tokenizer": f"none: fixed FALLBACK_LENGTHS ({e})"},
    )


def write_lengths(path: str, lengths: dict, source: dict) -> None:
  """Saves `real_lengths`' result (with where it came from) as JSON, for a GPU machine that has
  neither the data nor the embedded tokenizer (`--lengths`)."""
  import json
  import os

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(
        {
            "source": source,
            "lengths": {s: [[p, list(suf)] for p, suf in groups] for s, groups in lengths.items()},
        },
        f,
    )


def read_lengths(path: str, setups: Sequence[str]) -> tuple[dict, dict]:
  """(lengths, source) from a `write_lengths` file; ValueError naming the file when it is unreadable
  or lacks one of `setups`."""
  import json

  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    lengths = {
        s: [(int(p), [int(x) for x in suf]) for p, suf in groups]
        for s, groups in raw["lengths"].items()
    }
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(
        f"--lengths={path}: not a prompt-lengths file written by " f"--write_lengths ({e})"
    ) from None
  bad = [
      s
      for s, groups in lengths.items()
      if not groups or any(p < 0 or not suf or min(suf) < 1 for p, suf in groups)
  ]
  if bad:
    raise ValueError(
        f"--lengths={path}: setup(s) {', '.join(bad)} have no groups, an empty "
        "group or a length below 1"
    )
  missing = [s for s in setups if s not in lengths]
  if missing:
    raise ValueError(
        f"--lengths={path}: has no lengths for setup(s) {', '.join(missing)} "
        f"(it has {', '.join(sorted(lengths))})"
    )
  return lengths, raw.get("source", {})


def synthetic_group(
    rng: np.random.Generator,
    vocab: int,
    bos: int | None,
    prefix_len: int,
    suffix_lens: Sequence[int],
) -> list[list[int]]:
  """Random ids: one shared prefix (BOS + prefix_len - 1 tokens), then per prompt its suffix."""
  lo = 3  # keep clear of the usual special ids 0..2
  prefix = ([bos] if bos is not None else []) + rng.integers(
      lo, vocab, max(0, prefix_len - 1)
  ).tolist()
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


@dataclasses.dataclass(frozen=True)
class GpuBenchConfig:
  """What one GPU benchmark run measures (tools/bench_gpu.py's flags)."""

  model: str  # "llama3_8b" or "tiny" (toy sizes: smoke tests on a CPU)
  batch_size: int
  setups: tuple[str, ...]  # measured setups; few_shot_specific is projected
  length_buckets: tuple[int, ...]  # () = configs/8b.flags' (EIGHT_B_FLAGFILE_BUCKETS)
  max_new_tokens: int
  decode_repeats: int  # timed repeats of each decode measurement (best kept)
  matmul_size: int  # n of the bf16 matmul peak measurement
  hbm_bandwidth: float = 0.0  # bytes/s; 0: from flops.DEVICE_TABLE
  peak_flops: float = 0.0  # dense bf16 FLOP/s; 0: from the table, else measured

  @property
  def buckets(self) -> tuple[int, ...]:
    return tuple(self.length_buckets or EIGHT_B_FLAGFILE_BUCKETS)


def measure_device(config: GpuBenchConfig) -> dict:
  """The device, its bandwidth and bf16 peak (flag, table or measured), the measured matmul."""
  import jax

  device = jax.devices()[0]
  spec = flops.lookup_device(device.device_kind)
  bandwidth = config.hbm_bandwidth or (spec.hbm_bytes_per_s if spec else None)
  peak = config.peak_flops or (spec.bf16_flops if spec else None)
  out = {
      "device": device.device_kind,
      "platform": device.platform,
      "hbm_bandwidth": bandwidth,
      "hbm_bandwidth_source": "flag" if config.hbm_bandwidth else ("table" if spec else None),
      "peak_bf16_flops": peak,
      "peak_source": "flag" if config.peak_flops else ("table" if spec else None),
  }
  print(f"bench[gpu]: {device.device_kind}: measuring the bf16 matmul peak", flush=True)
  out["measured_matmul"] = flops.matmul_peak(n=config.matmul_size, dtype="bfloat16", reps=10)
  if peak is None:
    out["peak_bf16_flops"], out["peak_source"] = out["measured_matmul"]["flops"], "measured"
  return out


def _init_model(config: GpuBenchConfig, platform: str):
  """(model config, random bf16 params in the layout the engine runs on `platform`, facts)."""
  import jax
  import jax.numpy as jnp

  from bmike_jax.model import init_params
  from bmike_jax.model import layer_layout

  model = llama31_8b_config() if config.model == "llama3_8b" else tiny_config()
  print(
      f"bench[gpu]: initialising {config.model} ({model.num_params / 1e9:.2f}B params, bf16)",
      flush=True,
  )
  t0 = time.perf_counter()
  # The layout the engine runs on this device (per layer on accelerators), so it converts nothing.
  scan_layers = layer_layout.default_scan_layers(platform)
  params = jax.jit(
      lambda: init_params(model, seed=0, dtype=jnp.bfloat16, scan_layers=scan_layers)
  )()
  jax.block_until_ready(params)
  facts = {
      "model": config.model,
      "num_params": model.num_params,
      "batch_size": config.batch_size,
      "scan_layers": scan_layers,
      "init_seconds": time.perf_counter() - t0,
      "param_bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(params)),
  }
  return model, params, facts


def _bucket_shape(engine, ids: Sequence[Sequence[int]], max_new_tokens: int):
  """(batch, prefix bucket, cache slots) the engine runs a group of equal-length prompts at."""
  from bmike_jax.engine import buckets as buckets_lib
  from bmike_jax.engine import layout as layout_lib

  plen = layout_lib.common_prefix_length(ids)
  plen = plen if plen >= engine.min_prefix else 0
  pb = buckets_lib.pick_bucket(plen, engine.length_buckets) if plen else 0
  sb = buckets_lib.pick_bucket(len(ids[0]) - plen, engine.length_buckets)
  return engine.batch_size, pb, layout_lib.cache_length(sb, max_new_tokens)


def measure_engine(config: GpuBenchConfig, model, params, groups: dict, decode_sets: dict) -> dict:
  """Times the engine: per setup a cold and a warm pass over its groups with full answers and with
  max_new_tokens=1 (prefill only); the decode-step groups (best of decode_repeats) on the same
  two engines. Returns {"setups", "decode_times", "shapes", "compile_counts"}."""
  import jax.numpy as jnp

  from bmike_jax.engine import Engine

  tokenizer = SyntheticTokenizer(model)
  per_setup, decode_times, shapes, compile_counts = {}, {}, {}, {}
  for max_new, label in ((config.max_new_tokens, "full"), (1, "prefill")):
    engine = Engine(
        model,
        params,
        tokenizer,
        batch_size=config.batch_size,
        length_buckets=config.buckets,
        max_new_tokens=max_new,
        prefix_reuse=True,
        dtype=jnp.bfloat16,
        decode_halvings=0,
    )  # as configs/8b.flags
    for s in config.setups:
      print(f"bench[gpu]: {label} {s}: cold pass", flush=True)
      cold = _timed_pass(engine, groups[s])
      print(f"bench[gpu]: {label} {s}: warm pass", flush=True)
      warm = _timed_pass(engine, groups[s])
      per_setup.setdefault(s, {})[label] = {
          "seconds": warm[0],
          "cold_seconds": cold[0],
          "prompts": warm[1],
          "prompt_tokens": warm[2],
          "prefill_tokens": warm[3],
          "compile_seconds": max(0.0, cold[0] - warm[0]),
      }
    for s, ids in decode_sets.items():
      print(f"bench[gpu]: {label} decode-step group {s}", flush=True)
      engine.generate(ids)  # compiles only if these shapes are new
      runs = []
      for _ in range(config.decode_repeats):
        t0 = time.perf_counter()
        engine.generate(ids)
        runs.append(time.perf_counter() - t0)
      decode_times.setdefault(s, {})[label] = min(runs)
      if label == "full":
        shapes[s] = _bucket_shape(engine, ids, max_new)
    compile_counts[label] = engine.compile_count
    del engine
    gc.collect()
  return {
      "setups": per_setup,
      "decode_times": decode_times,
      "shapes": shapes,
      "compile_counts": compile_counts,
  }


def project_setups(per_setup: dict, *, num_params: int, peak_flops: float) -> dict:
  """Adds prompts/s (full answers) and the prefill FLOPs and MFU (prefill only) per setup."""
  for r in per_setup.values():
    f, p = r["full"], r["prefill"]
    f["prompts_per_s"] = f["prompts"] / f["seconds"]
    p["flops"] = flops.prefill_flops(p["prefill_tokens"], num_params)
    p["mfu"] = p["flops"] / p["seconds"] / peak_flops
  return per_setup


def project_decode(
    measured: dict,
    decode_sets: dict,
    *,
    model,
    param_bytes: int,
    bandwidth: float | None,
    max_new_tokens: int,
) -> dict:
  """Per decode group: step time = (t(max_new_tokens) - t(1)) / (max_new_tokens - 1), against the
  HBM floor of the parameter bytes (and of the parameters plus the KV bytes a step reads)."""
  decode = {}
  steps = max_new_tokens - 1
  for s, t in measured["decode_times"].items():
    batch, pb, slots = measured["shapes"][s]
    step = (t["full"] - t["prefill"]) / steps if steps > 0 else None
    # k and v, bf16, every slot read by the masked attention: the shared prefix once, own caches
    kv_bytes = model.num_layers * (pb + batch * slots) * model.num_kv_heads * model.head_dim * 2 * 2
    floor = flops.hbm_floor_seconds(param_bytes, bandwidth) if bandwidth else None
    floor_kv = flops.hbm_floor_seconds(param_bytes + kv_bytes, bandwidth) if bandwidth else None
    decode[s] = {
        "prompt_length": len(decode_sets[s][0]),
        "batch": batch,
        "cache_slots": slots,
        "step_seconds": step,
        "t_prefill_only": t["prefill"],
        "t_full": t["full"],
        "steps": steps,
        "kv_bytes": kv_bytes,
        "floor_seconds": floor,
        "floor_kv_seconds": floor_kv,
        "ratio": step / floor if floor and step else None,
        "ratio_kv": step / floor_kv if floor_kv and step else None,
    }
  return decode


def project_sweep(per_setup: dict) -> dict:
  """The full sweep (SWEEP_SETUPS x datasets x languages x query types) at the measured rates."""
  per_setup_prompts = SWEEP_LANGUAGES * sum(SWEEP_RECORDS.values()) * SWEEP_QUERY_TYPES
  projection = {}
  for sweep_setup, measured in SWEEP_SETUPS.items():
    if measured in per_setup:
      rate = per_setup[measured]["full"]["prompts_per_s"]
      projection[sweep_setup] = {
          "prompts": per_setup_prompts,
          "measured_as": measured,
          "prompts_per_s": rate,
          "seconds": per_setup_prompts / rate,
      }
  return {
      "projection": projection,
      "projection_complete": len(projection) == len(SWEEP_SETUPS),
      "projected_seconds": sum(p["seconds"] for p in projection.values()),
  }


def run(config: GpuBenchConfig, lengths: dict, lengths_source: dict) -> dict:
  """Measures (device, engine passes, decode steps) and projects (MFU, step / floor, full sweep);
  `lengths` as `real_lengths` or `read_lengths` give them. Returns the raw JSON of the run."""
  out = measure_device(config)
  model, params, facts = _init_model(config, out["platform"])
  out.update(facts)
  out["lengths_source"] = lengths_source
  out["length_buckets"] = list(config.buckets)
  rng = np.random.default_rng(0)
  groups = {
      s: [
          synthetic_group(rng, model.vocab_size, model.bos_token_id, p, suf)
          for p, suf in lengths[s]
      ]
      for s in config.setups
  }
  # Decode-step groups: one full batch of equal-length prompts per length class, at the median
  # suffix length of the setup (shapes the passes have compiled already).
  decode_sets = {}
  for s in [x for x in ("zero_shot", "few_shot_mixed") if x in config.setups]:
    p_len, suf = lengths[s][0]
    decode_sets[s] = synthetic_group(
        rng,
        model.vocab_size,
        model.bos_token_id,
        p_len,
        [int(statistics.median(suf))] * config.batch_size,
    )
  measured = measure_engine(config, model, params, groups, decode_sets)
  out["compile_counts"] = measured["compile_counts"]
  out["setups"] = project_setups(
      measured["setups"], num_params=model.num_params, peak_flops=out["peak_bf16_flops"]
  )
  out["decode"] = project_decode(
      measured,
      decode_sets,
      model=model,
      param_bytes=out["param_bytes"],
      bandwidth=out["hbm_bandwidth"],
      max_new_tokens=config.max_new_tokens,
  )
  out["device_memory"] = _device_memory()
  out.update(project_sweep(out["setups"]))
  return out
