"""The benchmarks in tools/ (`python -m tools.bench_cpu`, `tools.bench_gpu`, `tools.tables`) end to
end on a tiny workload and a tiny random model: every system runs in its subprocess, the tables
have the expected rows, and `tools.tables` renders a saved run again. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bmike_jax import data as data_lib
from tests.tiny_checkpoint import make_tiny_checkpoint
from tools import paths
from tools import tables

pytest.importorskip("torch")

SAMPLE_DIR = str(data_lib.SAMPLE_DATA_DIR)
DOCS_BENCH = paths.REPO_ROOT / "docs" / "bench" / "h100_2026-11-24"


def run_tool(module, flags, timeout=900):
  """`python -m <module> <flags>` from the repository root (tools/ is not installed)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("BMIKE53_DIR", None)
  return subprocess.run(
      [sys.executable, "-m", module, *flags],
      capture_output=True,
      text=True,
      env=env,
      timeout=timeout,
      check=False,
      cwd=paths.REPO_ROOT,
  )


def run_bench(flags, timeout=900):
  return run_tool("tools.bench_cpu", flags, timeout)


def run_gpu_bench(flags, timeout=300):
  return run_tool("tools.bench_gpu", flags, timeout)


def header(columns) -> str:
  return "| " + " | ".join(columns) + " |"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny")))


def test_cpu_bench_prints_its_tables(tiny_ckpt, tmp_path):
  out = str(tmp_path / "bench")
  proc = run_bench(
      [
          f"--checkpoint={tiny_ckpt}",
          f"--data_dir={SAMPLE_DIR}",
          "--records=1",
          "--langs=de",
          "--setups=few_shot_mixed,zero_shot",
          "--skip_reference",
          "--hf_batch_sizes=4",
          "--batch_size=4",
          "--peak_matmul_size=128",
          f"--output={out}",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out + ".md", encoding="utf-8") as f:
    md = f.read()
  assert md in proc.stdout  # the same ready-to-paste report is printed
  assert header(tables.MAIN_COLUMNS) in md
  assert header(tables.FLOOR_COLUMNS) in md
  lines = [line for line in md.splitlines() if line.startswith("| (")]
  for label in (
      "(b) HF generate, batched",
      "(c) bmike-jax, no prefix reuse",
      "(d) bmike-jax, prefix reuse",
      "(e) bmike-jax, prefix + record-stem reuse",
  ):
    assert any(line.startswith(f"| {label}") for line in lines), label
  assert not any(line.startswith("| (a)") for line in lines)  # --skip_reference
  main_rows = [line for line in lines if line.count("|") == len(tables.MAIN_COLUMNS) + 1]
  assert len(main_rows) == 4 * 3  # 4 systems x (2 setups + all)
  assert "Targets" in md and "few_shot_mixed" in md
  with open(out + ".json", encoding="utf-8") as f:
    raw = json.load(f)
  systems = raw["summary"]["systems"]
  assert set(systems) == {"b", "c", "d", "e"}
  for label, per in systems.items():
    assert set(per) == {"few_shot_mixed", "zero_shot", "all"}, label
    assert per["all"]["prompts"] == 8  # 1 record x 4 query types x 2 setups
    assert per["all"]["identical_b"] is not None and per["all"]["identical_a"] is None
  assert raw["summary"]["ids_mismatch"] == {"b": 0, "c": 0, "d": 0, "e": 0}
  # the answers do not depend on stems (fp32)
  answers = {k: [g["answers"] for g in raw["results"][k]["groups"]] for k in "cde"}
  assert answers["e"] == answers["d"] == answers["c"]
  assert raw["results"]["e"]["stem_reuse"] and not raw["results"]["d"]["stem_reuse"]
  assert (
      raw["summary"]["floor"]["d"]["all"]["unique_tokens"]
      <= raw["summary"]["floor"]["d"]["all"]["prompt_tokens"]
  )
  assert raw["extra"]["peak"]["flops"] > 0
  # The report is rendered from the raw JSON alone: redone without measuring, it is the same.
  proc = run_tool("tools.tables", [f"--from={out}.json"], timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout == md


def test_tables_redo_the_saved_gpu_reports_exactly():
  """The H100 runs in docs/bench: each .md is what tools.tables renders from the .json beside it
  (so BENCHMARKS.md's GPU tables can be redone without a GPU)."""
  for name in ("gpu_scanned_layers", "gpu_unrolled_layers", "gpu_unrolled_layers_one_shot"):
    with open(DOCS_BENCH / f"{name}.json", encoding="utf-8") as f:
      raw = json.load(f)
    assert tables.render(raw) == (DOCS_BENCH / f"{name}.md").read_text(encoding="utf-8"), name
  with open(DOCS_BENCH / "gpu_unrolled_layers.json", encoding="utf-8") as f:
    md = tables.render(json.load(f))
  assert "| zero_shot (48) | 64 | 80 | 8.126 | 4.794 | 1.69× | 4.995 | 1.63× |" in md
  assert "worst 1.85× → FAIL" in md


def test_tables_rejects_a_file_that_is_not_a_run(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text('{"results": {}}')
  proc = run_tool("tools.tables", [f"--from={bad}"], timeout=120)
  assert proc.returncode == 1 and f"--from={bad}" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_gpu_section_refuses_without_a_gpu():
  proc = run_gpu_bench([])
  assert proc.returncode == 2
  assert "needs a GPU" in proc.stderr and "nothing was measured" in proc.stderr


def test_gpu_section_code_path_on_cpu_with_a_toy_model(tmp_path):
  # The prompt lengths are written where the data and tokenizer are, then read (as on a GPU
  # machine that has neither).
  lengths = str(tmp_path / "lengths.json")
  proc = run_gpu_bench(
      [
          f"--data_dir={SAMPLE_DIR}",
          "--langs=de",
          "--records=1",
          "--setups=zero_shot",
          f"--write_lengths={lengths}",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(lengths, encoding="utf-8") as f:
    written = json.load(f)
  ((prefix, suffixes),) = written["lengths"]["zero_shot"]  # one group: de
  assert len(suffixes) == 4 and min(suffixes) > 0 and prefix >= 0
  assert written["source"]["tokenizer"].startswith("SmolLM2")
  bad = tmp_path / "bad.json"
  for text in (
      "{}",
      '{"lengths": []}',
      '{"lengths": {"zero_shot": []}}',
      '{"lengths": {"zero_shot": [[4, []]]}}',
  ):
    bad.write_text(text)
    proc = run_gpu_bench([f"--lengths={bad}"])
    assert proc.returncode == 1 and f"--lengths={bad}" in proc.stderr, (text, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, text
  proc = run_gpu_bench([f"--lengths={lengths}", "--setups=one_shot"])
  assert proc.returncode == 1 and "one_shot" in proc.stderr, proc.stderr[-2000:]

  out = str(tmp_path / "gpu")
  proc = run_gpu_bench(
      [
          "--model=tiny",
          "--allow_cpu",
          f"--lengths={lengths}",
          "--setups=zero_shot",
          "--batch_size=4",
          "--decode_repeats=1",
          "--matmul_size=128",
          "--max_new_tokens=3",
          f"--output={out}",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out + ".md", encoding="utf-8") as f:
    md = f.read()
  for text in ("prefill MFU", "step / floor", "Projected full sweep", "| zero_shot |"):
    assert text in md, text
  with open(out + ".json", encoding="utf-8") as f:
    raw = json.load(f)
  assert raw["decode"]["zero_shot"]["batch"] == 4
  assert raw["setups"]["zero_shot"]["full"]["prompts"] == 4
  assert raw["lengths_source"] == written["source"]
  assert raw["scan_layers"] is True  # the CPU layout
  # Default buckets: the 8B flagfile's, so the section compiles what an 8B run compiles.
  from tools.bench import gpu

  with open(paths.REPO_ROOT / "configs" / "8b.flags", encoding="utf-8") as f:
    (line,) = [l for l in f if l.startswith("--length_buckets=")]
  assert raw["length_buckets"] == [int(x) for x in line.split("=")[1].split(",")]
  assert tuple(raw["length_buckets"]) == gpu.EIGHT_B_FLAGFILE_BUCKETS
  assert raw["projection"]["zero_shot"]["prompts"] == 53 * (743 + 1031 + 784) * 4
  assert not raw["projection_complete"]
  # The step arithmetic the report shows, from the measured times: (t(3) - t(1)) / 2 steps.
  d = raw["decode"]["zero_shot"]
  assert d["steps"] == 2
  assert d["step_seconds"] == pytest.approx((d["t_full"] - d["t_prefill_only"]) / 2)
  rate = raw["setups"]["zero_shot"]["full"]["prompts_per_s"]
  assert raw["projection"]["zero_shot"]["seconds"] == pytest.approx(
      raw["projection"]["zero_shot"]["prompts"] / rate
  )
  assert md == tables.render(raw)


def test_differing_answers_lists_each_prompt_once_with_every_system():
  group = lambda answers: {
      "key": "de/few_shot_mixed",
      "answers": answers,
      "names": [f"record {i}" for i in range(len(answers))],
  }
  results = {
      "a": {"groups": [group(["x", "y", "z"])]},
      "b": {"groups": [group(["x", "Y", "z"])]},
      "c": {"groups": [group(["x", "Y", "Z"])]},
      "d": {"groups": [group(["x", "y", "z"])]},
  }
  got = tables.differing_answers(results)
  assert [(d["index"], d["a"], d["systems"]) for d in got] == [
      (1, "y", {"b": "Y", "c": "Y"}),
      (2, "z", {"c": "Z"}),
  ]
  assert tables.differing_answers({k: v for k, v in results.items() if k != "a"}) == []


def test_hf_margins_worker_gaps_match_a_plain_forward(tiny_ckpt):
  """The worker's first-step gap equals the top-2 gap of HF's logits on the prompt alone, and its
  path is HF's greedy answer."""
  import numpy as np
  import torch

  from tools import reference_hf
  from tools.bench import worker

  text = 'New Fact: "The capital of France is Rome"\nQuestion: "Capital of France?" Answer: "'
  got = worker.run_hf_margins({"checkpoint": tiny_ckpt, "prompts": [text], "max_new_tokens": 6})[
      "prompts"
  ][0]
  model = reference_hf.load_hf_model(tiny_ckpt)
  ids = list(reference_hf.load_hf_tokenizer(tiny_ckpt)(text)["input_ids"])
  assert got["ids"] == reference_hf.reference_generate_ids(model, ids, 6)
  with torch.no_grad():
    top2 = np.sort(model(torch.tensor([ids])).logits[0, -1].float().numpy())[-2:]
  assert abs(got["gaps"][0] - float(top2[1] - top2[0])) < 1e-5
  assert got["min_gap"] == min(got["gaps"]) == got["gaps"][got["min_gap_step"]]


def test_decode_probe_runs_every_variant_on_a_toy_model(tmp_path):
  out = tmp_path / "probe.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "tools.decode_probe",
          "--model=tiny",
          "--dtype=float32",
          "--batch=4",
          "--slots=16",
          "--steps=2",
          "--repeats=1",
          f"--hlo_dir={tmp_path / 'hlo'}",
          f"--output={out}",
      ],
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
      check=False,
      cwd=paths.REPO_ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  raw = json.loads(out.read_text())
  assert set(raw["variants"]) == {
      "read_all_params",
      "layer_chain",
      "model_scanned",
      "model_unrolled",
  }
  assert all(v > 0 for v in raw["variants"].values())
  assert sorted(os.listdir(tmp_path / "hlo")) == ["model_scanned.hlo.txt", "model_unrolled.hlo.txt"]
  assert "model_unrolled" in proc.stdout


def _bench_option(tiny_ckpt, tmp_path, option, *extra):
  """tools.bench_stems on the sample, off and on side by side: (its table, its JSON)."""
  out = str(tmp_path / f"{option}.json")
  proc = run_tool(
      "tools.bench_stems",
      [
          f"--checkpoint={tiny_ckpt}",
          f"--data_dir={SAMPLE_DIR}",
          f"--option={option}",
          "--records=2" if option != "rest_packing" else "--records=3",
          "--langs=de,zh",
          "--setups=zero_shot",
          "--batch_size=8",
          "--passes=1",
          f"--out={out}",
          *extra,  # last: a flag given twice takes its last value
      ],
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(out, encoding="utf-8") as f:
    raw = json.load(f)
  assert f"| {option} |" in proc.stdout and raw["option"] == option
  off, on = raw["runs"]["False"], raw["runs"]["True"]
  assert raw["identical_answers"] is True
  counted = "scored_run_tokens" if option == "rest_packing" else "prompt_tokens"
  assert off["account"][counted] == on["account"][counted] > 0
  assert off["warm_compiles"] == on["warm_compiles"] == 0
  assert len(off["seconds"]) == len(on["seconds"]) == 1
  return off, on


def test_stems_bench_runs_both_engines_side_by_side(tiny_ckpt, tmp_path):
  off, on = _bench_option(tiny_ckpt, tmp_path, "stem_reuse")
  assert off["account"]["stem_tokens"] == 0
  assert on["account"]["prefill_tokens"] <= off["account"]["prefill_tokens"]


def test_stems_bench_compares_packing_too(tiny_ckpt, tmp_path):
  off, on = _bench_option(
      tiny_ckpt,
      tmp_path,
      "suffix_packing",
      "--length_buckets=64,128,256,512,1024",
      "--packed_length=128",
  )
  assert off["account"]["prefill_tokens"] == on["account"]["prefill_tokens"] > 0
  # zero-shot suffixes of ~20-40 tokens padded to 64 slots each, packed 3-5 to a 128-token row
  assert on["account"]["prefill_padded_tokens"] < off["account"]["prefill_padded_tokens"]


def test_stems_bench_compares_carried_decode_rows(tiny_ckpt, tmp_path):
  """--option=decode_carry: 8 prompts a group in 4 batches of 2 rows of one shape, 1 row carried
  (share 0.5): answers identical, each step runs 3 rows, the answers' lengths reported (the tiny
  checkpoint's answers end at their first token: the carry's own behaviour is tested in
  tests/test_engine_carry.py; here the tool's plumbing and account)."""
  off, on = _bench_option(
      tiny_ckpt,
      tmp_path,
      "decode_carry",
      "--batch_size=2",
      "--batch_shapes=fixed",
      "--length_buckets=128",
      "--decode_carry=0.5",
  )
  raw = json.loads((tmp_path / "decode_carry.json").read_text(encoding="utf-8"))
  assert raw["decode_carry"] == 0.5 and raw["batch_shapes"] == "fixed" and raw["answers"] == 16
  assert 0 < raw["mean_answer_tokens"] <= 15
  assert off["account"]["decode_row_steps"] == 2 * off["account"]["decode_steps"]
  assert on["account"]["decode_row_steps"] == 3 * on["account"]["decode_steps"]
  assert off["account"]["generated_tokens"] == on["account"]["generated_tokens"]


def test_stems_bench_compares_stems_as_packed_segments(tiny_ckpt, tmp_path):
  """--option=packed_stems: packing on both sides, record stems as segments on one."""
  off, on = _bench_option(
      tiny_ckpt,
      tmp_path,
      "packed_stems",
      "--length_buckets=64,128,256,512,1024",
      "--packed_length=128",
  )
  assert off["account"]["stem_tokens"] == 0 < on["account"]["stem_tokens"]
  assert on["account"]["prefill_tokens"] < off["account"]["prefill_tokens"]
  assert off["programs"] == on["programs"]


def test_stems_bench_compares_rest_packing(tiny_ckpt, tmp_path):
  """--option=rest_packing runs the runner's units (generation, then the likelihoods) with rest
  packing off and on: same rows, 1/PPL to float32 rounding, fewer scoring slots, the scoring
  calls timed apart (with it on, most scoring runs inside generate)."""
  off, on = _bench_option(
      tiny_ckpt, tmp_path, "rest_packing", "--dataset=counterfact", "--rest_row_length=64"
  )
  assert off["account"]["scored_sequences"] == on["account"]["scored_sequences"] > 0
  assert on["account"]["scoring_padded_tokens"] < off["account"]["scoring_padded_tokens"]
  assert 0 < off["scoring_seconds"][0] < off["seconds"][0]
  # on: the runner announces its sequences, whose packed rests are scored inside generate; the
  # scoring calls hold only what is left (here nothing to compute)
  assert 0 <= on["scoring_seconds"][0] < off["scoring_seconds"][0]
  with open(tmp_path / "rest_packing.json", encoding="utf-8") as f:
    assert json.load(f)["max_relative_inv_ppl_difference"] < 1e-4
