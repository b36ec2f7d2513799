"""Aggregation of the workers' results and the markdown tables the bench prints."""

from __future__ import annotations

import os
import platform
import sys
from typing import Sequence

from bmike_jax.benchmarks import flops

SYSTEM_NAMES = {
    "a": "(a) HF generate, 1 prompt at a time",
    "b": "(b) HF generate, batched",
    "c": "(c) bmike-jax, no prefix reuse",
    "d": "(d) bmike-jax, prefix reuse",
}

MAIN_COLUMNS = ("system", "setup", "prompts", "time (s)", "prompts/s", "gen tok/s",
                "prefill tok/s", "unique prefill tok/s", "compile (s)", "peak RSS (MiB)",
                "= (a)", "= (b)", "× (a)", "× (b)")
FLOOR_COLUMNS = ("system", "setup", "prompts", "prompt tokens", "unique tokens computed",
                 "prefill-only time (s)", "FLOP floor 2N (s)", "2N floor / time",
                 "matmul floor (s)", "matmul floor / time", "achieved matmul GFLOP/s")
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
    for label in ("b", "c", "d"):
      for g in results.get(label, {}).get("groups", []):
        if g["key"] != ga["key"]:
          continue
        for i, (x, y) in enumerate(zip(ga["answers"], g["answers"])):
          if x != y:
            d = out.setdefault((ga["key"], i), {"key": ga["key"], "index": i,
                                                "name": ga["names"][i], "a": x, "systems": {}})
            d["systems"][label] = y
  return [out[k] for k in sorted(out)]


def differing_table(differing: Sequence[dict]) -> str:
  """One row per prompt answered differently: HF's smallest top-2 logit gap along its own greedy
  path (up to the closing quote) tells whether the divergence is an fp32 near-tie."""
  rows = []
  for d in differing:
    others = "; ".join(f"({k}) {v!r}" for k, v in sorted(d["systems"].items()))
    rows.append([d["name"], repr(d["a"]), others, f"{d['min_gap']:.2e}",
                 str(d["min_gap_step"] + 1), "yes" if d["min_gap"] < NEAR_TIE else "no"])
  return md_table(["prompt", "(a) answer", "other answers", "HF min top-2 logit gap",
                   "at step", f"near-tie (< {NEAR_TIE:g})"], rows)


def summarize(results: dict, peak: dict | None) -> dict:
  """results: label ("a".."d") -> worker result. Returns per label and scope the numbers of the
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
        agg[f"vs_{ref}"] = (agg["prompts_per_s"] / other["prompts_per_s"]
                            if other and other["prompts_per_s"] and agg["prompts_per_s"] else None)
    # Prompt token ids: every system should have run the same ids (HF tokenizer vs bmike-jax's).
    base = summary["systems"].get("d") or summary["systems"].get("c")
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
      work = flops.matmul_flops(unique, agg["prompts"], res["token_matmul_params"],
                                res["lm_head_params"])
      floor = flops.flop_floor_seconds(unique, res["num_params"], peak_flops) if peak_flops else None
      mfloor = work / peak_flops if peak_flops else None
      rows[scope] = {
          "prompts": agg["prompts"], "prompt_tokens": agg["prompt_tokens"],
          "unique_tokens": unique, "prefill_seconds": secs, "floor_seconds": floor,
          "floor_fraction": floor / secs if floor and secs else None,
          "matmul_floor_seconds": mfloor,
          "matmul_floor_fraction": mfloor / secs if mfloor and secs else None,
          "achieved_flops": work / secs if secs else None}
    summary["floor"][label] = rows
  d = summary["systems"].get("d", {}).get(TARGET_SETUP)
  if d:
    summary["targets"] = {
        "vs_a": d["vs_a"], "vs_b": d["vs_b"], "identical_a": d["identical_a"],
        "pass": {k: (d[k] >= v if d[k] is not None else None) for k, v in TARGETS.items()}}
  return summary


def main_table(summary: dict, results: dict) -> str:
  rows = []
  for label in ("a", "b", "c", "d"):
    if label not in summary["systems"]:
      continue
    name = SYSTEM_NAMES[label]
    if label == "b":
      name += f" (bs {results['b'].get('batch_size')})"
    if label in ("c", "d"):
      name += f" (bs {results[label].get('batch_size')})"
    for scope, agg in summary["systems"][label].items():
      compile_s = agg.get("jax_compile_seconds")
      rows.append([
          name, scope, agg["prompts"], _fmt(agg["seconds"]), _fmt(agg["prompts_per_s"]),
          _fmt(agg["gen_tokens_per_s"]), _fmt(agg["prefill_tokens_per_s"]),
          _fmt(agg.get("unique_prefill_tokens_per_s")),
          _fmt(compile_s) if label in ("c", "d") else "—",
          _fmt(results[label].get("peak_rss_mib"), 0) if scope == "all" else "",
          _pct(agg["identical_a"]), _pct(agg["identical_b"]), _ratio(agg["vs_a"]),
          _ratio(agg["vs_b"])])
  return md_table(MAIN_COLUMNS, rows)


def floor_table(summary: dict) -> str:
  rows = []
  for label, per in summary["floor"].items():
    for scope, r in per.items():
      rows.append([SYSTEM_NAMES[label], scope, r["prompts"], r["prompt_tokens"],
                   r["unique_tokens"], _fmt(r["prefill_seconds"]), _fmt(r["floor_seconds"], 3),
                   _pct(r["floor_fraction"]), _fmt(r["matmul_floor_seconds"], 3),
                   _pct(r["matmul_floor_fraction"]),
                   _fmt(r["achieved_flops"] / 1e9 if r["achieved_flops"] else None)])
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
      pairs = [(a, ref.get(n)) for g in entry["groups"] for n, a in zip(g.get("names", []),
                                                                         g["answers"])]
      pairs = [(x, y) for x, y in pairs if y is not None]
      ident = sum(x == y for x, y in pairs) / len(pairs) if pairs else None
    rows.append([entry["batch_size"], agg["prompts"], _fmt(agg["seconds"]),
                 _fmt(agg["prompts_per_s"]), _pct(ident)])
  return md_table(SWEEP_COLUMNS, rows)


def targets_lines(summary: dict) -> str:
  t = summary.get("targets")
  if not t:
    return f"Targets: not evaluated (setup {TARGET_SETUP} or system (d) not in this run)."
  def verdict(key):
    p = t["pass"][key]
    return "n/a" if p is None else ("PASS" if p else "FAIL")
  return "\n".join([
      f"- {TARGET_SETUP}: (d) prompts/s vs (a) = {_ratio(t['vs_a'])} "
      f"(target ≥ {TARGETS['vs_a']:.0f}×): {verdict('vs_a')}",
      f"- {TARGET_SETUP}: (d) prompts/s vs (b) = {_ratio(t['vs_b'])} "
      f"(target ≥ {TARGETS['vs_b']:.0f}×): {verdict('vs_b')}",
      f"- {TARGET_SETUP}: (d) answers identical to (a) = {_pct(t['identical_a'])} "
      f"(target ≥ {100 * TARGETS['identical_a']:.0f}%): {verdict('identical_a')}",
  ])


def machine_info() -> dict:
  info = {"python": sys.version.split()[0], "platform": platform.platform(),
          "cpu_count": os.cpu_count()}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          info["cpu"] = line.split(":", 1)[1].strip()
          break
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          info["mem_gib"] = round(int(line.split()[1]) / 2 ** 20, 1)
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
  parts = [f"CPU: {info.get('cpu', '?')}, {info.get('cpu_count')} cores visible, "
           f"{info.get('mem_gib', '?')} GiB RAM",
           f"jax {info.get('jax')}, flax {info.get('flax')}, torch {info.get('torch')}, "
           f"transformers {info.get('transformers')}, Python {info.get('python')}"]
  if "loadavg_start" in info:
    parts.append(f"load average at start {info['loadavg_start']}, at end "
                 f"{info.get('loadavg_end', '?')} (a busy machine distorts every number)")
  return "\n".join(f"- {p}" for p in parts)
