"""report.md + PNG figures from synthetic run directories; the CLI's errors."""

import json
import os
import re
import struct
import subprocess
import sys

import pytest

from bmike_jax import metrics
from bmike_jax.analysis.document import build_report
from bmike_jax.runner.evaluate import score_sample
from tests.report_synthetic import WhitespaceTokenizer, synthetic_rows, write_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runner_results(rows, tokenizer):
  """results.json's "results" as the runner makes them: its per-sample scorer, then
  metrics.aggregate_rows (an independent path from the report's re-scoring)."""
  scored = []
  for row in rows:
    new = dict(row)
    new.update(score_sample(tokenizer, row["prediction"], row["gold"], row["lang"]))
    scored.append(new)
  return metrics.aggregate_rows(scored)


def png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n", path
  return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp("run"))
  rows = synthetic_rows()
  write_run(run_dir, rows, results=runner_results(rows, WhitespaceTokenizer()))
  path = build_report(run_dir, tokenizer=WhitespaceTokenizer(), tokenizer_name="whitespace")
  with open(path, encoding="utf-8") as f:
    return run_dir, f.read()


def test_report_and_figures_exist(built):
  run_dir, text = built
  for heading in (
      "## 1. Re-scoring",
      "## 2. Scores",
      "## 3. Script groups",
      "### Likelihood comparison (mean over languages)",
      "## 4. Language confusion",
      "### Detector check on the gold answers",
      "## 5. Typological similarity to English",
  ):
    assert heading in text
  links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
  # 2 datasets x 2 setups heatmaps; per dataset: setups, Latin, confusion, typology
  assert len(links) == 4 + 2 * 4
  assert sorted(links) == sorted("figures/" + n for n in os.listdir(f"{run_dir}/figures"))
  for link in links:
    width, height = png_size(os.path.join(run_dir, link))
    assert width > 300 and height > 200, link


def test_rescoring_matches_runner_numbers(built):
  _, text = built
  assert re.search(r"Compared with results.json: \d+ cells, all identical", text)


def test_hand_known_cells(built):
  _, text = built
  # zsre zero_shot de: answers gold, English gold, empty, gold + " extra" (see synthetic_rows)
  # EM 1/4; F1_ref (1 + 0 + 0 + 1/2)/4; F1 and F1_norm (1 + 0 + 0 + 2/3)/4
  zsre_zero = text.split("#### zsre, zero_shot")[1]
  assert "| de | 4 | 25.00 / 37.50 / 41.67 / 41.67 |" in zsre_zero
  # ru: Москва (target), Germany (= English gold), "" (empty), "Чёрный лес extra" (target)
  confusion_part = text.split("### Confusion rates")[1].split("#### zsre, zero_shot")[1]
  assert re.search(r"\| ru \| 25\.00 / 0\.00 / 25\.00 \|", confusion_part)
  # py3langid has no Cebuano model: said so
  assert "py3langid has no model for: ceb" in text
  # five non-English languages in the correlations
  assert "n=5" in text.split("## 5.")[1]


def test_changed_results_json_is_reported(tmp_path):
  rows = synthetic_rows(datasets=("zsre",), setups=("zero_shot",), langs=("de", "ru", "en"))
  results = runner_results(rows, WhitespaceTokenizer())
  results["zsre"]["zero_shot"]["de"]["reliability"]["em"] += 1.0
  write_run(str(tmp_path), rows, results=results)
  text = open(build_report(str(tmp_path), tokenizer=WhitespaceTokenizer()), encoding="utf-8").read()
  assert "**1 differences**" in text
  assert "| zsre | zero_shot | de | reliability | em | 26.0 | 25.0 |" in text
  # two non-English languages: too few for a correlation
  assert "n/a (n<3)" in text


def test_partial_run_without_results_json(tmp_path):
  rows = synthetic_rows(datasets=("counterfact",), setups=("one_shot",), langs=("fr", "ja"))
  rows = [r for r in rows if not (r["lang"] == "ja" and r["query_type"] == "portability")]
  write_run(str(tmp_path), rows)
  text = open(build_report(str(tmp_path), tokenizer=WhitespaceTokenizer()), encoding="utf-8").read()
  assert "No results.json to compare with." in text
  ja_row = [line for line in text.splitlines() if line.startswith("| ja | 4 |")][0]
  assert ja_row.count("–") >= 1  # ja portability missing


def run_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )


def tiny_tokenizer_dir(path, words):
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {"[UNK]": 0}
  for word in words:
    vocab.setdefault(word, len(vocab))
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  return path


def test_cli_builds_report_with_tokenizer_of_results_json(tmp_path):
  rows = synthetic_rows(datasets=("zsre",), setups=("zero_shot",), langs=("de", "ru", "ja"))
  words = {w for r in rows for w in (r["prediction"] + " " + r["gold"]).split()}
  tok_dir = tiny_tokenizer_dir(str(tmp_path / "tok"), sorted(words))
  from bmike_jax.tokenizer import load_tokenizer

  results = runner_results(rows, load_tokenizer(tok_dir))
  run_dir = write_run(
      str(tmp_path / "run"), rows, results=results, model={"name": "tiny", "tokenizer": tok_dir}
  )
  done = run_cli(f"--results_dir={run_dir}")
  assert done.returncode == 0, done.stderr
  text = open(os.path.join(run_dir, "report.md"), encoding="utf-8").read()
  assert re.search(r"cells, all identical", text)
  assert f"tokenizer for re-scoring: `{tok_dir}`" in text


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("missing_dir", r"nowhere: results directory not found"),
        ("no_samples", r"samples\.jsonl: file not found"),
        ("bad_line", r"samples\.jsonl, line 2: malformed JSON"),
        ("bad_tokenizer", r"results\.json: cannot load the run's tokenizer '/nonexistent/tok'"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, setup, expected):
  run_dir = str(tmp_path / "nowhere")
  rows = synthetic_rows(datasets=("zsre",), setups=("zero_shot",), langs=("de",))
  if setup == "no_samples":
    os.makedirs(run_dir)
  elif setup == "bad_line":
    write_run(run_dir, None, raw_lines=json.dumps(rows[0]) + "\n{oops\n")
  elif setup == "bad_tokenizer":
    write_run(run_dir, rows, results={}, model={"tokenizer": "/nonexistent/tok"})
  done = run_cli(f"--results_dir={run_dir}")
  assert done.returncode == 1
  assert re.search(expected, done.stderr), done.stderr
  assert "Traceback" not in done.stderr
