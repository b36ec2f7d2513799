"""The absl runner end to end (subprocesses, as a user runs it): outputs, resume after kill -9,
and one clear error for each kind of bad input."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bmike_jax import data as data_lib
from tests import two_processes
from tests.tiny_checkpoint import make_tiny_checkpoint

pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(os.path.dirname(data_lib.__file__), "sample_data")
BASE_FLAGS = [
    "--datasets=zsre,counterfact",
    "--langs=de,zh",
    "--setups=zero_shot,few_shot_specific",
    "--limit=2",
    "--batch_size=4",
    "--length_buckets=64,128,256,512,1024",
    "--progress=false",
    f"--data_dir={SAMPLE_DIR}",
]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")))


_CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bmike-test-xla-{os.getuid()}")


def run_main(flags, **kwargs):
  flags = [f"--compilation_cache_dir={_CACHE}", *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("BMIKE53_DIR", None)
  return subprocess.run(
      [sys.executable, "-m", "bmike_jax.main", *flags],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
      **kwargs,
  )


def start_main(flags):
  """The runner as a background process (what run_main runs), its output discarded."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("BMIKE53_DIR", None)
  return subprocess.Popen(
      [sys.executable, "-m", "bmike_jax.main", f"--compilation_cache_dir={_CACHE}", *flags],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )


def metrics_files(folder):
  """The finished units' metrics files under `folder` (a temporary left by a kill is not one)."""
  return [
      os.path.join(d, f)
      for d, _, fs in os.walk(folder)
      for f in fs
      if f.endswith(".metrics.json") and not f.startswith(".")
  ]


def kill_when(proc, ready, timeout=300):
  """SIGKILLs `proc` as soon as `ready()` holds (polled every 50 ms); fails when the run ended
  first or `ready` never held. Returns ready()'s last value."""
  deadline = time.time() + timeout
  value = None
  while time.time() < deadline and proc.poll() is None:
    value = ready()
    if value:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "run ended before it could be killed"
  assert value, f"not ready within {timeout} s"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  return value


def load_results(out):
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    return json.load(f)


def load_samples(out):
  with open(os.path.join(out, "samples.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full_run(tiny_ckpt, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("full"))
  proc = run_main(BASE_FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


def test_outputs_follow_the_contract(full_run):
  out, proc = full_run
  doc = load_results(out)
  assert doc["flags"]["langs"] == "de,zh" and doc["flags"]["limit"] == 2
  assert set(doc["versions"]) >= {"bmike_jax", "jax", "flax", "code"}
  assert doc["model"]["checkpoint"].endswith("tiny") or os.path.isdir(doc["model"]["checkpoint"])
  assert doc["engine"]["compile_count"] > 0
  counts = doc["data"]["counts"]["zsre"]["zh"]
  assert counts["n_used"] == 2 and counts["n_total"] >= 2 and "n_skipped" in counts
  res = doc["results"]
  assert set(res) == {"zsre", "counterfact"}
  cell = res["counterfact"]["few_shot_specific"]["zh"]["reliability"]
  assert cell["n"] == 2
  for key in (
      "em",
      "f1_ref",
      "f1",
      "f1_norm",
      "lik_success_loc_ans",
      "lik_magnitude_loc_ans",
      "lik_success_old",
      "lik_magnitude_old",
  ):
    assert key in cell, key
  assert "lik_success_loc_ans" not in res["zsre"]["zero_shot"]["de"]["reliability"]
  samples = load_samples(out)
  assert len(samples) == 2 * 2 * 2 * 2 * 4  # datasets x langs x setups x records x query types
  for key in (
      "dataset",
      "lang",
      "setup",
      "query_type",
      "case_id",
      "prompt",
      "prediction",
      "gold",
      "em",
      "f1_ref",
      "f1",
  ):
    assert key in samples[0]
  # results.json numbers are the means of the samples' scores
  rows = [
      s
      for s in samples
      if (s["dataset"], s["setup"], s["lang"], s["query_type"])
      == ("counterfact", "few_shot_specific", "zh", "reliability")
  ]
  assert cell["f1"] == round(100 * sum(r["f1"] for r in rows) / len(rows), 2)
  with open(os.path.join(out, "csv", "zsre", "zero_shot", "de.csv"), encoding="utf-8") as f:
    table = list(csv.reader(f))
  assert table[0] == ["case_id", "metric", "input", "prediction", "true"]
  assert len(table) == 1 + 2 * 4
  assert "reliability" in proc.stdout and "== zsre" in proc.stdout  # the summary table


def test_rerun_with_same_flags_skips_finished_units(full_run, tiny_ckpt):
  out, _ = full_run
  before = load_results(out)["results"]
  proc = run_main(BASE_FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "nothing to run" in proc.stderr
  assert load_results(out)["results"] == before


def test_kill_minus_9_then_resume_gives_identical_results(full_run, tiny_ckpt, tmp_path):
  ref_out, _ = full_run
  out = str(tmp_path / "killed")
  flags = BASE_FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"]
  units_dir = os.path.join(out, "units")
  kill_when(start_main(flags), lambda: len(metrics_files(units_dir)) >= 2)
  finished = metrics_files(units_dir)
  assert 2 <= len(finished) < 8
  # The resume unrolls the layers over per-layer weights (the GPU / TPU default): the layout is
  # not part of the results' identity, and answers and scores do not change with it.
  resumed = run_main(flags + ["--scan_layers=false"])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert load_results(ref_out)["model"]["scan_layers"] is True  # the CPU default
  assert load_results(out)["model"]["scan_layers"] is False
  assert_same_results(load_results(out)["results"], load_results(ref_out)["results"])
  assert_same_samples(load_samples(out), load_samples(ref_out))


def assert_same_samples(got, want):
  """Answers and their scores exactly; the likelihoods' floats to fp32 rounding (another program
  may sum in another order)."""
  assert len(got) == len(want)
  for g, w in zip(got, want):
    floats = {k for k in w if k.startswith("inv_ppl_")}
    assert {k: v for k, v in g.items() if k not in floats} == {
        k: v for k, v in w.items() if k not in floats
    }
    for k in floats:
      assert (g[k] is None) == (w[k] is None), (k, g[k], w[k])
      if w[k] is not None:
        assert abs(g[k] - w[k]) <= 1e-5 * abs(w[k]), (k, g[k], w[k])


def assert_same_results(got, want, path=""):
  """Equal results.json cells; the unrounded likelihood magnitudes (means of float32 1/PPL
  differences) to float32 rounding, as the samples' likelihoods (another program, e.g. unrolled
  layers or a per-device batch of 2 instead of 4, may sum in another order)."""
  if isinstance(want, dict):
    assert isinstance(got, dict) and set(got) == set(want), path
    for key in want:
      assert_same_results(got[key], want[key], f"{path}/{key}")
  elif path.rsplit("/", 1)[-1].startswith("lik_magnitude") and want is not None:
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), path
  else:
    assert got == want, path


def _expect_user_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in proc.stderr, (fragment, proc.stderr[-2000:])


@pytest.mark.parametrize(
    "flag, fragments",
    [
        ("--langs=de,xx", ["--langs", "xx"]),
        ("--datasets=zsre,mquake", ["--datasets", "mquake"]),
        ("--setups=two_shot", ["--setups", "two_shot"]),
        ("--batch_size=0", ["--batch_size"]),
        ("--batch_size=big", ["--batch_size", "auto"]),
        ("--length_buckets=64,32", ["--length_buckets"]),
        ("--prefix_buckets=-1,512", ["--prefix_buckets", ">= 0"]),
        ("--decode_carry=1.5", ["--decode_carry", "share"]),
        ("--coordinator_address=localhost:1234", ["--coordinator_address", "--process_id"]),
    ],
)
def test_bad_flag_values(flag, fragments, tmp_path):
  proc = run_main(BASE_FLAGS + [flag, f"--output_dir={tmp_path}", "--checkpoint=unused"])
  _expect_user_error(proc, *fragments)


def test_prefix_buckets_flag_takes_0():
  """--prefix_buckets=0,512 lists 0 (zero-shot without a prefix region); 512 alone does not."""
  from absl import flags as absl_flags

  from bmike_jax.runner import run_config

  for given, want in (("0,512", (0, 512)), ("512,2048", (512, 2048)), (None, None)):
    values = absl_flags.FlagValues()
    run_config.define_flags(values)
    args = ["main", "--output_dir=o", "--checkpoint=c"]
    values(args + ([f"--prefix_buckets={given}"] if given else []))
    assert run_config.from_flags(values).prefix_buckets == want


def test_missing_checkpoint(tmp_path):
  proc = run_main(BASE_FLAGS + [f"--checkpoint={tmp_path}/nope", f"--output_dir={tmp_path}/o"])
  _expect_user_error(proc, "nope")


def test_mesh_larger_than_the_devices(tiny_ckpt, tmp_path):
  proc = run_main(
      BASE_FLAGS + [f"--checkpoint={tiny_ckpt}", "--mesh_model=64", f"--output_dir={tmp_path}/o"]
  )
  _expect_user_error(proc, "--mesh_model=64", "device")


def test_missing_and_malformed_data(tiny_ckpt, tmp_path):
  import shutil

  data = tmp_path / "data"
  shutil.copytree(SAMPLE_DIR, data)
  os.remove(data / "zsRE" / "zsre_test_zh.json")
  proc = run_main(
      BASE_FLAGS
      + [f"--data_dir={data}", f"--checkpoint={tiny_ckpt}", f"--output_dir={tmp_path}/o1"]
  )
  _expect_user_error(proc, "zsre_test_zh.json")
  (data / "zsRE" / "zsre_test_zh.json").write_text('[{"en": {"case_id": 1}, ', encoding="utf-8")
  proc = run_main(
      BASE_FLAGS
      + [f"--data_dir={data}", f"--checkpoint={tiny_ckpt}", f"--output_dir={tmp_path}/o2"]
  )
  _expect_user_error(proc, "zsre_test_zh.json")


def test_tokenizer_model_mismatch(tmp_path):
  ckpt = make_tiny_checkpoint(str(tmp_path / "small_vocab"), vocab_size=1000)
  proc = run_main(BASE_FLAGS + [f"--checkpoint={ckpt}", f"--output_dir={tmp_path}/o"])
  _expect_user_error(proc, "vocab")


def test_prompt_longer_than_largest_bucket_keeps_finished_units(tiny_ckpt, tmp_path):
  out = str(tmp_path / "o")
  # zero-shot prompts fit in 128 tokens, 8-shot ones do not: the first unit finishes, then stop.
  flags = [f for f in BASE_FLAGS if not f.startswith("--length_buckets")]
  proc = run_main(
      flags
      + [
          "--length_buckets=128",
          "--datasets=zsre",
          "--langs=de",
          f"--checkpoint={tiny_ckpt}",
          f"--output_dir={out}",
      ]
  )
  _expect_user_error(proc, "128")
  assert os.path.exists(os.path.join(out, "units", "zsre", "zero_shot", "de.metrics.json"))
  assert os.path.exists(os.path.join(out, "results.json"))


def test_unwritable_output_dir(tiny_ckpt, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  proc = run_main(BASE_FLAGS + [f"--checkpoint={tiny_ckpt}", f"--output_dir={blocker}/out"])
  _expect_user_error(proc, "not writable")


def test_incompatible_rerun_is_refused(full_run, tiny_ckpt):
  out, _ = full_run
  flags = [f for f in BASE_FLAGS if not f.startswith("--limit")]
  proc = run_main(flags + ["--limit=3", f"--checkpoint={tiny_ckpt}", f"--output_dir={out}"])
  _expect_user_error(proc, "limit", "other settings")


def test_report_rescores_a_runner_output_identically_and_builds(full_run):
  from bmike_jax import tokenizer as tokenizer_lib
  from bmike_jax.analysis import rescore

  out, _ = full_run
  stored = rescore.load_results(os.path.join(out, "results.json"))
  rows, _ = rescore.load_samples(os.path.join(out, "samples.jsonl"))
  tokenizer = tokenizer_lib.load_tokenizer(rescore.tokenizer_source(stored))
  fresh = rescore.rescore(rows, tokenizer)
  n_cells, differences = rescore.compare(fresh, rescore.stored_scores(stored))
  assert n_cells == 2 * 2 * 2 * 4 and differences == []
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", f"--results_dir={out}"],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    report = f.read()
  assert "confusion" in report.lower() and "](figures/" in report
  assert any(name.endswith(".png") for name in os.listdir(os.path.join(out, "figures")))


@pytest.mark.parametrize(
    "flagfile",
    sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.flags"))),
)
def test_flagfiles_parse_and_validate(flagfile, tmp_path):
  """Every shipped flagfile is accepted (the run then stops at the missing checkpoint)."""
  proc = run_main(
      [
          f"--flagfile={os.path.join(REPO, flagfile)}",
          f"--data_dir={SAMPLE_DIR}",
          "--langs=de",
          f"--output_dir={tmp_path}/o",
          f"--checkpoint={tmp_path}/absent",
      ]
  )
  _expect_user_error(proc, "absent")


def test_two_processes_split_the_batches_and_one_writes(full_run, tiny_ckpt, tmp_path):
  """A pod in miniature: two CPU processes joined by jax.distributed (one device each, a global
  data axis of 2) run the same command; every global batch is fed half by each. Process 0 alone
  writes, and the results equal the single-process run's."""
  out = str(tmp_path / "pod")
  procs = two_processes.start_pair([*BASE_FLAGS, f"--checkpoint={tiny_ckpt}"], [out, out])
  logs = two_processes.wait_pair(procs, timeout=600)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in logs[1][1] and "2 local / 2 global" not in logs[1][1]
  ref_out, _ = full_run
  # (a per-device batch of 2 instead of 4 may pick other matmul kernels)
  assert_same_results(load_results(out)["results"], load_results(ref_out)["results"])
  assert_same_samples(load_samples(out), load_samples(ref_out))
