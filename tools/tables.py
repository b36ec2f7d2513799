"""The benchmarks' tables, rendered from their raw JSON in one place (and the aggregation of the
CPU workers' results they need):

    python -m tools.tables --from=outputs/bench/cpu.json     # or a GPU run's .json

prints the markdown report again without measuring anything (`tools.bench_cpu` and
`tools.bench_gpu` print the same by calling `render`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Sequence

from tools.bench import flops

SYSTEM_NAMES = {
    "a": "(a) HF generate, 1 prompt at a time",
    "b": "(b) HF generate, batched",
    "c": "(c) bmike-jax, no prefix reuse",
    "d": "(d) bmike-jax, prefix reuse",
    "e": "(e) bmike-jax, prefix + record-stem reuse",
}
ENGINE_SYSTEMS = ("c", "d", "e")  # bmike-jax's own (compile columns, cold passes)
# The system the targets are read off: the newest engine configuration in the run.
TARGET_SYSTEMS = ("e", "d")

MAIN_COLUMNS = (
    "system",
    "setup",
    "prompts",
    "time (s)",
    "prompts/s",
    "gen tok/s",
    "prefill tok/s",
    "unique prefill tok/s",
    "compile (s)",
    "peak RSS (MiB)",
    "= (a)",
    "= (b)",
    "× (a)",
    "× (b)",
)
FLOOR_COLUMNS = (
    "system",
    "setup",
    "prompts",
    "prompt tokens",
    "unique tokens computed",
    "prefill-only time (s)",
    "FLOP floor 2N (s)",
    "2N floor / time",
    "matmul floor (s)",
    "matmul floor / time",
    "achieved matmul GFLOP/s",
)
SWEEP_COLUMNS = ("batch size", "prompts", "time (s)", "prompts/s", "= (a)")
TARGET_SETUP = "few_shot_mixed"
TARGETS = {"vs_a": 10.0, "vs_b": 3.0, "identical_a": 0.99}


def _fmt(x, digits=2) -> str:
  if x is None:
    return "—"
  if isinstance(x, str):
    return x
  if isinstance(x, int):
    return str(x)
  if abs(x) >= 100:
    return f"{x:,.0f}"
  return f"{x:.{digits}f}"


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}%"


def _ratio(x) -> str:
  return "—" if x is None else f"{x:.2f}×"


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def scopes(groups: Sequence[dict]) -> list[str]:
  seen = []
  for g in groups:
    if g["setup"] not in seen:
      seen.append(g["setup"])
  return seen + ["all"]


def _in_scope(groups, scope):
  return [g for g in groups if scope == "all" or g["setup"] == scope]


def aggregate(result: dict, scope: str, key: str = "groups") -> dict:
  gs = _in_scope(result.get(key) or [], scope)
  out = {
      "prompts": sum(g["prompts"] for g in gs),
      "seconds": sum(g["seconds"] for g in gs),
      "prompt_tokens": sum(g["prompt_tokens"] for g in gs),
      "generated_tokens": sum(g["generated_tokens"] for g in gs),
      "answers": [a for g in gs for a in g["answers"]],
      "digests": [d for g in gs for d in g["ids_digests"]],
  }
  if gs and "prefill_tokens" in gs[0]:
    out["prefill_tokens"] = sum(g["prefill_tokens"] for g in gs)
  cold = _in_scope(result.get("cold_groups") or [], scope)
  if gs and not cold and "compile_seconds" in gs[0]:  # single pass, compile events subtracted
    out["jax_compile_seconds"] = sum(g["compile_seconds"] for g in gs)
    out["compiles"] = sum(g.get("compiles", 0) for g in gs)
  if cold:
    out["compile_seconds"] = max(0.0, sum(g["seconds"] for g in cold) - out["seconds"])
    out["jax_compile_seconds"] = sum(g.get("compile_seconds", 0.0) for g in cold)
    out["compiles"] = sum(g.get("compiles", 0) for g in cold)
    out["warm_compiles"] = sum(g.get("compiles", 0) for g in gs)
  s = out["seconds"]
  out["prompts_per_s"] = out["prompts"] / s if s else None
  out["gen_tokens_per_s"] = out["generated_tokens"] / s if s else None
  out["prefill_tokens_per_s"] = out["prompt_tokens"] / s if s else None
  if "prefill_tokens" in out:
    out["unique_prefill_tokens_per_s"] = out["prefill_tokens"] / s if s else None
  return out


def identical(a: Sequence[str], b: Sequence[str]) -> float | None:
  if not a or not b or len(a) != len(b):
    return None
  return sum(x == y for x, y in zip(a, b)) / len(a)


NEAR_TIE = 1e-4  # top-2 logit gap (fp32) below which a greedy step is a coin flip of rounding


def differing_answers(results: dict) -> list[dict]:
  """Prompts whose answer from (b), (c) or (d) differs from (a)'s: key, index, name, answers."""
  if "a" not in results:
    return []
  out = {}
  for ga in results["a"]["groups"]:
    for label in ("b", *ENGINE_SYSTEMS):
      for g in results.get(label, {}).get("groups", []):
        if g["key"] != ga["key"]:
          continue
        for i, (x, y) in enumerate(zip(ga["answers"], g["answers"])):
          if x != y:
            d = out.setdefault(
                (ga["key"], i),
                {"key": ga["key"], "index": i, "name": ga["names"][i], "a": x, "systems": {}},
            )
            d["systems"][label] = y
  return [out[k] for k in sorted(out)]


def differing_table(differing: Sequence[dict]) -> str:
  """One row per prompt answered differently: HF's smallest top-2 logit gap along its own greedy
  path (up to the closing quote) tells whether the divergence is an fp32 near-tie."""
  rows = []
  for d in differing:
    others = "; ".join(f"({k}) {v!r}" for k, v in sorted(d["systems"].items()))
    rows.append(
        [
            d["name"],
            repr(d["a"]),
            others,
            f"{d['min_gap']:.2e}",
            str(d["min_gap_step"] + 1),
            "yes" if d["min_gap"] < NEAR_TIE else "no",
        ]
    )
  return md_table(
      [
          "prompt",
          "(a) answer",
          "other answers",
          "HF min top-2 logit gap",
          "at step",
          f"near-tie (< {NEAR_TIE:g})",
      ],
      rows,
  )


def summarize(results: dict, peak: dict | None) -> dict:
  """results: label ("a".."e") -> worker result. Returns per label and scope the numbers of the
  tables, the FLOP-floor rows and the target checks (all JSON-serialisable)."""
  any_result = next(iter(results.values()))
  scope_names = scopes(any_result["groups"])
  summary = {"scopes": scope_names, "systems": {}, "floor": {}, "targets": {}, "ids_mismatch": {}}
  for label, res in results.items():
    per = {}
    for scope in scope_names:
      agg = aggregate(res, scope)
      per[scope] = agg
    summary["systems"][label] = per
  for label, per in summary["systems"].items():
    for scope, agg in per.items():
      for ref in ("a", "b"):
        other = summary["systems"].get(ref, {}).get(scope)
        agg[f"identical_{ref}"] = identical(agg["answers"], other["answers"]) if other else None
        agg[f"vs_{ref}"] = (
            agg["prompts_per_s"] / other["prompts_per_s"]
            if other and other["prompts_per_s"] and agg["prompts_per_s"]
            else None
        )
    # Prompt token ids: every system should have run the same ids (HF tokenizer vs bmike-jax's).
    base = next((summary["systems"][k] for k in ("d", "c", "e") if k in summary["systems"]), None)
    if base:
      a, b = per["all"]["digests"], base["all"]["digests"]
      summary["ids_mismatch"][label] = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
  peak_flops = peak["flops"] if peak else None
  for label, res in results.items():
    if not res.get("prefill_groups"):
      continue
    rows = {}
    for scope in scope_names:
      agg = aggregate(res, scope, key="prefill_groups")
      unique = agg.get("prefill_tokens", agg["prompt_tokens"])
      secs = agg["seconds"]
      work = flops.matmul_flops(
          unique, agg["prompts"], res["token_matmul_params"], res["lm_head_params"]
      )
      floor = (
          flops.flop_floor_seconds(unique, res["num_params"], peak_flops) if peak_flops else None
      )
      mfloor = work / peak_flops if peak_flops else None
      rows[scope] = {
          "prompts": agg["prompts"],
          "prompt_tokens": agg["prompt_tokens"],
          "unique_tokens": unique,
          "prefill_seconds": secs,
          "floor_seconds": floor,
          "floor_fraction": floor / secs if floor and secs else None,
          "matmul_floor_seconds": mfloor,
          "matmul_floor_fraction": mfloor / secs if mfloor and secs else None,
          "achieved_flops": work / secs if secs else None,
      }
    summary["floor"][label] = rows
  system = next((k for k in TARGET_SYSTEMS if k in summary["systems"]), "d")
  d = summary["systems"].get(system, {}).get(TARGET_SETUP)
  if d:
    summary["targets"] = {
        "system": system,
        "vs_a": d["vs_a"],
        "vs_b": d["vs_b"],
        "identical_a": d["identical_a"],
        "pass": {k: (d[k] >= v if d[k] is not None else None) for k, v in TARGETS.items()},
    }
  return summary


def main_table(summary: dict, results: dict) -> str:
  rows = []
  for label in ("a", "b", *ENGINE_SYSTEMS):
    if label not in summary["systems"]:
      continue
    name = SYSTEM_NAMES[label]
    if label == "b":
      name += f" (bs {results['b'].get('batch_size')})"
    if label in ENGINE_SYSTEMS:
      name += f" (bs {results[label].get('batch_size')})"
    for scope, agg in summary["systems"][label].items():
      compile_s = agg.get("jax_compile_seconds")
      rows.append(
          [
              name,
              scope,
              agg["prompts"],
              _fmt(agg["seconds"]),
              _fmt(agg["prompts_per_s"]),
              _fmt(agg["gen_tokens_per_s"]),
              _fmt(agg["prefill_tokens_per_s"]),
              _fmt(agg.get("unique_prefill_tokens_per_s")),
              _fmt(compile_s) if label in ENGINE_SYSTEMS else "—",
              _fmt(results[label].get("peak_rss_mib"), 0) if scope == "all" else "",
              _pct(agg["identical_a"]),
              _pct(agg["identical_b"]),
              _ratio(agg["vs_a"]),
              _ratio(agg["vs_b"]),
          ]
      )
  return md_table(MAIN_COLUMNS, rows)


def floor_table(summary: dict) -> str:
  rows = []
  for label, per in summary["floor"].items():
    for scope, r in per.items():
      rows.append(
          [
              SYSTEM_NAMES[label],
              scope,
              r["prompts"],
              r["prompt_tokens"],
              r["unique_tokens"],
              _fmt(r["prefill_seconds"]),
              _fmt(r["floor_seconds"], 3),
              _pct(r["floor_fraction"]),
              _fmt(r["matmul_floor_seconds"], 3),
              _pct(r["matmul_floor_fraction"]),
              _fmt(r["achieved_flops"] / 1e9 if r["achieved_flops"] else None),
          ]
      )
  return md_table(FLOOR_COLUMNS, rows)


def sweep_table(sweep: dict | None, reference: dict | None) -> str:
  if not sweep:
    return ""
  rows = []
  for entry in sweep["sweep"]:
    agg = aggregate(entry, "all")
    ident = None
    if reference:
      # the sweep ran a subset: compare by prompt name against the reference's answers
      ref = {n: a for g in reference["groups"] for n, a in zip(g.get("names", []), g["answers"])}
      pairs = [
          (a, ref.get(n)) for g in entry["groups"] for n, a in zip(g.get("names", []), g["answers"])
      ]
      pairs = [(x, y) for x, y in pairs if y is not None]
      ident = sum(x == y for x, y in pairs) / len(pairs) if pairs else None
    rows.append(
        [
            entry["batch_size"],
            agg["prompts"],
            _fmt(agg["seconds"]),
            _fmt(agg["prompts_per_s"]),
            _pct(ident),
        ]
    )
  return md_table(SWEEP_COLUMNS, rows)


def targets_lines(summary: dict) -> str:
  t = summary.get("targets")
  if not t:
    return f"Targets: not evaluated (setup {TARGET_SETUP} or system (d) / (e) not in this run)."

  def verdict(key):
    p = t["pass"][key]
    return "n/a" if p is None else ("PASS" if p else "FAIL")

  system = f"({t.get('system', 'd')})"  # runs saved before (e) existed: (d)
  return "\n".join(
      [
          f"- {TARGET_SETUP}: {system} prompts/s vs (a) = {_ratio(t['vs_a'])} "
          f"(target ≥ {TARGETS['vs_a']:.0f}×): {verdict('vs_a')}",
          f"- {TARGET_SETUP}: {system} prompts/s vs (b) = {_ratio(t['vs_b'])} "
          f"(target ≥ {TARGETS['vs_b']:.0f}×): {verdict('vs_b')}",
          f"- {TARGET_SETUP}: {system} answers identical to (a) = {_pct(t['identical_a'])} "
          f"(target ≥ {100 * TARGETS['identical_a']:.0f}%): {verdict('identical_a')}",
      ]
  )


def machine_info() -> dict:
  info = {
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
  }
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu"] = line.split(":", 1)[1].strip()
          break
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  for mod in ("jax", "jaxlib", "flax", "torch", "transformers"):
    try:
      info[mod] = __import__(mod).__version__
    except Exception:  # pylint: disable=broad-except
      info[mod] = None
  try:
    info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
  except OSError:
    pass
  return info


def machine_line(info: dict) -> str:
  parts = [
      f"CPU: {info.get('cpu', '?')}, {info.get('cpu_count')} cores visible, "
      f"{info.get('mem_gib', '?')} GiB RAM",
      f"jax {info.get('jax')}, flax {info.get('flax')}, torch {info.get('torch')}, "
      f"transformers {info.get('transformers')}, Python {info.get('python')}",
  ]
  if "loadavg_start" in info:
    parts.append(
        f"load average at start {info['loadavg_start']}, at end "
        f"{info.get('loadavg_end', '?')} (a busy machine distorts every number)"
    )
  return "\n".join(f"- {p}" for p in parts)


def strip_lists(summary: dict) -> dict:
  """The summary without the per-prompt lists (they are in the raw `results`)."""
  out = json.loads(json.dumps(summary))
  for per in out["systems"].values():
    for agg in per.values():
      agg.pop("answers", None)
      agg.pop("digests", None)
  return out


def render(raw: dict) -> str:
  """The markdown report of one benchmark run from its raw JSON (CPU or GPU)."""
  return render_gpu(raw) if raw.get("section") == "gpu" or "decode" in raw else render_cpu(raw)


def render_cpu(raw: dict) -> str:
  """The CPU benchmark's report (tools/bench_cpu.py) from its raw JSON."""
  info, data_dir, checkpoint = raw["machine"], raw["data_dir"], raw["checkpoint"]
  results, extra, run_flags = raw["results"], raw["extra"], raw["flags"]
  summary = summarize(results, extra["peak"])
  groups = next(iter(results.values()))["groups"]  # every system ran the same groups
  peak = extra["peak"]
  langs = sorted({g["lang"] for g in groups}, key=[g["lang"] for g in groups].index)
  setups = sorted({g["setup"] for g in groups}, key=[g["setup"] for g in groups].index)
  # (runs saved before groups recorded their query types asked all 4 in each group)
  records = {g["lang"]: g["prompts"] // len(g.get("query_types", "1234")) for g in groups}
  d = results.get("d", {})
  lines = [
      f"### CPU: {os.path.basename(checkpoint.rstrip('/'))} (fp32), bmike-jax vs HF transformers",
      "",
      machine_line(info),
      f"- measured fp32 matmul peak (jnp.dot {peak['n']}², best of {peak['reps']}): "
      f"{peak['flops'] / 1e9:.1f} GFLOP/s",
      f"- workload: {run_flags['dataset']} from `{data_dir}`, records per language {records}, × 4 query "
      f"types, languages {', '.join(langs)}, setups {', '.join(setups)}: "
      f"{sum(g['prompts'] for g in groups)} prompts, {run_flags['max_new_tokens']} new tokens max; "
      f"model `{os.path.basename(checkpoint)}` ({d.get('num_params', 0) / 1e6:.1f}M params)",
      f"- command: `{raw['command']}`",
      "",
      main_table(summary, results),
      "",
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
  lines.append(
      "- prompt token ids identical across systems: "
      + ("yes" if not mism else f"NO, differing prompts per system: {mism}")
  )
  for label in ("a", "b", *ENGINE_SYSTEMS):
    if label not in results:
      continue
    r, agg = results[label], summary["systems"][label]["all"]
    mem = r.get("memory_after_load_mib") or {}
    line = (
        f"- {SYSTEM_NAMES[label]}: model load {r.get('load_seconds', 0):.1f} s, RSS "
        f"after load {mem.get('rss', 0):.0f} MiB (high-water {mem.get('hwm', 0):.0f} MiB), "
        f"peak {r.get('peak_rss_mib', 0):.0f} MiB"
    )
    if label in ENGINE_SYSTEMS and r.get("cold_pass", True):
      line += (
          f"; {r['compile_count']} programs compiled (jax compile events "
          f"{agg.get('jax_compile_seconds', 0):.1f} s; cold pass − warm pass "
          f"{agg.get('compile_seconds', 0):.1f} s), {agg.get('warm_compiles')} in the timed "
          "warm pass (should be 0)"
      )
    elif label in ENGINE_SYSTEMS:
      line += (
          f"; {r['compile_count']} programs compiled; no cold pass: timed once, its "
          f"{agg.get('jax_compile_seconds', 0):.1f} s of jax compile events subtracted"
      )
    lines.append(line)
  lines.append("")
  if summary["floor"]:
    lines += [
        f"Prefill against the FLOP floor at the measured {peak['flops'] / 1e9:.1f} GFLOP/s: "
        f"2N floor = unique prompt tokens × 2 × {d.get('num_params', 0) / 1e6:.1f}M params; "
        f"matmul floor = 2 × ({d.get('token_matmul_params', 0) / 1e6:.1f}M decoder params × "
        f"unique tokens + {d.get('lm_head_params', 0) / 1e6:.1f}M lm_head params × prompts) "
        "(the embedding is a lookup, logits are computed at the last position only); "
        "prefill-only = the same workload with max_new_tokens=1, warm; floor / time is the "
        "share of the peak achieved:",
        "",
        floor_table(summary),
        "",
    ]
  if extra.get("hf_sweep"):
    what = (
        "whole workload"
        if extra["hf_sweep"].get("full_workload")
        else f"a sample of ~{run_flags['hf_sweep_prompts']} prompts"
    )
    lines += [
        f"HF batched, batch sizes tried on {what} (best used for (b)):",
        "",
        sweep_table(extra["hf_sweep"], results.get("a")),
        "",
    ]
  if extra.get("differing"):
    lines += [
        "Answers that differ from (a), with HF's own smallest gap between its top two logits "
        "along its greedy path (one teacher-forced pass): a gap near fp32 rounding means any "
        "other summation order (batching, padding, another library) may pick the other "
        "token.",
        "",
        differing_table(extra["differing"]),
        "",
    ]
  lines += ["Targets (CPU, 8-shot):", "", targets_lines(summary)]
  return "\n".join(lines) + "\n"


def _gpu_setup_facts(res: dict) -> str:
  """ "; length buckets ...; decoder layers ..." for the facts the run recorded (runs saved before
  a fact was recorded render without it, as they were printed then)."""
  out = ""
  if res.get("length_buckets"):
    out += f"; length buckets {','.join(map(str, res['length_buckets']))}"
  if "scan_layers" in res:
    out += "; decoder layers " + (
        "scanned (stacked params)" if res["scan_layers"] else "unrolled (per-layer params)"
    )
  return out


def render_gpu(res: dict) -> str:
  """The GPU benchmark's report (tools/bench_gpu.py) from its raw JSON."""
  fmt, pct, ratio = _fmt, _pct, _ratio
  lines = [f"### GPU: synthetic {res['model']} (bf16, random weights) on {res['device']}", ""]
  mm = res["measured_matmul"]
  lines += [
      f"- parameters: {res['num_params'] / 1e9:.3f}B, {res['param_bytes'] / 1e9:.2f} GB; "
      f"engine batch size {res['batch_size']}" + _gpu_setup_facts(res),
      (
          f"- HBM bandwidth used: {fmt(res['hbm_bandwidth'] / 1e12)} TB/s "
          f"({res['hbm_bandwidth_source']})"
          if res["hbm_bandwidth"]
          else "- HBM bandwidth: unknown device (pass --hbm_bandwidth)"
      )
      + "; dense bf16 peak used: "
      f"{fmt(res['peak_bf16_flops'] / 1e12)} TFLOP/s ({res['peak_source']}); measured bf16 "
      f"matmul ({mm['n']}²): {fmt(mm['flops'] / 1e12)} TFLOP/s",
      f"- device memory peak: {fmt((res['device_memory'].get('peak_bytes_in_use') or 0) / 2**30)} GiB",
      "",
      md_table(
          (
              "setup",
              "prompts",
              "mean prompt tokens",
              "unique tokens",
              "time (s)",
              "prompts/s",
              "compile (s)",
              "prefill-only (s)",
              "prefill MFU",
          ),
          [
              [
                  s,
                  r["full"]["prompts"],
                  fmt(r["full"]["prompt_tokens"] / max(1, r["full"]["prompts"])),
                  r["prefill"]["prefill_tokens"],
                  fmt(r["full"]["seconds"]),
                  fmt(r["full"]["prompts_per_s"]),
                  fmt(r["full"]["compile_seconds"] + r["prefill"]["compile_seconds"]),
                  fmt(r["prefill"]["seconds"], 3),
                  pct(r["prefill"]["mfu"]),
              ]
              for s, r in res["setups"].items()
          ],
      ),
      "",
      md_table(
          (
              "decode (prompt length)",
              "batch",
              "cache slots",
              "step (ms)",
              "HBM floor (ms)",
              "step / floor",
              "floor incl. KV (ms)",
              "step / floor incl. KV",
          ),
          [
              [
                  f"{s} ({d['prompt_length']})",
                  d["batch"],
                  d["cache_slots"],
                  fmt(d["step_seconds"] * 1e3, 3),
                  fmt(d["floor_seconds"] * 1e3 if d["floor_seconds"] else None, 3),
                  ratio(d["ratio"]),
                  fmt(d["floor_kv_seconds"] * 1e3 if d["floor_kv_seconds"] else None, 3),
                  ratio(d["ratio_kv"]),
              ]
              for s, d in res["decode"].items()
          ],
      ),
      "",
  ]
  proj = res["projection"]
  rows = [
      [
          s,
          f"{p['prompts']:,}",
          p["measured_as"],
          fmt(p["prompts_per_s"]),
          fmt(p["seconds"] / 3600, 2),
      ]
      for s, p in proj.items()
  ]
  rows.append(
      [
          "total",
          f"{sum(p['prompts'] for p in proj.values()):,}",
          "",
          "",
          fmt(res["projected_seconds"] / 3600, 2),
      ]
  )
  lines += [
      "Synthetic prompts copy the token lengths (and the shared demonstration prefix) of the real "
      "prompts under the SmolLM2 tokenizer; lengths from: "
      + ", ".join(f"{k} {v}" for k, v in res.get("lengths_source", {}).items())
      + ".",
      "",
      "Projected full sweep (3 datasets × 53 languages × 4 query types per setup; greedy answers "
      "only, no likelihood scoring; 15 tokens per answer since random weights never close the "
      "quote):",
      "",
      md_table(("setup", "prompts", "rate measured as", "prompts/s", "hours"), rows),
  ]
  if not res["projection_complete"]:
    lines.append("\n(not every setup was measured: the total covers the measured ones only)")
  worst = [d["ratio"] for d in res["decode"].values() if d["ratio"] is not None]
  if worst:
    lines += [
        "",
        f"- target: decode step within 1.25× the HBM floor: worst {max(worst):.2f}× → "
        f"{'PASS' if max(worst) <= 1.25 else 'FAIL'}",
    ]
  lines += ["", f"- command: `{res['command']}`"]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  import argparse

  parser = argparse.ArgumentParser(description="Render a benchmark's tables from its raw JSON.")
  parser.add_argument(
      "--from",
      dest="source",
      required=True,
      help="the .json a tools.bench_cpu / tools.bench_gpu run wrote (--output)",
  )
  args = parser.parse_args(argv)
  try:
    with open(args.source, encoding="utf-8") as f:
      raw = json.load(f)
    md = render(raw)
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(
        f"error: --from={args.source}: not a benchmark's raw JSON ({type(e).__name__}: {e})",
        file=sys.stderr,
    )
    return 1
  print(md, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
