"""The summary tables printed at the end of a run (plain text, one block per dataset)."""

from __future__ import annotations

from statistics import mean


def _fmt(values: list[float]) -> str:
  values = [v for v in values if v is not None]
  return f"{mean(values):6.2f}" if values else "   n/a"


def summary_tables(results: dict, metric_pair=("em", "f1_ref")) -> str:
  """Per dataset: setup x query type averaged over languages, then per language x setup."""
  lines = []
  for dataset, by_setup in results.items():
    setups = list(by_setup)
    langs = sorted({lang for s in by_setup.values() for lang in s})
    qts = []
    for s in by_setup.values():
      for per_lang in s.values():
        qts += [q for q in per_lang if q not in qts]
    a, b = metric_pair
    lines.append(f"== {dataset}: {a} / {b}, mean over {len(langs)} language(s)")
    lines.append(f"{'setup':<20}" + "".join(f"{qt:>18}" for qt in qts))
    for setup in setups:
      cells = []
      for qt in qts:
        cell = [by_setup[setup][lang][qt] for lang in langs if qt in by_setup[setup].get(lang, {})]
        cells.append(f"{_fmt([c[a] for c in cell])} /{_fmt([c[b] for c in cell])}")
      lines.append(f"{setup:<20}" + "".join(f"{c:>18}" for c in cells))
    lines.append(f"-- {dataset}: {a} per language (mean over query types)")
    lines.append(f"{'lang':<8}" + "".join(f"{s:>20}" for s in setups))
    for lang in langs:
      cells = [_fmt([m[a] for m in by_setup[s].get(lang, {}).values()]) for s in setups]
      lines.append(f"{lang:<8}" + "".join(f"{c:>20}" for c in cells))
    lines.append("")
  return "\n".join(lines)
