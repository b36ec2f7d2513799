"""One system of the benchmark in its own process, so that its memory high-water mark is its own:

    python -m tools.bench.worker SPEC.json OUT.json

SPEC: {"system": "hf_reference" | "hf_batched" | "hf_sweep" | "engine" | "peak" | "hf_margins",
"checkpoint",
"groups": [Group.to_json()], "max_new_tokens", ...}. OUT: per-group timings, answers and counts,
plus the process's peak RSS. Every timed region covers generation and answer extraction (the
prompts are tokenized beforehand, untimed); compile and warm-up are timed apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time


def _rss_mib() -> dict:
  """Current and high-water RSS of this process (MiB), from /proc (Linux) or getrusage."""
  out = {}
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith(("VmRSS:", "VmHWM:")):
          out["rss" if line.startswith("VmRSS") else "hwm"] = int(line.split()[1]) / 1024
  except OSError:
    pass
  out.setdefault("hwm", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return out


def ids_digest(ids) -> str:
  return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _group_record(group: dict, answers, seconds, prompt_ids, generated, **extra) -> dict:
  return {
      "key": group["key"],
      "lang": group["lang"],
      "setup": group["setup"],
      "query_types": sorted(set(group["query_types"])),
      "prompts": len(prompt_ids),
      "seconds": seconds,
      "prompt_tokens": sum(len(p) for p in prompt_ids),
      "generated_tokens": int(sum(generated)),
      "answers": list(answers),
      "names": list(group["names"]),
      "ids_digests": [ids_digest(p) for p in prompt_ids],
      **extra,
  }


# HF transformers ---------------------------------------------------------------------------------


def _load_hf(spec):
  import torch

  from tools import reference_hf

  torch.set_num_threads(spec.get("torch_threads") or os.cpu_count() or 1)
  t0 = time.perf_counter()
  model = reference_hf.load_hf_model(spec["checkpoint"])
  tokenizer = reference_hf.load_hf_tokenizer(spec["checkpoint"])
  load_seconds = time.perf_counter() - t0
  spec["_memory_after_load"] = _rss_mib()
  ids = [[list(tokenizer(t)["input_ids"]) for t in g["texts"]] for g in spec["groups"]]
  return model, tokenizer, ids, load_seconds


def run_hf_reference(spec) -> dict:
  """(a) the reference way: `generate`, one prompt at a time."""
  import torch

  from tools import reference_hf
  from bmike_jax.engine.answer import cut_at_quote

  model, tokenizer, all_ids, load_seconds = _load_hf(spec)
  n_new = spec["max_new_tokens"]
  t0 = time.perf_counter()
  reference_hf.reference_generate_ids(model, all_ids[0][0], n_new)  # warm-up, untimed
  warmup = time.perf_counter() - t0
  groups = []
  for g, ids in zip(spec["groups"], all_ids):
    answers, generated = [], []
    t0 = time.perf_counter()
    for p in ids:
      new = reference_hf.reference_generate_ids(model, p, n_new)
      answers.append(cut_at_quote(tokenizer.decode(new, skip_special_tokens=True)))
      generated.append(len(new))
    seconds = time.perf_counter() - t0
    groups.append(_group_record(g, answers, seconds, ids, generated))
  return {
      "groups": groups,
      "load_seconds": load_seconds,
      "warmup_seconds": warmup,
      "torch_threads": torch.get_num_threads(),
  }


def run_hf_margins(spec) -> dict:
  """For prompts whose answers differ between systems: HF's greedy path and, at every step of it
  up to the answer's closing quote, the gap between its top two logits (one teacher-forced pass).
  A gap of ~1e-5 on logits of ~25 is an fp32 near-tie: any other summation order may flip it."""
  import numpy as np
  import torch

  from tools import reference_hf

  model = reference_hf.load_hf_model(spec["checkpoint"])
  tokenizer = reference_hf.load_hf_tokenizer(spec["checkpoint"])
  out = []
  for text in spec["prompts"]:
    ids = list(tokenizer(text)["input_ids"])
    new = reference_hf.reference_generate_ids(model, ids, spec["max_new_tokens"])
    with torch.no_grad():
      logits = model(torch.tensor([ids + new[:-1]])).logits[0, len(ids) - 1 :].float().numpy()
    gaps = []
    for step in range(len(new)):
      top2 = np.sort(logits[step])[-2:]
      gaps.append(float(top2[1] - top2[0]))
      if '"' in tokenizer.decode(new[: step + 1], skip_special_tokens=True):
        break
    low = int(np.argmin(gaps))
    out.append({"ids": new, "gaps": gaps, "min_gap": gaps[low], "min_gap_step": low})
  return {"prompts": out}


def _hf_batched_pass(model, tokenizer, spec, all_ids, batch_size):
  from tools.bench import hf_batched

  groups = []
  for g, ids in zip(spec["groups"], all_ids):
    t0 = time.perf_counter()
    answers, generated = hf_batched.batched_answers(
        model, tokenizer, ids, batch_size, spec["max_new_tokens"]
    )
    groups.append(
        _group_record(g, answers, time.perf_counter() - t0, ids, generated, batch_size=batch_size)
    )
  return groups


def _hf_batched_warmup(model, tokenizer, spec, all_ids, batch_size) -> float:
  from tools.bench import hf_batched

  t0 = time.perf_counter()
  hf_batched.batched_answers(
      model, tokenizer, all_ids[0][:batch_size], batch_size, spec["max_new_tokens"]
  )
  return time.perf_counter() - t0


def run_hf_batched(spec) -> dict:
  """(b) `generate` on left-padded batches of spec["batch_size"]."""
  import torch

  model, tokenizer, all_ids, load_seconds = _load_hf(spec)
  bs = int(spec["batch_size"])
  warmup = _hf_batched_warmup(model, tokenizer, spec, all_ids, bs)
  groups = _hf_batched_pass(model, tokenizer, spec, all_ids, bs)
  return {
      "groups": groups,
      "load_seconds": load_seconds,
      "warmup_seconds": warmup,
      "batch_size": bs,
      "torch_threads": torch.get_num_threads(),
  }


def run_hf_sweep(spec) -> dict:
  """(b) on a sample of the workload at every batch size of spec["batch_sizes"]."""
  import torch

  model, tokenizer, all_ids, load_seconds = _load_hf(spec)
  sweep = []
  for bs in spec["batch_sizes"]:
    warmup = _hf_batched_warmup(model, tokenizer, spec, all_ids, bs)
    groups = _hf_batched_pass(model, tokenizer, spec, all_ids, bs)
    sweep.append({"batch_size": bs, "warmup_seconds": warmup, "groups": groups})
  return {"sweep": sweep, "load_seconds": load_seconds, "torch_threads": torch.get_num_threads()}


# bmike-jax ---------------------------------------------------------------------------------------


class _CompileClock:
  """Sums jax's compile-phase durations (tracing, lowering, XLA backend compile) while active."""

  EVENTS = (
      "/jax/core/compile/jaxpr_trace_duration",
      "/jax/core/compile/jaxpr_to_mlir_module_duration",
      "/jax/core/compile/backend_compile_duration",
  )

  def __init__(self):
    import jax

    self.seconds = {e: 0.0 for e in self.EVENTS}
    try:
      jax.monitoring.register_event_duration_secs_listener(self._listen)
    except Exception:  # pylint: disable=broad-except  (monitoring is best effort)
      pass

  def _listen(self, event, duration, **kwargs):
    del kwargs
    if event in self.seconds:
      self.seconds[event] += duration

  def total(self) -> float:
    return sum(self.seconds.values())


def _engine_pass(engine, spec, all_ids, clock, label, subtract_compile=False):
  """One `generate` call per group. subtract_compile: a single pass whose time is the wall time
  minus the jax compile-event seconds inside it (no cold pass)."""
  groups = []
  for g, ids in zip(spec["groups"], all_ids):
    engine.reset_stats()
    compiles0, clock0 = engine.compile_count, clock.total()
    t0 = time.perf_counter()
    results = engine.generate(ids, prompt_names=g["names"])
    wall = time.perf_counter() - t0
    compile_seconds = clock.total() - clock0
    st = engine.stats
    groups.append(
        _group_record(
            g,
            [r.text for r in results],
            wall - compile_seconds if subtract_compile else wall,
            ids,
            [len(r.ids) for r in results],
            prefill_tokens=int(st.prefill_tokens),
            compiles=engine.compile_count - compiles0,
            compile_seconds=compile_seconds,
            wall_seconds=wall,
            pass_name=label,
        )
    )
  return groups


def run_engine(spec) -> dict:
  """(c) / (d): bmike-jax, one `generate` call per group; a cold pass (compiles) then a warm pass
  on the same shapes (the measurement), or with spec["cold_pass"] false one pass timed without its
  jax compile events; optionally the same two passes with max_new_tokens=1 (prefill only, for the
  FLOP-floor comparison)."""
  import jax

  from bmike_jax import checkpoints
  from bmike_jax import tokenizer as tokenizer_lib
  from bmike_jax.engine import Engine

  clock = _CompileClock()
  dtype = spec.get("dtype", "float32")
  t0 = time.perf_counter()
  config, params = checkpoints.load_model(spec["checkpoint"], dtype=dtype)
  tokenizer = tokenizer_lib.load_tokenizer(spec["checkpoint"])
  load_seconds = time.perf_counter() - t0
  spec["_memory_after_load"] = _rss_mib()
  all_ids = [[list(tokenizer.encode(t)) for t in g["texts"]] for g in spec["groups"]]
  buckets = spec.get("length_buckets") or None

  def make(max_new_tokens):
    return Engine(
        config,
        params,
        tokenizer,
        batch_size=spec["batch_size"],
        length_buckets=buckets,
        max_new_tokens=max_new_tokens,
        prefix_reuse=spec["prefix_reuse"],
        stem_reuse=bool(spec.get("stem_reuse", False)),
        dtype=dtype,
    )

  engine = make(spec["max_new_tokens"])
  params = engine.params  # the prefill-only engine shares the placed params; host copy freed
  embed = config.vocab_size * config.hidden_size
  out = {
      "load_seconds": load_seconds,
      "num_params": int(config.num_params),
      # parameters a token's forward pass multiplies by (the embedding is a lookup; the
      # lm_head, vocab x hidden, runs at one position per prompt)
      "token_matmul_params": int(
          config.num_params - embed * (1 if config.tie_word_embeddings else 2)
      ),
      "lm_head_params": int(embed),
      "batch_size": engine.batch_size,
      "length_buckets": list(engine.length_buckets),
      "prefix_reuse": bool(spec["prefix_reuse"]),
      "stem_reuse": bool(spec.get("stem_reuse", False)),
      "devices": [str(d) for d in jax.devices()],
      "memory_after_engine_mib": _rss_mib(),
  }
  out["cold_pass"] = bool(spec.get("cold_pass", True))
  if out["cold_pass"]:
    out["cold_groups"] = _engine_pass(engine, spec, all_ids, clock, "cold")
    out["groups"] = _engine_pass(engine, spec, all_ids, clock, "warm")
  else:
    out["groups"] = _engine_pass(engine, spec, all_ids, clock, "single", subtract_compile=True)
  out["compile_count"] = engine.compile_count
  out["programs"] = sorted(str(k) for k in engine.programs.compiles)
  if spec.get("prefill_only"):
    del engine
    pre = make(1)
    out["prefill_cold_groups"] = _engine_pass(pre, spec, all_ids, clock, "prefill_cold")
    out["prefill_groups"] = _engine_pass(pre, spec, all_ids, clock, "prefill_warm")
  return out


def run_peak(spec) -> dict:
  from tools.bench import flops

  return flops.matmul_peak(
      n=spec.get("n", 2048), dtype=spec.get("dtype", "float32"), reps=spec.get("reps", 5)
  )


SYSTEMS = {
    "hf_reference": run_hf_reference,
    "hf_batched": run_hf_batched,
    "hf_sweep": run_hf_sweep,
    "engine": run_engine,
    "peak": run_peak,
    "hf_margins": run_hf_margins,
}


def main(argv) -> int:
  if len(argv) != 3:
    print("usage: python -m tools.bench.worker SPEC.json OUT.json", file=sys.stderr)
    return 2
  with open(argv[1], encoding="utf-8") as f:
    spec = json.load(f)
  t0 = time.perf_counter()
  result = SYSTEMS[spec["system"]](spec)
  result["system"] = spec["system"]
  if "_memory_after_load" in spec:  # {"rss", "hwm"} in MiB once the model was loaded
    result["memory_after_load_mib"] = spec["_memory_after_load"]
    result["rss_after_load_mib"] = spec["_memory_after_load"].get("rss")
  result["wall_seconds"] = time.perf_counter() - t0
  mem = _rss_mib()
  result["peak_rss_mib"] = mem.get("hwm")
  result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  with open(argv[2], "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
