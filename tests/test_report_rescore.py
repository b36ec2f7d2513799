"""Re-scoring: reading samples.jsonl, recomputing metrics, aggregating, comparing."""

import json

import pytest

from bmike_jax.analysis import rescore
from bmike_jax.analysis.rescore import ReportError
from tests.report_synthetic import WhitespaceTokenizer, write_run


def row(
    pred,
    gold,
    case_id,
    lang="de",
    query_type="reliability",
    dataset="counterfact",
    setup="zero_shot",
    **extra,
):
  out = {
      "dataset": dataset,
      "lang": lang,
      "setup": setup,
      "query_type": query_type,
      "case_id": case_id,
      "prompt": "p",
      "prediction": pred,
      "gold": gold,
      "gold_en": "x",
      # stored scores deliberately wrong: re-scoring must not read them
      "em": 0.5,
      "f1_ref": 0.5,
      "f1": 0.5,
      "f1_norm": 0.5,
  }
  out.update(extra)
  return out


def hand_rows():
  return [
      # pred == gold: every score 1
      row("Berlin", "Berlin", 0, inv_ppl_alt=0.5, inv_ppl_loc_ans=0.2, inv_ppl_old=0.1),
      # 3 pred tokens, 2 gold tokens, overlap 2: f1_ref = 2*2/(3*2) = 2/3, f1 = 0.8
      row("New York City", "New York", 1, inv_ppl_alt=0.1, inv_ppl_loc_ans=0.3, inv_ppl_old=None),
      # empty prediction: 0 everywhere
      row("", "Paris", 2, inv_ppl_alt=0.4, inv_ppl_loc_ans=0.4, inv_ppl_old=0.6),
      row("Rom", "Rom", 3, inv_ppl_alt=0.3, inv_ppl_loc_ans=0.2, inv_ppl_old=0.3),
  ]


def test_rescore_hand_computed(tmp_path):
  path = write_run(tmp_path / "run", hand_rows()) / "samples.jsonl"
  rows, notes = rescore.load_samples(str(path))
  assert notes == []
  cell = rescore.rescore(rows, WhitespaceTokenizer())["counterfact"]["zero_shot"]["de"][
      "reliability"
  ]
  assert cell["n"] == 4
  assert cell["em"] == 50.0  # 2 of 4
  assert cell["f1_ref"] == 66.67  # (1 + 2/3 + 0 + 1) / 4
  assert cell["f1"] == 70.0  # (1 + 0.8 + 0 + 1) / 4
  assert cell["f1_norm"] == 70.0  # same words after normalization
  # loc_ans: 0.5>0.2 yes, 0.1>0.3 no, 0.4>0.4 no, 0.3>0.2 yes
  assert cell["lik_success_loc_ans"] == 50.0
  assert cell["lik_magnitude_loc_ans"] == pytest.approx(
      100 * (0.3 - 0.2 + 0.0 + 0.1) / 4, rel=1e-12
  )  # unrounded
  # old: rows 0, 2, 3 (row 1 has none): 0.5>0.1 yes, 0.4>0.6 no, 0.3>0.3 no
  assert cell["n_lik_old"] == 3
  assert cell["lik_success_old"] == pytest.approx(100 / 3, rel=1e-12)
  assert cell["lik_magnitude_old"] == pytest.approx(100 * (0.4 - 0.2 + 0.0) / 3, rel=1e-12)


def test_rescore_groups_and_zsre_has_no_likelihood(tmp_path):
  rows = [
      row("a", "a", 0, dataset="zsre", query_type="locality"),
      row("b", "a", 1, dataset="zsre", query_type="locality"),
      row("a", "a", 0, dataset="zsre", query_type="portability", lang="ru"),
      row("a b", "a", 0, dataset="zsre", query_type="portability", setup="one_shot"),
  ]
  path = write_run(tmp_path / "run", rows) / "samples.jsonl"
  loaded, _ = rescore.load_samples(str(path))
  out = rescore.rescore(loaded, WhitespaceTokenizer())
  assert out["zsre"]["zero_shot"]["de"]["locality"]["em"] == 50.0
  assert out["zsre"]["zero_shot"]["ru"]["portability"]["em"] == 100.0
  one = out["zsre"]["one_shot"]["de"]["portability"]
  assert one["em"] == 0.0 and one["f1_ref"] == 50.0  # c=1: 1/(2*1)
  assert not any(k.startswith("lik_") for k in one)


def test_compare_finds_changed_and_missing_cells():
  rescored = {"zsre": {"zero_shot": {"de": {"reliability": {"n": 2, "em": 50.0}}}}}
  same = json.loads(json.dumps(rescored))
  assert rescore.compare(rescored, same) == (1, [])
  changed = {
      "zsre": {
          "zero_shot": {
              "de": {"reliability": {"n": 2, "em": 49.0}},
              "fr": {"locality": {"n": 1, "em": 0.0}},
          }
      }
  }
  n, diffs = rescore.compare(rescored, changed)
  assert n == 1
  assert ("zsre", "zero_shot", "de", "reliability", "em", 49.0, 50.0) in diffs
  assert ("zsre", "zero_shot", "fr", "locality", "*", "present", None) in diffs


def test_malformed_line_names_file_and_line(tmp_path):
  good = json.dumps(row("a", "a", 0))
  write_run(tmp_path / "run", None, raw_lines=good + "\n{not json\n" + good + "\n")
  with pytest.raises(ReportError, match=r"samples\.jsonl, line 2: malformed JSON"):
    rescore.load_samples(str(tmp_path / "run" / "samples.jsonl"))


def test_missing_field_and_bad_type(tmp_path):
  bad = row("a", "a", 0)
  del bad["gold_en"]
  write_run(tmp_path / "a", [row("a", "a", 1), bad])
  with pytest.raises(ReportError, match=r"line 2: missing field\(s\) gold_en"):
    rescore.load_samples(str(tmp_path / "a" / "samples.jsonl"))
  write_run(tmp_path / "b", [row(None, "a", 0)])
  with pytest.raises(ReportError, match=r"line 1: field 'prediction' must be a string"):
    rescore.load_samples(str(tmp_path / "b" / "samples.jsonl"))
  write_run(tmp_path / "c", [row("a", "a", 0, lang="xx")])
  with pytest.raises(ReportError, match=r"line 1: unknown language code 'xx'"):
    rescore.load_samples(str(tmp_path / "c" / "samples.jsonl"))


def test_missing_file():
  with pytest.raises(ReportError, match=r"/nonexistent/samples\.jsonl: file not found"):
    rescore.load_samples("/nonexistent/samples.jsonl")


def test_cut_last_line_is_skipped_repeats_keep_last_and_alias(tmp_path):
  lines = [
      json.dumps(row("a", "a", 0)),
      json.dumps(row("b", "a", 0)),
      json.dumps(row("a", "a", 1, lang="zh-cn")),
  ]
  write_run(tmp_path / "run", None, raw_lines="\n".join(lines) + '\n{"dataset": "zs')
  rows, notes = rescore.load_samples(str(tmp_path / "run" / "samples.jsonl"))
  assert len(rows) == 2
  assert {r["prediction"] for r in rows if r["lang"] == "de"} == {"b"}
  assert {r["lang"] for r in rows} == {"de", "zh"}
  assert any("line 4: incomplete last line skipped" in n for n in notes)
  assert any("1 repeated row" in n and "line 2 repeats line 1" in n for n in notes)


def test_results_json_helpers(tmp_path):
  assert rescore.load_results(str(tmp_path / "none.json")) is None
  (tmp_path / "bad.json").write_text('{"model": \n oops}')
  with pytest.raises(ReportError, match=r"bad\.json, line 2: malformed JSON"):
    rescore.load_results(str(tmp_path / "bad.json"))
  doc = {"model": {"tokenizer": "/t"}, "results": {"zsre": {}}}
  assert rescore.tokenizer_source(doc) == "/t"
  assert rescore.stored_scores(doc) == {"zsre": {}}
  assert rescore.tokenizer_source({"model": {}}) is None
