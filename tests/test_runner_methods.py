"""The runner with weight-editing methods (--methods) end to end on the tiny checkpoint: one edit
per record read in every language under both protocols, outputs keyed by method, the fork's
baseline files, resume of a method unit, and one clear error for each bad method flag."""

from __future__ import annotations

import csv
import json
import os

import pytest
from absl import flags

from bmike_jax.editing import protocols
from bmike_jax.editing.memit import MEMITConfig
from bmike_jax.runner import run_config
from tests.test_runner import SAMPLE_DIR, load_results, load_samples, run_main
from tests.tiny_checkpoint import make_tiny_checkpoint

pytest.importorskip("torch")

LANGS = ("de", "zh")
FLAGS = [
    "--datasets=zsre",
    f"--langs={','.join(LANGS)}",
    "--setups=zero_shot",
    "--limit=2",
    "--batch_size=4",
    "--length_buckets=64,128,256,512,1024",
    "--progress=false",
    f"--data_dir={SAMPLE_DIR}",
    "--methods=ike,ft,kn",
    "--ft_hparams=layer=1,steps=2",
    "--reference_layout",
]
EDITED = ("ft", "kn")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def methods_run(tiny_ckpt, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("methods"))
  proc = run_main(FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_flags_agree_with_the_library():
  assert run_config.PROTOCOLS == protocols.PROTOCOLS
  parse = run_config._hparams("memit")
  hp = parse("memit_hparams", "layers=2:3, update_weight=10,kl_prompt={} is")
  assert hp == MEMITConfig(layers=(2, 3), update_weight=10.0, kl_prompt="{} is")
  with pytest.raises(run_config.FlagError, match="--memit_hparams"):
    parse("memit_hparams", "layers=two")


def test_in_context_identity_is_unchanged():
  """A run without weight edits records the same settings as before --methods existed."""
  values = flags.FlagValues()  # not the global flags, which may hold convert's --dtype
  run_config.define_flags(values)
  values(["prog", "--output_dir=/tmp/unused"])
  identity = run_config.from_flags(values).result_identity()
  assert "weight_edits" not in identity and "methods" not in identity


def test_outputs_are_keyed_by_method(methods_run):
  out, proc = methods_run
  doc = load_results(out)
  by_method = doc["results_by_method"]
  assert list(by_method) == ["ike", *EDITED]
  assert doc["results"] == by_method["ike"]  # `results` stays the in-context one
  for m in EDITED:
    assert set(by_method[m]["zsre"]) == {"reference", "comparable"}
    assert set(by_method[m]["zsre"]["reference"]) == set(LANGS)
    # one edit per record serves both languages and both protocols
    assert doc["weight_edits"]["methods"][m]["edits"] == 2
    assert f"=== method {m}" in proc.stdout
  samples = load_samples(out)
  assert {s["method"] for s in samples} == {"ike", *EDITED}
  for m in EDITED:
    rows = [s for s in samples if s["method"] == m]
    assert len(rows) == len(LANGS) * 2 * 4 * 2  # langs x records x query types x protocols
    assert {s["setup"] for s in rows} == {"reference", "comparable"}
    for s in rows:
      assert s["setup"] == s["protocol"]
      if s["protocol"] == "reference":
        want = "pre_prediction" if s["query_type"] == "locality" else "gold"
        assert s["scored_against"] == want
    cell = by_method[m]["zsre"]["comparable"]["zh"]["reliability"]
    scores = [
        s["f1"]
        for s in rows
        if (s["protocol"], s["lang"], s["query_type"]) == ("comparable", "zh", "reliability")
    ]
    assert cell["n"] == 2 and cell["f1"] == round(100 * sum(scores) / len(scores), 2)
  assert os.path.isfile(os.path.join(out, "units", "ft", "zsre", "reference", "de.metrics.json"))
  assert os.path.isfile(os.path.join(out, "csv", "kn", "zsre", "comparable", "zh.csv"))


def test_fork_layout_files(methods_run):
  out, _ = methods_run
  by_method = load_results(out)["results_by_method"]
  samples = load_samples(out)
  for tag, m in (("FT", "ft"), ("KN", "kn")):
    for lang in LANGS:
      with open(os.path.join(out, "output", f"{tag}_zsRE_{lang}_results_2.json")) as f:
        items = json.load(f)
      assert len(items) == 2
      for item in items:
        for side in ("pre", "post"):
          s = item[side]
          assert {"ans", "target"} <= set(s["reliability"]) and "ans" in s["generalization"]
          assert "ans" in s["locality"]["neighborhood_acc"]
          assert {"ans", "target"} <= set(s["portability"]["one_hop_acc"])
        row = next(
            r
            for r in samples
            if (r["method"], r["lang"], r.get("protocol"), r["case_id"], r["query_type"])
            == (m, lang, "reference", item["case_id"], "locality")
        )
        assert item["post"]["locality"]["neighborhood_acc"]["ans"] == row["prediction"]
        assert item["pre"]["locality"]["neighborhood_acc"]["ans"] == row["pre_prediction"]
  with open(os.path.join(out, "csv-results", "zsre_analysis_results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [(r["Method"], r["Metric"]) for r in table] == [
      (tag, metric)
      for tag in ("FT", "KN")
      for metric in ("Reliability", "Generality", "Locality", "Portability")
  ]
  for r in table:
    m = r["Method"].lower()
    for lang in LANGS:
      cell = by_method[m]["zsre"]["reference"][lang][r["Metric"].lower()]
      assert float(r[f"{lang}_F1"]) == cell["f1_ref"] and float(r[f"{lang}_EM"]) == cell["em"]


def test_resume_runs_only_the_unfinished_method_unit(methods_run, tiny_ckpt):
  out, _ = methods_run
  before = load_results(out)["results_by_method"]
  lost = os.path.join(out, "units", "kn", "zsre", "comparable", "zh.metrics.json")
  os.remove(lost)  # as if killed before this unit was written
  kept = os.path.join(out, "units", "ft", "zsre", "reference", "de.metrics.json")
  kept_mtime = os.stat(kept).st_mtime_ns
  proc = run_main(FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 to run" in proc.stderr
  assert os.path.isfile(lost) and os.stat(kept).st_mtime_ns == kept_mtime
  assert load_results(out)["results_by_method"] == before
  assert len(load_samples(out)) == 2 * 2 * 4 + 2 * 2 * 2 * 4 * 2


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--methods=ike,bogus"], "--methods"),
        (["--methods=memit"], "--memit_corpus"),
        (["--methods=ft", "--ft_hparams=depth=3"], "--ft_hparams"),
        (["--methods=ft", "--ft_hparams=layer=7"], "--ft_hparams"),  # the tiny model has 2
        (["--methods=rome", "--protocols=reference,other"], "--protocols"),
    ],
)
def test_bad_method_flags_fail_with_one_message(tiny_ckpt, tmp_path, extra, named):
  proc = run_main(
      [f"--data_dir={SAMPLE_DIR}", "--datasets=zsre", "--langs=de", "--limit=1"]
      + extra
      + [f"--checkpoint={tiny_ckpt}", f"--output_dir={tmp_path}/out"]
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and named in errors[0], proc.stderr[-2000:]


def test_report_puts_methods_side_by_side(methods_run):
  """The report re-scores the weight-editing rows as the runner scored them (all identical to
  results.json), tabulates every method beside the in-context setups and draws method x language."""
  out, _ = methods_run
  import subprocess
  import sys

  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", f"--results_dir={out}"],
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    report = f.read()
  assert "## Editing methods side by side" in report
  assert "re-scored and compared with results.json" in report and "all identical" in report
  assert os.path.isfile(os.path.join(out, "figures", "methods_zsre.png"))
  section = report.split("### zsre: method x language")[1].split("![")[0]
  lines = {l.split("|")[1].strip(): l for l in section.splitlines() if l.startswith("| ")}
  assert {"ike: zero_shot", "ft: reference", "ft: comparable", "kn: reference"} <= set(lines)
  by_method = load_results(out)["results_by_method"]
  for label, cells in (
      ("ft: reference", by_method["ft"]["zsre"]["reference"]),
      ("ike: zero_shot", by_method["ike"]["zsre"]["zero_shot"]),
  ):
    shown = [float(c) for c in lines[label].split("|")[2:4]]
    want = [
        round(sum(c["f1_ref"] for c in cells[lang].values()) / len(cells[lang]), 2)
        for lang in LANGS
    ]
    assert shown == pytest.approx(want, abs=0.006)
