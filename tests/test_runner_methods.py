"""The runner with weight-editing methods (--methods) end to end on the tiny checkpoint: one edit
per record read in every language under both protocols, outputs keyed by method, the fork's
baseline files, resume of a method unit (also after kill -9), methods added to and dropped from a
folder, MEMIT with its stored second moments, and one clear error for each bad method flag."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from bmike_jax.editing import protocols
from bmike_jax.editing.memit import MEMITConfig
from bmike_jax.runner import run_config
from bmike_jax.runner import store as store_lib
from tests.test_runner import (
    SAMPLE_DIR,
    kill_when,
    load_results,
    load_samples,
    metrics_files,
    run_main,
    start_main,
)
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


def run_report(out) -> str:
  """`python -m bmike_jax.report` on `out`: report.md's text."""
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", f"--results_dir={out}"],
      capture_output=True,
      text=True,
      timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    return f.read()


def assert_close(got, want, path=""):
  """Equal JSON values, floats to 1e-5 relative."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and set(got) == set(want), (path, set(got) ^ set(want))
    for key in want:
      assert_close(got[key], want[key], f"{path}/{key}")
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), path
    for i, (g, w) in enumerate(zip(got, want)):
      assert_close(g, w, f"{path}[{i}]")
  elif isinstance(want, float):
    assert got == pytest.approx(want, rel=1e-5, abs=1e-12), path
  else:
    assert got == want, path


def _flag_values(*argv):
  values = flags.FlagValues()  # not the global flags, which may hold convert's --dtype
  run_config.define_flags(values)
  values(["prog", "--output_dir=/tmp/unused", *argv])
  return run_config.from_flags(values)


def test_flags_agree_with_the_library():
  parse = run_config._hparams("memit")
  hp = parse("memit_hparams", "layers=2:3, update_weight=10,kl_prompt={} is")
  assert hp == MEMITConfig(layers=(2, 3), update_weight=10.0, kl_prompt="{} is")
  with pytest.raises(run_config.FlagError, match="--memit_hparams"):
    parse("memit_hparams", "layers=two")


def test_in_context_identity_is_unchanged():
  """A run without weight edits records the same settings as before --methods existed."""
  identity = _flag_values().result_identity()
  assert "weight_edits" not in identity and "methods" not in identity


def test_edit_batch_size_is_part_of_each_methods_identity():
  """Batched edits are each their own optimisation, but a batch pads to its longest request and
  runs other programs: their round-off, amplified by the optimisation, can change the answers
  (MEMIT with a small corpus did, DESIGN.md), so a resume must keep --edit_batch_size, per
  method. The protocols are units, not settings: changing them is no conflict."""
  one = _flag_values("--methods=ike,ft,rome").result_identity()
  two = _flag_values(
      "--methods=ike,ft,rome", "--edit_batch_size=2", "--protocols=reference"
  ).result_identity()
  assert set(one["weight_edits"]) == {"ft", "rome"}
  for m in ("ft", "rome"):
    assert one["weight_edits"][m]["edit_batch_size"] == "auto"  # the default
    assert two["weight_edits"][m]["edit_batch_size"] == 2
  _, differing = store_lib.merge_identity(one, two)
  assert [d.split(":")[0] for d in differing] == ["ft edit_batch_size", "rome edit_batch_size"]
  # a method only one side holds is no conflict, whatever its batch size
  lora = _flag_values("--methods=lora", "--edit_batch_size=2").result_identity()
  merged, differing = store_lib.merge_identity(one, lora)
  assert differing == [] and list(merged["weight_edits"]) == ["ft", "rome", "lora"]


def test_run_json_of_the_earlier_runner_is_refused():
  """Before methods could be added, run.json held one "weight_edits" for all methods (without
  the batch size): such a folder is refused with a message saying so, not read as methods named
  "hparams" or "protocols"."""
  now = _flag_values("--methods=ft").result_identity()
  old = {k: v for k, v in now.items() if k != "weight_edits"}
  old["weight_edits"] = {
      "protocols": ["reference", "comparable"],
      "hparams": {"ft": now["weight_edits"]["ft"]["hparams"]},
      "context_templates": "generated",
      "memit_corpus": None,
  }
  merged, differing = store_lib.merge_identity(old, now)
  assert len(differing) == 1 and "earlier runner" in differing[0]
  assert list(merged["weight_edits"]) == ["ft"]


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
    # --edit_batch_size=auto on a CPU (no memory reported, no budget): 8, recorded per dataset
    assert doc["weight_edits"]["methods"][m]["edit_batch_size"] == {"zsre": 8}
    assert doc["weight_edits"]["methods"][m]["edit_memory"] == {"zsre": {"budget_bytes": None}}
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
  assert {m: e["edits"] for m, e in load_results(out)["weight_edits"]["methods"].items()} == {
      "ft": 2,
      "kn": 2,
  }
  lost = os.path.join(out, "units", "kn", "zsre", "comparable", "zh.metrics.json")
  os.remove(lost)  # as if killed before this unit was written
  # as if the earlier run had been on a device whose memory chose 1 edit per batch for kn
  results = os.path.join(out, "results.json")
  with open(results) as f:
    doc = json.load(f)
  doc["weight_edits"]["methods"]["kn"]["edit_batch_size"] = {"zsre": 1}
  with open(results, "w") as f:
    json.dump(doc, f)
  kept = os.path.join(out, "units", "ft", "zsre", "reference", "de.metrics.json")
  kept_mtime = os.stat(kept).st_mtime_ns
  proc = run_main(FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 to run" in proc.stderr
  assert os.path.isfile(lost) and os.stat(kept).st_mtime_ns == kept_mtime
  assert load_results(out)["results_by_method"] == before
  edits = load_results(out)["weight_edits"]["methods"]
  assert edits["kn"]["edits"] == 2 * edits["ft"]["edits"] == 4  # summed over both runs
  # the resume edited as the earlier run did (auto reuses the recorded size)
  assert "kn on zsre: 1 edits per batch, as the folder's earlier run" in proc.stderr
  assert edits["kn"]["edit_batch_size"] == {"zsre": 1}
  assert len(load_samples(out)) == 2 * 2 * 4 + 2 * 2 * 2 * 4 * 2


@pytest.mark.parametrize(
    "extra,named",
    [
        (["--methods=ike,bogus"], "--methods"),
        (["--methods=memit"], "--memit_corpus"),
        (["--methods=memit", "--memit_corpus=/nonexistent/corpus.txt"], "--memit_corpus"),
        (["--methods=ft", "--memit_stats_dir=gs://bucket/moments"], "--memit_stats_dir"),
        (["--methods=ft", "--ft_hparams=depth=3"], "--ft_hparams"),
        (["--methods=ft", "--ft_hparams=layer=7"], "--ft_hparams"),  # the tiny model has 2
        (["--methods=rome", "--protocols=reference,other"], "--protocols"),
        (["--methods=ft", "--edit_batch_size=0"], "--edit_batch_size"),
        (["--methods=ft", "--edit_batch_size=many"], "--edit_batch_size"),
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
  report = run_report(out)
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


def _mtimes(files):
  return {f: os.stat(f).st_mtime_ns for f in files}


def test_methods_added_to_and_dropped_from_a_folder(methods_run, tiny_ckpt, tmp_path):
  """A folder of the in-context run alone gains FT-L and KN (their units run, the in-context ones
  are kept) and ends equal to the run that asked for all three at once; a method's own settings
  and the shared ones are still refused; a rerun that drops methods keeps their results in
  results.json, samples.jsonl and the report."""
  ref, _ = methods_run
  out = str(tmp_path / "grown")
  flags = FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"]
  proc = run_main(flags + ["--methods=ike"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  in_context = _mtimes(metrics_files(os.path.join(out, "units")))
  assert len(in_context) == len(LANGS)

  proc = run_main(flags)  # --methods=ike,ft,kn
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "10 units planned, 2 already finished, 8 to run" in proc.stderr
  assert _mtimes(in_context) == in_context
  assert_close(load_results(out)["results_by_method"], load_results(ref)["results_by_method"])
  assert_close(load_samples(out), load_samples(ref))

  with open(os.path.join(out, "run.json")) as f:
    run_json = f.read()
  for extra, named in (
      (["--methods=ft", "--ft_hparams=layer=1,steps=3"], "ft hparams: was"),
      (["--methods=kn", "--edit_batch_size=1"], "kn edit_batch_size: was 'auto', now 1"),
      (["--methods=ike,lora", "--dtype=bfloat16"], "dtype: was 'float32'"),
  ):
    proc = run_main(flags + extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "other settings" in proc.stderr and named in proc.stderr, proc.stderr[-2000:]
    with open(os.path.join(out, "run.json")) as f:
      assert f.read() == run_json  # a refused rerun records nothing

  os.remove(os.path.join(out, "units", "ft", "zsre", "comparable", "zh.metrics.json"))
  before = load_results(out)
  proc = run_main(flags + ["--methods=ft"])  # drops ike and kn
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "10 units planned, 9 already finished, 1 to run" in proc.stderr
  doc = load_results(out)
  assert list(doc["results_by_method"]) == ["ike", *EDITED]
  assert_close(doc["results_by_method"], before["results_by_method"])
  assert doc["results"] == before["results"]  # the in-context results, not run this time
  assert doc["weight_edits"]["methods"]["kn"] == before["weight_edits"]["methods"]["kn"]
  assert_close(load_samples(out), load_samples(ref))
  report = run_report(out)
  assert "all identical" in report
  section = report.split("### zsre: method x language")[1].split("![")[0]
  for label in ("ike: zero_shot", "ft: comparable", "kn: reference", "kn: comparable"):
    assert f"| {label} |" in section, label


def test_kill_minus_9_during_weight_edits_then_resume(methods_run, tiny_ckpt, tmp_path):
  """Killed (SIGKILL) once a weight-editing unit is on disk: the rerun keeps every finished unit,
  runs the rest and ends equal to the uninterrupted run."""
  ref, _ = methods_run
  out = str(tmp_path / "killed")
  flags = FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"]

  def edited():
    return [f for m in EDITED for f in metrics_files(os.path.join(out, "units", m))]

  kill_when(start_main(flags), edited)
  finished = _mtimes(metrics_files(os.path.join(out, "units")))
  assert len(LANGS) < len(finished) < 10  # the in-context units, some but not all edited ones
  proc = run_main(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"10 units planned, {len(finished)} already finished" in proc.stderr
  assert {f: os.stat(f).st_mtime_ns for f in finished} == finished  # not computed again
  assert_close(load_results(out)["results_by_method"], load_results(ref)["results_by_method"])
  assert_close(load_samples(out), load_samples(ref))


def test_memit_end_to_end_stores_and_reuses_its_second_moments(tiny_ckpt, tmp_path, monkeypatch):
  """--methods=memit on the tiny model with a corpus written here: both protocols' units, the
  corpus's sha256 in run.json, the second moments stored once (~/.cache/bmike_jax/memit) and read
  back, not recomputed, by a rerun that edits again; --memit_stats_dir moves them."""
  home = tmp_path / "home"
  monkeypatch.setenv("HOME", str(home))  # the subprocess's ~ (where the moments are stored)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(
      "The Eiffel Tower is in Paris.\nMozart was born in Salzburg.\n\n"
      "Water boils at one hundred degrees.\nThe Danube flows into the Black Sea.\n",
      encoding="utf-8",
  )
  out = str(tmp_path / "memit")
  flags = [
      f"--data_dir={SAMPLE_DIR}",
      "--datasets=zsre",
      "--langs=de",
      "--limit=1",
      "--progress=false",
      "--length_buckets=64,128,256,512,1024",
      "--methods=memit",
      f"--memit_corpus={corpus}",
      "--memit_hparams=layers=0:1,steps=3",
      "--edit_context_templates=none",
      f"--checkpoint={tiny_ckpt}",
      f"--output_dir={out}",
  ]
  proc = run_main(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = load_results(out)
  assert list(doc["results_by_method"]) == ["memit"]
  assert set(doc["results_by_method"]["memit"]["zsre"]) == {"reference", "comparable"}
  assert doc["weight_edits"]["methods"]["memit"]["edits"] == 1
  samples = load_samples(out)
  assert {(s["method"], s["protocol"]) for s in samples} == {
      ("memit", "reference"),
      ("memit", "comparable"),
  }
  assert len(samples) == 2 * 4  # protocols x query types
  for protocol in ("reference", "comparable"):
    assert os.path.isfile(os.path.join(out, "units", "memit", "zsre", protocol, "de.metrics.json"))
  with open(os.path.join(out, "run.json")) as f:
    recorded = json.load(f)["weight_edits"]["memit"]
  assert recorded["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
  stored = glob.glob(str(home / ".cache" / "bmike_jax" / "memit" / "*.npz"))
  assert len(stored) == 1, stored
  model = load_results(out)["model"]["fingerprint"].rsplit(":", 1)[-1]
  corpus_sha = hashlib.sha256(corpus.read_bytes()).hexdigest()
  assert os.path.basename(stored[0]) == f"{model[:16]}-0_1-{corpus_sha[:16]}.npz"
  mtime = os.stat(stored[0]).st_mtime_ns

  os.remove(os.path.join(out, "units", "memit", "zsre", "comparable", "de.metrics.json"))
  proc = run_main(flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 to run" in proc.stderr and "memit on zsre: 1 edits" in proc.stderr
  assert glob.glob(str(home / ".cache" / "bmike_jax" / "memit" / "*.npz")) == stored
  assert os.stat(stored[0]).st_mtime_ns == mtime  # read back, not computed and written again
  assert_close(load_results(out)["results_by_method"], doc["results_by_method"])
  assert_close(load_samples(out), samples)

  moved = tmp_path / "moments"  # --memit_stats_dir: stored there, the same answers
  os.remove(os.path.join(out, "units", "memit", "zsre", "comparable", "de.metrics.json"))
  proc = run_main(flags + [f"--memit_stats_dir={moved}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [os.path.basename(p) for p in glob.glob(str(moved / "*.npz"))] == [
      os.path.basename(stored[0])
  ]
  assert_close(load_samples(out), samples)

  other_home = tmp_path / "other_home"  # --memit_stats_dir=: computed, stored nowhere
  monkeypatch.setenv("HOME", str(other_home))
  os.remove(os.path.join(out, "units", "memit", "zsre", "comparable", "de.metrics.json"))
  proc = run_main(flags + ["--memit_stats_dir="])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not other_home.exists() and len(glob.glob(str(moved / "*"))) == 1
  assert_close(load_samples(out), samples)


def test_a_methods_settings_bind_once_it_has_a_finished_unit(tmp_path):
  """A rerun that changes a method's settings is refused once the folder holds a finished unit
  of it; before (a run stopped ahead of its first unit), the new settings replace the old."""
  from bmike_jax.runner.units import Unit

  store = store_lib.OutputStore(str(tmp_path / "out"))
  first = _flag_values("--methods=ike,ft", "--ft_hparams=steps=2").result_identity()
  second = _flag_values("--methods=ike,ft", "--ft_hparams=steps=3").result_identity()
  assert store.prepare(first) == ["ft"]
  assert store.prepare(second) == ["ft"]  # no ft unit yet: accepted, recorded
  with open(tmp_path / "out" / "run.json") as f:
    assert json.load(f)["weight_edits"]["ft"] == second["weight_edits"]["ft"]
  store.write_unit(Unit("zsre", "de", "reference", "ft"), [], {"unit": {}})
  with pytest.raises(store_lib.OutputError, match="ft hparams: was"):
    store.prepare(first)


def test_a_folder_of_the_earlier_comparable_read_is_refused(tmp_path):
  """A folder whose comparable answers were read the way before 2026-12-07 (`engine`: each edit
  added into a copy of the engine's weights, one call per edit) is refused, not mixed with the
  per-row-delta read."""
  from bmike_jax.runner.units import Unit

  store = store_lib.OutputStore(str(tmp_path / "out"))
  now = _flag_values("--methods=ike,ft").result_identity()
  earlier = json.loads(json.dumps(now))
  earlier["weight_edits"]["ft"]["comparable_read"] = "engine"
  assert store.prepare(earlier) == ["ft"]
  store.write_unit(Unit("zsre", "de", "comparable", "ft"), [], {"unit": {}})
  with pytest.raises(store_lib.OutputError, match="comparable_read"):
    store.prepare(now)
