"""Analysis report of a run: python -m bmike_jax.report --results_dir=DIR.

Writes DIR/report.md with tables and DIR/figures/*.png: re-scored metrics (checked against
results.json), setup comparison, script groups, language confusion and typological
similarity to English.
"""

import os
import sys
import tempfile

from absl import app, flags, logging

from bmike_jax import paths
from bmike_jax.analysis.document import DEFAULT_MIN_CONFIDENCE, build_report
from bmike_jax.analysis.rescore import ReportError

RESULTS_DIR = flags.DEFINE_string(
    "results_dir",
    None,
    "Run directory (local or gs://) with "
    "results.json and samples.jsonl; report.md and figures/ are "
    "written there.",
)
TOKENIZER = flags.DEFINE_string(
    "tokenizer",
    None,
    "Tokenizer source for re-scoring (a "
    "tokenizer.json / tokenizer.model folder or a .gguf file); "
    "default: results.json's model.tokenizer.",
)
FIGURE_METRIC = flags.DEFINE_enum(
    "figure_metric",
    "f1_ref",
    ["em", "f1_ref", "f1", "f1_norm"],
    "Metric drawn in the heatmaps, group bars and scatter plots.",
)
MIN_CONFIDENCE = flags.DEFINE_float(
    "langid_min_confidence",
    DEFAULT_MIN_CONFIDENCE,
    "Two-way py3langid confidence below which a Latin-script " "answer counts as undecidable.",
)


def run(
    results_dir,
    tokenizer_source=None,
    figure_metric="f1_ref",
    min_confidence=DEFAULT_MIN_CONFIDENCE,
):
  paths.check(results_dir, flag="results_dir")
  tokenizer = None
  if tokenizer_source:
    paths.check(tokenizer_source, flag="tokenizer")
    from bmike_jax.tokenizer import load_tokenizer

    try:
      tokenizer = load_tokenizer(paths.local_copy(tokenizer_source))
    except Exception as e:  # one clear message instead of a traceback
      raise ReportError(
          f"--tokenizer {tokenizer_source!r}: cannot load " f"({type(e).__name__}: {e})"
      ) from None
  if not paths.is_remote(results_dir):
    return build_report(
        results_dir,
        tokenizer=tokenizer,
        tokenizer_name=tokenizer_source,
        figure_metric=figure_metric,
        min_confidence=min_confidence,
    )
  return _remote_report(
      results_dir,
      tokenizer=tokenizer,
      tokenizer_name=tokenizer_source,
      figure_metric=figure_metric,
      min_confidence=min_confidence,
  )


def _remote_report(results_dir, **kwargs):
  """A gs:// run folder: its files are read into a local folder, the report is built there and
  report.md and figures/ are uploaded next to results.json."""
  from bmike_jax.runner.store import TOKENIZER_DIR

  paths.check_access(results_dir, flag="results_dir")
  with tempfile.TemporaryDirectory() as local:
    for name in ("results.json", "samples.jsonl"):
      if paths.isfile(paths.join(results_dir, name)):
        paths.copy_file(paths.join(results_dir, name), os.path.join(local, name))
    saved = paths.join(results_dir, TOKENIZER_DIR)
    if paths.isdir(saved):
      for name in paths.listdir(saved):
        paths.copy_file(paths.join(saved, name), os.path.join(local, TOKENIZER_DIR, name))
    report = build_report(local, title=results_dir, **kwargs)
    for folder, _, files in os.walk(local):
      for name in files:
        relative = os.path.relpath(os.path.join(folder, name), local)
        if relative == "report.md" or relative.startswith("figures" + os.sep):
          paths.copy_file(
              os.path.join(folder, name), paths.join(results_dir, *relative.split(os.sep))
          )
    return paths.join(results_dir, os.path.basename(report))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not RESULTS_DIR.value:
    logging.error("--results_dir is required")
    sys.exit(1)
  try:
    path = run(RESULTS_DIR.value, TOKENIZER.value, FIGURE_METRIC.value, MIN_CONFIDENCE.value)
  except (ReportError, paths.PathError) as e:
    logging.error("report: %s", e)
    sys.exit(1)
  logging.info("wrote %s", path)
  print(path)


def entry():
  """The console script (setup.py entry_points)."""
  app.run(main)


if __name__ == "__main__":
  app.run(main)
