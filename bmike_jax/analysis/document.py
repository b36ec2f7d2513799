"""Builds DIR/report.md and DIR/figures/*.png from a run directory."""

import os

from bmike_jax.analysis import confusion, figures, methods, rescore, scripts, typology
from bmike_jax.analysis.rescore import ReportError
from bmike_jax.data import DATASETS, QUERY_TYPES
from bmike_jax.languages import LANGUAGES
from bmike_jax.prompts import SETUPS

SHORT = {"reliability": "rel", "generality": "gen", "locality": "loc", "portability": "port"}
ANSWER_METRICS = ("em", "f1_ref", "f1", "f1_norm")
LIKELIHOOD_COLUMNS = ("lik_success_loc_ans", "lik_success_old")
TYPOLOGY_METRICS = ("em", "f1_ref", "f1")
DEFAULT_MIN_CONFIDENCE = 0.7


def ordered(names, known):
  """`names` in the order of `known`, unknown ones after, sorted."""
  names = set(names)
  return [n for n in known if n in names] + sorted(names - set(known))


def fmt(value, digits=2):
  return "–" if value is None else f"{value:.{digits}f}"


def fmt_p(value):
  return "–" if value is None else f"{value:.2g}"


def table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def mean(values):
  values = [v for v in values if v is not None]
  return round(sum(values) / len(values), 2) if values else None


class Report:
  """Collects markdown sections and figure files of one report."""

  def __init__(self, results_dir, figure_metric, title=None):
    self.results_dir = results_dir
    # what the header names: the run folder's name, or (a gs:// run read into a temporary
    # folder) the run's own address
    self.title = title or os.path.basename(os.path.abspath(results_dir))
    self.figure_dir = os.path.join(results_dir, "figures")
    self.figure_metric = figure_metric
    self.parts = []
    self.figures = []

  def add(self, text):
    self.parts.append(text)

  def figure(self, name, caption, draw, *args):
    """draw(path, *args) writes the PNG; the markdown gets a relative link."""
    path = os.path.join(self.figure_dir, name)
    try:
      os.makedirs(self.figure_dir, exist_ok=True)
      draw(path, *args)
    except OSError as e:
      raise ReportError(f"{path}: cannot write ({e.strerror or e})") from None
    self.figures.append(path)
    self.add(f"![{caption}](figures/{name})\n")

  def write(self):
    path = os.path.join(self.results_dir, "report.md")
    try:
      with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(self.parts))
    except OSError as e:
      raise ReportError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


# ---- sections ------------------------------------------------------------------------------


def header_section(report, results_json, rows, notes, tokenizer_name):
  langs = sorted({r["lang"] for r in rows})
  report.add(f"# BMIKE-53 report: `{report.title}`\n")
  lines = [
      f"- samples: {len(rows)} (from samples.jsonl)",
      f"- datasets: {', '.join(ordered({r['dataset'] for r in rows}, DATASETS))}",
      f"- setups: {', '.join(ordered({r['setup'] for r in rows}, SETUPS))}",
      f"- languages ({len(langs)}): {' '.join(langs)}",
      f"- tokenizer for re-scoring: `{tokenizer_name}`",
  ]
  if results_json:
    model = results_json.get("model")
    if isinstance(model, dict):
      shown = {k: v for k, v in model.items() if isinstance(v, (str, int, float, bool))}
      lines.append("- model: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    units = results_json.get("units")
    if isinstance(units, dict) and "planned" in units:
      lines.append(
          f"- units finished: {units.get('finished')} of {units.get('planned')}"
          + (
              ""
              if units.get("finished") == units.get("planned")
              else " (partial run: tables show what is there)"
          )
      )
  else:
    lines.append("- results.json: absent (a run still starting?)")
  report.add("\n".join(lines) + "\n")
  if notes:
    report.add("Input notes:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def rescore_section(report, rescored, stored, has_results_json):
  report.add("## 1. Re-scoring\n")
  report.add(
      "Every metric was recomputed from samples.jsonl: EM, F1_ref (the reference's "
      "precision x recall), F1 (harmonic mean) and F1_norm (MLQA-style) from prediction "
      "and gold; the likelihood comparisons from the inv_ppl_* fields "
      "(lik_*_loc_ans: the reference's comparison with loc_ans; lik_*_old: the "
      "corrected one with old). All tables below use the re-scored numbers.\n"
  )
  if not has_results_json:
    report.add("No results.json to compare with.\n")
    return
  n_cells, differences = rescore.compare(rescored, stored)
  if not differences and n_cells == 0:
    report.add("results.json holds no scores yet: nothing to compare with.\n")
    return
  if not differences:
    report.add(f"Compared with results.json: {n_cells} cells, all identical.\n")
    return
  report.add(
      f"Compared with results.json: {n_cells} cells, **{len(differences)} "
      "differences** (first 50):\n"
  )
  rows = [d[:5] + (fmt_any(d[5]), fmt_any(d[6])) for d in differences[:50]]
  report.add(
      table(("dataset", "setup", "lang", "query type", "key", "results.json", "re-scored"), rows)
  )


def fmt_any(value):
  return "–" if value is None else str(value)


def score_sections(report, results):
  report.add("## 2. Scores\n")
  report.add("### Setups compared (mean over languages, English included)\n")
  header = ["dataset", "setup"] + [
      f"{SHORT.get(q, q)} {m}" for q in QUERY_TYPES for m in ("em", "f1_ref")
  ]
  rows = []
  for dataset in ordered(results, DATASETS):
    for setup in ordered(results[dataset], SETUPS):
      by_lang = results[dataset][setup]
      row = [dataset, setup]
      for qt in QUERY_TYPES:
        for metric in ("em", "f1_ref"):
          row.append(fmt(mean([c.get(qt, {}).get(metric) for c in by_lang.values()])))
      rows.append(row)
  report.add(table(header, rows))
  likelihood_table(report, results)
  for dataset in ordered(results, DATASETS):
    setups = ordered(results[dataset], SETUPS)
    panels = []
    for metric in dict.fromkeys(("em", report.figure_metric)):
      series = {
          s: [
              mean([c.get(q, {}).get(metric) for c in results[dataset][s].values()])
              for q in QUERY_TYPES
          ]
          for s in setups
      }
      panels.append((f"{dataset}: {metric}", list(QUERY_TYPES), series))
    report.figure(
        f"setups_{dataset}.png",
        f"setup comparison, {dataset}",
        figures.bar_panels,
        f"Setups compared, {dataset} (mean over languages)",
        panels,
        "score",
        2,
    )
  report.add("### Per language\n")
  report.add(
      "Cells: EM / F1_ref / F1 / F1_norm. Likelihood columns (CounterFact, "
      "WikiFactDiff): success rate against loc_ans (reference) / against old "
      "(corrected).\n"
  )
  for dataset in ordered(results, DATASETS):
    for setup in ordered(results[dataset], SETUPS):
      by_lang = results[dataset][setup]
      langs = ordered(by_lang, LANGUAGES)
      query_types = ordered({q for c in by_lang.values() for q in c}, QUERY_TYPES)
      lik_qts = [
          q
          for q in query_types
          if any("lik_success_loc_ans" in c.get(q, {}) for c in by_lang.values())
      ]
      header = (
          ["lang", "n"]
          + [SHORT.get(q, q) for q in query_types]
          + [f"{SHORT.get(q, q)} lik" for q in lik_qts]
      )
      rows = []
      for lang in langs:
        cells = by_lang[lang]
        n = max(c.get("n", 0) for c in cells.values())
        row = [lang, n]
        row += [
            " / ".join(fmt(cells.get(q, {}).get(m)) for m in ANSWER_METRICS) for q in query_types
        ]
        row += [
            " / ".join(fmt(cells.get(q, {}).get(m)) for m in LIKELIHOOD_COLUMNS) for q in lik_qts
        ]
        rows.append(row)
      report.add(f"#### {dataset}, {setup}\n")
      report.add(table(header, rows))
      values = [
          [by_lang[lang].get(q, {}).get(report.figure_metric) for lang in langs]
          for q in query_types
      ]
      report.figure(
          f"heatmap_{dataset}_{setup}.png",
          f"{dataset} {setup} heatmap",
          figures.heatmap,
          f"{dataset}, {setup}: {report.figure_metric}",
          query_types,
          langs,
          values,
          100.0,
          report.figure_metric,
      )


LIKELIHOOD_METRICS = (
    "lik_success_loc_ans",
    "lik_magnitude_loc_ans",
    "lik_success_old",
    "lik_magnitude_old",
)


def likelihood_table(report, results):
  """Mean over languages of the likelihood comparisons, where the run has them."""
  rows = []
  for dataset in ordered(results, DATASETS):
    for setup in ordered(results[dataset], SETUPS):
      by_lang = results[dataset][setup]
      for qt in QUERY_TYPES:
        cells = [c[qt] for c in by_lang.values() if "lik_success_loc_ans" in c.get(qt, {})]
        if cells:
          rows.append(
              [dataset, setup, qt]
              + [fmt(mean([c.get(m) for c in cells])) for m in LIKELIHOOD_METRICS]
          )
  if rows:
    report.add("### Likelihood comparison (mean over languages)\n")
    report.add(
        "Success: % of records with 1/PPL(alt) > 1/PPL(other); magnitude: mean of "
        "1/PPL(alt) − 1/PPL(other), × 100. *loc_ans* is the reference's comparison, "
        "*old* the corrected one.\n"
    )
    report.add(
        table(
            [
                "dataset",
                "setup",
                "query type",
                "success loc_ans",
                "magnitude loc_ans",
                "success old",
                "magnitude old",
            ],
            rows,
        )
    )


def script_section(report, results):
  report.add("## 3. Script groups\n")
  report.add(
      "Macro averages over the languages of each group (each language counts once; "
      "English, the language of the edits, left out). Cells: EM / F1_ref; "
      "(k) = number of languages.\n"
  )
  latin = {
      m: scripts.group_means(results, m, scripts.latin_group, LANGUAGES)
      for m in ("em", "f1_ref", report.figure_metric)
  }
  per_script = {
      m: scripts.group_means(results, m, scripts.script_group, LANGUAGES) for m in ("em", "f1_ref")
  }
  keys = [
      (d, s, q)
      for d in ordered(results, DATASETS)
      for s in ordered(results[d], SETUPS)
      for q in QUERY_TYPES
      if (d, s, q) in latin["em"]
  ]

  def cell(tables, key, group):
    entry = [tables[m].get(key, {}).get(group) for m in ("em", "f1_ref")]
    if entry[0] is None:
      return "–"
    return f"{fmt(entry[0][0])} / {fmt(entry[1][0])} ({entry[0][1]})"

  report.add("### Latin vs non-Latin\n")
  rows = []
  for key in keys:
    lat, non = latin["em"][key].get("Latin"), latin["em"][key].get("non-Latin")
    gap = fmt(lat[0] - non[0]) if lat and non else "–"
    rows.append(list(key) + [cell(latin, key, "Latin"), cell(latin, key, "non-Latin"), gap])
  report.add(
      table(
          ("dataset", "setup", "query type", "Latin", "non-Latin", "EM gap (Latin − non-Latin)"),
          rows,
      )
  )
  metric = report.figure_metric
  for dataset in ordered(results, DATASETS):
    panels = []
    for setup in ordered(results[dataset], SETUPS):
      series = {
          g: [
              (latin[metric].get((dataset, setup, q), {}).get(g) or (None,))[0] for q in QUERY_TYPES
          ]
          for g in ("Latin", "non-Latin")
      }
      panels.append((setup, list(QUERY_TYPES), series))
    report.figure(
        f"latin_{dataset}.png",
        f"Latin vs non-Latin, {dataset}",
        figures.bar_panels,
        f"Latin vs non-Latin script, {dataset}: {metric}",
        panels,
        metric,
        2,
    )
  report.add("### Per script\n")
  all_scripts = sorted({g for groups in per_script["em"].values() for g in groups})
  present = {
      lang for by_setup in results.values() for by_lang in by_setup.values() for lang in by_lang
  }
  members = {
      s: sorted(
          c
          for c, lang in LANGUAGES.items()
          if lang.script == s and c in present and c != scripts.SOURCE_LANG
      )
      for s in all_scripts
  }
  report.add("Scripts: " + "; ".join(f"{s}: {' '.join(members[s])}" for s in all_scripts) + "\n")
  rows = [list(key) + [cell(per_script, key, s) for s in all_scripts] for key in keys]
  report.add(table(["dataset", "setup", "query type"] + all_scripts, rows))


def confusion_section(report, rows, min_confidence):
  report.add("## 4. Language confusion\n")
  detector = confusion.Detector(LANGUAGES, min_confidence=min_confidence)
  no_model = sorted(c for c in LANGUAGES if c != "en" and not detector.has_model(c))
  report.add(
      "Does the model answer in English instead of the target language? Each answer is "
      "decided in steps: empty answer → *empty*; target and English golds equal (after "
      "trimming and case folding) → *undecidable*; answer equal to the English gold → "
      "*english*; equal to the target gold → *target*; no letters (numbers) → "
      "*undecidable*; for a non-Latin-script target: letters of the target's script → "
      "*target*, only Latin letters → *english*, another script → *undecidable*; for a "
      "Latin-script target: py3langid restricted to {target, en}, with two-way confidence "
      f"≥ {min_confidence} (else *undecidable*).\n"
  )
  if no_model:
    report.add(
        f"py3langid has no model for: {', '.join(no_model)}. For these (Latin-script) "
        "languages only the gold-equality steps decide; other answers are "
        "*undecidable*.\n"
    )
  validation = confusion.validate(rows, detector)
  report.add("### Detector check on the gold answers\n")
  report.add(
      "Each distinct pair of target gold / English gold (differing strings) of the "
      "samples is classified without the gold-equality steps: the target gold should "
      "come out *target*, the English gold *english*. Accuracy is over the strings "
      "decided; coverage = decided / all.\n"
  )
  vrows = []
  for lang, v in validation.items():
    vrows.append(
        (
            lang,
            LANGUAGES[lang].script,
            "yes" if detector.has_model(lang) else "no",
            v["pairs"],
            fmt(v["coverage"]),
            fmt(v["accuracy"]),
            f"{v['target_ok']}/{v['pairs']}",
            f"{v['english_ok']}/{v['pairs']}",
        )
    )
  report.add(
      table(
          (
              "lang",
              "script",
              "py3langid model",
              "gold pairs",
              "coverage %",
              "accuracy %",
              "target golds right",
              "English golds right",
          ),
          vrows,
      )
  )
  counts, reasons = confusion.confusion_counts(rows, detector)
  report.add(
      "Decisions by step (all answers): "
      + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
      + "\n"
  )
  report.add("### Confusion rates\n")
  report.add(
      "Cells: English % / undecidable % / empty % of all answers (English share of "
      "decided answers in the totals row).\n"
  )
  shares = {key: confusion.rates(cell) for key, cell in counts.items()}
  datasets = ordered({k[0] for k in counts}, DATASETS)
  for dataset in datasets:
    setups = ordered({k[1] for k in counts if k[0] == dataset}, SETUPS)
    langs = ordered({k[2] for k in counts if k[0] == dataset}, LANGUAGES)
    for setup in setups:
      query_types = ordered({k[3] for k in counts if k[:2] == (dataset, setup)}, QUERY_TYPES)
      trows = []
      for lang in langs:
        row = [lang]
        for q in query_types:
          r = shares.get((dataset, setup, lang, q))
          row.append(
              "–"
              if r is None
              else f"{fmt(r['english'])} / {fmt(r['undecidable'])} / {fmt(r['empty'])}"
          )
        trows.append(row)
      total = ["all"]
      for q in query_types:
        cells = [counts[k] for k in counts if k[:2] == (dataset, setup) and k[3] == q]
        summed = {c: sum(x[c] for x in cells) for c in confusion.CATEGORIES}
        r = confusion.rates(summed)
        total.append(
            f"{fmt(r['english'])} / {fmt(r['undecidable'])} / "
            f"{fmt(r['empty'])} (decided: {fmt(r['english_decided'])})"
        )
      trows.append(total)
      report.add(f"#### {dataset}, {setup}\n")
      report.add(table(["lang"] + [SHORT.get(q, q) for q in query_types], trows))
    panels = []
    for q in QUERY_TYPES:
      series = {
          s: [(shares.get((dataset, s, lang, q)) or {}).get("english") for lang in langs]
          for s in setups
      }
      if any(v is not None for vals in series.values() for v in vals):
        panels.append((q, langs, series))
    if panels:
      report.figure(
          f"confusion_{dataset}.png",
          f"language confusion, {dataset}",
          figures.bar_panels,
          f"Answers in English instead of the target " f"language, {dataset} (% of answers)",
          panels,
          "English %",
          1,
      )


def typology_section(report, results):
  report.add("## 5. Typological similarity to English\n")
  similarities, excluded = typology.similarity_to_english(LANGUAGES)
  report.add(
      f"Similarity: {typology.METHOD}. Values are cosine similarities (1 = same "
      "vector as English). Correlations are across languages (English left out), "
      f"Pearson r and Spearman ρ with two-sided p-values (scipy); fewer than "
      f"{typology.MIN_LANGUAGES} languages or a constant side give n/a.\n"
  )
  if excluded:
    report.add(
        "Excluded (not in lang2vec): "
        + "; ".join(f"{lang} ({reason})" for lang, reason in sorted(excluded.items()))
        + "\n"
    )
  else:
    report.add("Excluded: none (lang2vec knows all languages).\n")
  features = list(typology.FEATURES)
  srows = [
      [lang, LANGUAGES[lang].iso639_3] + [fmt(similarities[lang][f], 3) for f in features]
      for lang in ordered(similarities, LANGUAGES)
  ]
  report.add("<details><summary>Similarities per language</summary>\n")
  report.add(table(["lang", "ISO 639-3"] + features, srows))
  report.add("</details>\n")
  corr = typology.correlations(results, similarities, TYPOLOGY_METRICS)
  report.add("Cells: r (p) / ρ (p), n languages.\n")
  for dataset in ordered(results, DATASETS):
    for setup in ordered(results[dataset], SETUPS):
      keys = sorted(
          {k[2:4] for k in corr if k[:2] == (dataset, setup)},
          key=lambda qm: (
              QUERY_TYPES.index(qm[0]) if qm[0] in QUERY_TYPES else 99,
              TYPOLOGY_METRICS.index(qm[1]),
          ),
      )
      rows = []
      for q, m in keys:
        row = [q, m]
        for f in features:
          c = corr[(dataset, setup, q, m, f)]
          if c["pearson_r"] is None:
            row.append(
                f"n/a (n<{typology.MIN_LANGUAGES})"
                if c["n"] < typology.MIN_LANGUAGES
                else "n/a (constant)"
            )
          else:
            row.append(
                f"{c['pearson_r']:.2f} ({fmt_p(c['pearson_p'])}) / "
                f"{c['spearman_rho']:.2f} ({fmt_p(c['spearman_p'])}), "
                f"n={c['n']}"
            )
        rows.append(row)
      report.add(f"#### {dataset}, {setup}\n")
      report.add(table(["query type", "metric"] + features, rows))
  metric = report.figure_metric
  for dataset in ordered(results, DATASETS):
    panels = []
    for setup in ordered(results[dataset], SETUPS):
      by_lang = results[dataset][setup]
      for f in features:
        series = {}
        for q in QUERY_TYPES:
          points = [
              (similarities[l][f], by_lang[l][q][metric], l)
              for l in ordered(by_lang, LANGUAGES)
              if l in similarities and by_lang[l].get(q, {}).get(metric) is not None
          ]
          if points:
            series[q] = tuple(map(list, zip(*points)))
        panels.append((f"{setup}: {f}", f"{f} similarity to English", series))
    report.figure(
        f"typology_{dataset}.png",
        f"score vs similarity, {dataset}",
        figures.scatter_panels,
        f"{metric} vs typological similarity to " f"English, {dataset}",
        panels,
        len(features),
        metric,
    )


# ---- entry ---------------------------------------------------------------------------------


def load_run_tokenizer(results_json, results_path):
  """The tokenizer the run saved in its folder (tokenizer/), else the one results.json names."""
  from bmike_jax.runner.store import TOKENIZER_DIR
  from bmike_jax.tokenizer import load_tokenizer  # heavy; only when not given one

  saved = os.path.join(os.path.dirname(results_path), TOKENIZER_DIR)
  source = saved if os.path.isdir(saved) else rescore.tokenizer_source(results_json)
  if source is None:
    where = results_path if results_json is not None else f"{results_path} (absent)"
    raise ReportError(f"{where}: no model.tokenizer entry to re-score with; " "pass --tokenizer")
  try:
    return load_tokenizer(source), source
  except Exception as e:  # any loading failure becomes one clear message
    raise ReportError(
        f"{results_path}: cannot load the run's tokenizer {source!r} "
        f"({type(e).__name__}: {e}); pass --tokenizer"
    ) from None


def build_report(
    results_dir,
    tokenizer=None,
    tokenizer_name=None,
    figure_metric="f1_ref",
    min_confidence=DEFAULT_MIN_CONFIDENCE,
    title=None,
):
  """Writes results_dir/report.md and results_dir/figures/*.png; returns the report path. `title`:
  what the header calls the run (default: the folder's name)."""
  if not os.path.isdir(results_dir):
    raise ReportError(f"{results_dir}: results directory not found")
  results_path = os.path.join(results_dir, "results.json")
  results_json = rescore.load_results(results_path)
  rows, notes = rescore.load_samples(os.path.join(results_dir, "samples.jsonl"))
  if not rows:
    raise ReportError(f"{os.path.join(results_dir, 'samples.jsonl')}: no samples")
  if tokenizer is None:
    tokenizer, tokenizer_name = load_run_tokenizer(results_json, results_path)
  all_rows, rows = rows, [r for r in rows if methods.method_of(r) == methods.IKE]
  rescored = rescore.rescore(rows, tokenizer) if rows else {}
  report = Report(results_dir, figure_metric, title=title)
  header_section(
      report, results_json, rows or all_rows, notes, tokenizer_name or type(tokenizer).__name__
  )
  methods.methods_section(report, all_rows, tokenizer, rescored, results_json)
  if not rows:  # weight edits only: the in-context sections have nothing to show
    return report.write()
  rescore_section(report, rescored, rescore.stored_scores(results_json), results_json is not None)
  score_sections(report, rescored)
  script_section(report, rescored)
  confusion_section(report, rows, min_confidence)
  typology_section(report, rescored)
  return report.write()
