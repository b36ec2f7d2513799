"""Analysis report of a run: python -m bmike_jax.report --results_dir=DIR.

Writes DIR/report.md with tables and DIR/figures/*.png: re-scored metrics (checked against
results.json), setup comparison, script groups, language confusion and typological
similarity to English.
"""

import sys

from absl import app, flags, logging

from bmike_jax.analysis.document import DEFAULT_MIN_CONFIDENCE, build_report
from bmike_jax.analysis.rescore import ReportError

RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Run directory with results.json and "
                            "samples.jsonl; report.md and figures/ are written there.")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer source for re-scoring (a "
                                "tokenizer.json / tokenizer.model folder or a .gguf file); "
                                "default: results.json's model.tokenizer.")
FIGURE_METRIC = flags.DEFINE_enum("figure_metric", "f1_ref", ["em", "f1_ref", "f1", "f1_norm"],
                                  "Metric drawn in the heatmaps, group bars and scatter plots.")
MIN_CONFIDENCE = flags.DEFINE_float("langid_min_confidence", DEFAULT_MIN_CONFIDENCE,
                                    "Two-way py3langid confidence below which a Latin-script "
                                    "answer counts as undecidable.")


def run(results_dir, tokenizer_source=None, figure_metric="f1_ref",
        min_confidence=DEFAULT_MIN_CONFIDENCE):
    tokenizer = None
    if tokenizer_source:
        from bmike_jax.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(tokenizer_source)
        except Exception as e:  # one clear message instead of a traceback
            raise ReportError(f"--tokenizer {tokenizer_source!r}: cannot load "
                              f"({type(e).__name__}: {e})") from None
    return build_report(results_dir, tokenizer=tokenizer, tokenizer_name=tokenizer_source,
                        figure_metric=figure_metric, min_confidence=min_confidence)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not RESULTS_DIR.value:
        logging.error("--results_dir is required")
        sys.exit(1)
    try:
        path = run(RESULTS_DIR.value, TOKENIZER.value, FIGURE_METRIC.value, MIN_CONFIDENCE.value)
    except ReportError as e:
        logging.error("report: %s", e)
        sys.exit(1)
    logging.info("wrote %s", path)
    print(path)


if __name__ == "__main__":
    app.run(main)
