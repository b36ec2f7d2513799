"""The runner says which variant each number is, writes the reference's own file layout, and refuses
to resume over different settings or changed data (subprocesses, as a user runs it)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil

import pytest

from bmike_jax import data as data_lib
from bmike_jax import metrics
from tests.test_runner import BASE_FLAGS, SAMPLE_DIR, _expect_user_error, load_results, load_samples, run_main
from tests.tiny_checkpoint import make_tiny_checkpoint

pytest.importorskip("torch")

FLAGS = [f for f in BASE_FLAGS if not f.startswith("--setups")] + ["--setups=zero_shot,one_shot"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny-variants")))


@pytest.fixture(scope="module")
def reference_run(ckpt, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("reference-layout"))
  proc = run_main(
      FLAGS
      + [
          f"--checkpoint={ckpt}",
          f"--output_dir={out}",
          "--reference_layout",
          "--decode_cleanup=plain",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def _sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_results_name_every_variant_and_fingerprint_the_data(reference_run):
  doc = load_results(reference_run)
  variants = doc["variants"]
  assert variants["decode_cleanup"]["ran"] == "plain"
  assert variants["decode_cleanup"]["reference"] is False
  assert variants["decode_cleanup"]["applied"] is False
  assert variants["precision"] == {
      **variants["precision"],
      "dtype": "float32",
      "matmul_precision": "HIGHEST",
      "reference": True,
  }
  assert variants["limit_mode"]["ran"] == "usable" and variants["limit_mode"]["limit"] == 2
  assert set(variants["likelihood"]) >= {"lik_*_loc_ans", "lik_*_old"}
  files = doc["data"]["files_sha256"]
  for dataset in ("zsre", "counterfact"):
    pool = data_lib.pool_path(SAMPLE_DIR, dataset)
    assert files[os.path.relpath(pool, SAMPLE_DIR)] == _sha256(pool)
    for lang in ("de", "zh"):
      path = data_lib.dataset_path(SAMPLE_DIR, dataset, lang)
      assert files[os.path.relpath(path, SAMPLE_DIR)] == _sha256(path)
  assert doc["run"]["device_count"] >= 1 and doc["run"]["platform"] == "cpu"
  assert doc["run"]["date"][:2] == "20"
  assert {"jax", "flax", "numpy", "tokenizers", "python"} <= set(doc["versions"])
  assert doc["model"]["fingerprint"].startswith("sha256-headtail:")
  with open(os.path.join(reference_run, "run.json"), encoding="utf-8") as f:
    identity = json.load(f)
  assert (
      identity["decode_cleanup"] == "plain"
      and identity["query_types"] == list(data_lib.QUERY_TYPES)
      and identity["model_fingerprint"] == doc["model"]["fingerprint"]
  )


def test_reference_layout_files(reference_run, ckpt):
  folder = os.path.join(reference_run, "result", os.path.basename(ckpt))
  names = sorted(os.listdir(folder))
  assert names == sorted(
      f"icl{n}_{prefix}_en{lang}.{ext}"
      for n in ("0", "1")
      for prefix in ("zsre", "counterfact")
      for lang in ("de", "zh")
      for ext in ("csv", "txt")
  )
  samples = [
      s
      for s in load_samples(reference_run)
      if (s["dataset"], s["setup"], s["lang"]) == ("counterfact", "one_shot", "zh")
  ]
  with open(os.path.join(folder, "icl1_counterfact_enzh.csv"), encoding="utf-8") as f:
    table = list(csv.reader(f))
  assert table[0] == ["case_id", "metric", "input", "prediction", "true"]
  # record by record, reliability .. portability (the reference's loop); input = the query alone
  loaded = data_lib.load_file(SAMPLE_DIR, "counterfact", "zh", limit=2)
  want = [
      (
          str(r.target.case_id),
          qt,
          f'New Fact: "{r.en.src} {r.en.alt}"\nQuestion: ' f'"{r.query(qt)}" Answer: "',
          r.gold(qt),
      )
      for r in loaded.records
      for qt in data_lib.QUERY_TYPES
  ]
  assert [(row[0], row[1], row[2], row[4]) for row in table[1:]] == want
  by_key = {(str(s["case_id"]), s["query_type"]): s["prediction"] for s in samples}
  assert [row[3] for row in table[1:]] == [by_key[(row[0], row[1])] for row in table[1:]]
  with open(os.path.join(folder, "icl1_counterfact_enzh.txt"), encoding="utf-8") as f:
    text = f.read()
  assert "F1EM score" in text and "PPLS score" in text
  rel = [s for s in samples if s["query_type"] == "reliability"]
  pairs = [metrics.likelihood_comparison(s["inv_ppl_alt"], s["inv_ppl_loc_ans"]) for s in rel]
  success = 100 * sum(p[0] for p in pairs) / len(pairs)
  magnitude = 100 * sum(p[1] for p in pairs) / len(pairs)
  assert f"reliability\tsuccess: {success:.6f}\tmagnitude: {magnitude:.6f}\tn: 2" in text
  em = metrics.score([s["em"] for s in rel])
  assert f"reliability\tF1: {metrics.score([s['f1_ref'] for s in rel]):.2f}\tEM: {em:.2f}" in text
  assert (
      "PPLS score" not in open(os.path.join(folder, "icl0_zsre_ende.txt"), encoding="utf-8").read()
  )


def test_resume_refuses_other_query_types_and_cleanup(reference_run, ckpt):
  proc = run_main(
      FLAGS
      + [
          f"--checkpoint={ckpt}",
          f"--output_dir={reference_run}",
          "--reference_layout",
          "--decode_cleanup=plain",
          "--query_types=reliability",
      ]
  )
  _expect_user_error(proc, "query_types", "'reliability'", "'portability'")
  proc = run_main(
      FLAGS + [f"--checkpoint={ckpt}", f"--output_dir={reference_run}", "--reference_layout"]
  )
  _expect_user_error(proc, "decode_cleanup: was 'plain', now 'reference'")


def test_resume_refuses_changed_data(ckpt, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(SAMPLE_DIR, data)
  flags = [f for f in FLAGS if not f.startswith("--data_dir")] + [
      f"--data_dir={data}",
      f"--checkpoint={ckpt}",
      f"--output_dir={tmp_path}/o",
      "--datasets=zsre",
      "--langs=de",
      "--setups=zero_shot",
      "--likelihood=false",
  ]
  assert run_main(flags).returncode == 0
  path = data / "zsRE" / "zsre_test_de.json"
  records = json.loads(path.read_text(encoding="utf-8"))
  records[0]["de"]["alt"] += " (changed)"
  path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
  _expect_user_error(run_main(flags), "zsre_test_de.json", "changed since unit")


def test_limit_mode_reference_lcount_counts_raw_records(tmp_path):
  """--lcount slices the file first: a record without the target side inside the first N is
  dropped, not replaced (checked against the raw JSON)."""
  data = tmp_path / "data"
  shutil.copytree(SAMPLE_DIR, data)
  path = data / "zsRE" / "zsre_test_de.json"
  raw = json.loads(path.read_text(encoding="utf-8"))
  del raw[1]["de"]  # the second record loses its target side
  path.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
  usable = data_lib.load_file(data, "zsre", "de", limit=3, limit_mode="usable")
  lcount = data_lib.load_file(data, "zsre", "de", limit=3, limit_mode="reference_lcount")
  assert [r.index for r in usable.records] == [0, 2, 3]
  assert [r.index for r in lcount.records] == [i for i, item in enumerate(raw[:3]) if "de" in item]
  assert lcount.n_total == usable.n_total == len(raw)
