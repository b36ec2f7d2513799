"""The report's section on editing methods (runs with --methods): in-context setups and weight
edits side by side.

Rows of weight-editing methods carry `method` and `protocol` (their `setup`); they are re-scored
here as the runner scored them: the `comparable` protocol against the gold answer, the `reference`
protocol's locality against the unedited model's answer (`scored_against`), and compared with
results.json's `results_by_method`. In-context rows (no `method`, or "ike") keep their own sections.
"""

from bmike_jax import metrics
from bmike_jax.analysis import figures
from bmike_jax.data import DATASETS, QUERY_TYPES
from bmike_jax.languages import LANGUAGES
from bmike_jax.prompts import SETUPS
from bmike_jax.runner import units

IKE = units.IKE
METHOD_ORDER = (IKE, "ft", "lora", "rome", "kn", "memit")
PROTOCOL_ORDER = ("reference", "comparable")
KEYS = ("method", "dataset", "setup", "lang", "query_type")


def method_of(row):
  return row.get("method") or IKE


def against(row):
  """What a row's prediction was scored against (the reference protocol's locality: the
  pre-edit answer)."""
  if row.get("scored_against") == "pre_prediction":
    return row["pre_prediction"]
  return row["gold"]


def rescore_methods(rows, tokenizer, ike_rescored):
  """results[method][dataset][setup][lang][query_type]: the weight-editing rows re-scored, the
  in-context results (already re-scored) under "ike"."""
  fresh = []
  for row in rows:
    if method_of(row) == IKE:
      continue
    new = {k: v for k, v in row.items() if not k.startswith("_")}
    new["method"] = method_of(row)
    new.update(
        metrics.answer_scores(
            row["prediction"],
            against(row),
            row["lang"],
            encode=lambda text: list(tokenizer.encode(text, add_bos=False)),
        )
    )
    fresh.append(new)
  out = metrics.aggregate_rows(fresh, keys=KEYS) if fresh else {}
  if ike_rescored:
    out = {IKE: ike_rescored, **out}
  return out


def _order(names, known):
  names = set(names)
  return [n for n in known if n in names] + sorted(names - set(known))


def _mean(values):
  values = [v for v in values if v is not None]
  return round(sum(values) / len(values), 2) if values else None


def _fmt(value):
  return "–" if value is None else f"{value:.2f}"


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def series(by_method, dataset):
  """(label, {lang: {query_type: cell}}) per method and setup / protocol, in a fixed order."""
  out = []
  for method in _order(by_method, METHOD_ORDER):
    setups = by_method[method].get(dataset, {})
    for setup in _order(setups, SETUPS + PROTOCOL_ORDER):
      out.append((f"{method}: {setup}", setups[setup]))
  return out


def compare(rescored, stored):
  """(cells compared, differences) between re-scored and stored weight-editing results."""
  n, differences = 0, []
  for method, by_dataset in (stored or {}).items():
    if method == IKE:
      continue
    for dataset, by_setup in by_dataset.items():
      for setup, by_lang in by_setup.items():
        for lang, by_query in by_lang.items():
          for qt, cell in by_query.items():
            new = rescored.get(method, {}).get(dataset, {}).get(setup, {}).get(lang, {}).get(qt)
            for key in ("n",) + metrics.TEXT_METRICS:
              if key in cell:
                n += 1
                if new is None or new.get(key) != cell[key]:
                  differences.append((method, dataset, setup, lang, qt, key))
  return n, differences


def methods_section(report, rows, tokenizer, ike_rescored, results_json):
  """Adds the section when the samples hold weight-editing rows; returns whether it did."""
  if not any(method_of(r) != IKE for r in rows):
    return False
  by_method = rescore_methods(rows, tokenizer, ike_rescored)
  report.add("## Editing methods side by side\n")
  report.add(
      "In-context setups (`ike: ...`) and weight edits (`{method}: {protocol}`; one edit per "
      "record, `en.src` -> `en.alt`, read in every language). `reference` is the fork's "
      "protocol (the question alone, teacher-forced argmax over the gold span, locality against "
      "the pre-edit answer); `comparable` asks as the zero-shot in-context setup does, without "
      "the New Fact line. Cells: EM / F1_ref, mean over languages.\n"
  )
  stored = (results_json or {}).get("results_by_method")
  if isinstance(stored, dict):
    n, differences = compare(by_method, stored)
    if differences:
      shown = "; ".join("/".join(d) for d in differences[:10])
      report.add(
          f"Weight-editing cells re-scored and compared with results.json: {n} values, "
          f"**{len(differences)} differences** (first: {shown}).\n"
      )
    else:
      report.add(
          f"Weight-editing cells re-scored and compared with results.json: {n} values, "
          "all identical.\n"
      )
  metric = report.figure_metric
  for dataset in _order({d for m in by_method.values() for d in m}, DATASETS):
    labelled = series(by_method, dataset)
    header = ["method: setup"] + [f"{q[:4]} em / f1_ref" for q in QUERY_TYPES]
    table_rows = []
    for label, by_lang in labelled:
      row = [label]
      for qt in QUERY_TYPES:
        row.append(
            " / ".join(
                _fmt(_mean([c.get(qt, {}).get(m) for c in by_lang.values()]))
                for m in ("em", "f1_ref")
            )
        )
      table_rows.append(row)
    report.add(f"### {dataset}: methods (mean over languages)\n")
    report.add(_table(header, table_rows))
    langs = _order({lang for _, by_lang in labelled for lang in by_lang}, LANGUAGES)
    values = [
        [
            _mean([c.get(metric) for c in by_lang.get(lang, {}).values()])
            if lang in by_lang
            else None
            for lang in langs
        ]
        for _, by_lang in labelled
    ]
    report.add(f"### {dataset}: method x language ({metric}, mean over query types)\n")
    report.add(
        _table(
            ["method: setup"] + langs,
            [[label] + [_fmt(v) for v in vals] for (label, _), vals in zip(labelled, values)],
        )
    )
    report.figure(
        f"methods_{dataset}.png",
        f"method x language, {dataset}",
        figures.heatmap,
        f"{dataset}: {metric} by method and language (mean over query types)",
        [label for label, _ in labelled],
        langs,
        values,
        100.0,
        metric,
    )
  return True
