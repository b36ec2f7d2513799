"""What users reach first: `--help` lists the runner's flags, console scripts, a Hugging Face hub
id as --checkpoint (local cache only), the tokenizer saved in the output folder for `report`,
and prompts cut by --overlong=truncate_left marked in samples.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.test_runner import (
    BASE_FLAGS,
    _expect_user_error,
    full_run,
    load_samples,
    run_main,
    tiny_ckpt,
)  # noqa: F401  (fixtures)

pytest.importorskip("torch")

SMALL = ["--datasets=zsre", "--langs=de", "--setups=zero_shot", "--limit=1"]


def _small_flags(*extra: str) -> list[str]:
  keep = [
      f for f in BASE_FLAGS if not f.startswith(("--datasets", "--langs", "--setups", "--limit"))
  ]
  return keep + SMALL + list(extra)


def test_main_help_lists_the_runner_flags():
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.main", "--help"],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl's --help exits with 1
  for flag in ("--output_dir", "--checkpoint", "--data_dir", "--overlong", "--coordinator_address"):
    assert flag in proc.stdout, flag


def test_setup_declares_the_console_scripts():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "setup.py"), encoding="utf-8") as f:
    text = f.read()
  for script, target in (
      ("bmike-jax-run", "bmike_jax.main:entry"),
      ("bmike-jax-report", "bmike_jax.report:entry"),
      ("bmike-jax-convert", "bmike_jax.convert:entry"),
  ):
    assert f"{script}={target}" in text
    module, function = target.split(":")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.argv = ['{script}', "
            f"'--helpfull']; from {module} import {function}; {function}()",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1) and "--" in proc.stdout, (script, proc.stderr[-2000:])


def _fake_hf_cache(root, repo_id: str, files_from: str) -> str:
  """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/HASH/...}."""
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
  os.makedirs(os.path.join(repo, "refs"))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(commit)
  shutil.copytree(files_from, os.path.join(repo, "snapshots", commit))
  return os.path.join(repo, "snapshots", commit)


def _run_with_hub_cache(tmp_path, *flags) -> subprocess.CompletedProcess:
  """The runner with the small flags plus `flags`, offline, its HF cache at tmp_path/hub."""
  env = dict(
      os.environ, JAX_PLATFORMS="cpu", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1"
  )
  env.pop("BMIKE53_DIR", None)
  return subprocess.run(
      [sys.executable, "-m", "bmike_jax.main", "--compilation_cache_dir=", *_small_flags(*flags)],
      capture_output=True,
      text=True,
      env=env,
      cwd=str(tmp_path),
      timeout=600,
  )


def test_checkpoint_as_a_hub_id_from_the_local_cache(tiny_ckpt, tmp_path):  # noqa: F811
  snapshot = _fake_hf_cache(str(tmp_path / "hub"), "tiny-org/tiny-llama", tiny_ckpt)
  out = tmp_path / "o"
  proc = _run_with_hub_cache(tmp_path, "--checkpoint=tiny-org/tiny-llama", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "results.json", encoding="utf-8") as f:
    assert os.path.samefile(json.load(f)["model"]["checkpoint"], snapshot)


def test_hub_id_not_in_the_cache_is_one_clear_error(tmp_path):
  os.makedirs(tmp_path / "hub")
  proc = _run_with_hub_cache(tmp_path, "--checkpoint=tiny-org/absent", f"--output_dir={tmp_path}/o")
  _expect_user_error(proc, "--checkpoint=tiny-org/absent", "local cache", "never downloads")


def test_report_works_on_a_fetched_folder_without_the_checkpoint(full_run, tmp_path):  # noqa: F811
  """results.json names a tokenizer path that no longer exists: the saved copy is used."""
  out, _ = full_run
  fetched = tmp_path / "fetched"
  fetched.mkdir()
  for name in ("samples.jsonl", "tokenizer"):
    (shutil.copytree if name == "tokenizer" else shutil.copy)(
        os.path.join(out, name), fetched / name
    )
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  results["model"]["tokenizer"] = str(tmp_path / "gone")
  (fetched / "results.json").write_text(json.dumps(results), encoding="utf-8")
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", f"--results_dir={fetched}"],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (fetched / "report.md").read_text(encoding="utf-8")
  assert "cells, all identical" in report  # re-scored with the saved tokenizer


def test_truncated_prompts_are_marked_in_samples(tiny_ckpt, tmp_path):  # noqa: F811
  """8-shot prompts do not fit 128 tokens and are cut; zero-shot ones fit whole."""
  out = str(tmp_path / "o")
  flags = [f for f in _small_flags() if not f.startswith(("--length_buckets", "--setups"))]
  proc = run_main(
      flags
      + [
          "--length_buckets=128",
          "--overlong=truncate_left",
          "--setups=zero_shot,few_shot_specific",
          "--likelihood=false",
          f"--checkpoint={tiny_ckpt}",
          f"--output_dir={out}",
      ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = load_samples(out)
  assert {r["setup"] for r in rows} == {"zero_shot", "few_shot_specific"}
  for r in rows:
    if r["setup"] == "zero_shot":
      assert r["truncated_tokens"] == 0
    else:
      assert r["truncated_tokens"] > 0
