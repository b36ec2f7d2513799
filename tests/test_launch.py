"""launch/tpu_pod.sh and launch/gpu.sh in --dry-run: the exact command lines they would run
(parsed back with shlex), for a v5e-8 and a v4-16 slice, one GPU node and two; and the install
contract (README's test command is what CI runs)."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(script: str, step: str, **env: str) -> list[list[str]]:
  clean = {
      k: v
      for k, v in os.environ.items()
      if k
      not in (
          "TPU_NAME",
          "ZONE",
          "BUCKET",
          "PROJECT",
          "ACCELERATOR",
          "RUNTIME",
          "SPOT",
          "NODES",
          "DATA",
          "CKPT",
          "OUTPUT",
          "HF_SOURCE",
          "EXTRA_FLAGS",
          "FLAGFILE",
          "MESH_MODEL",
          "DATA_SRC",
          "QUEUED_RESOURCE",
          "REMOTE_DIR",
          "PORT",
      )
  }
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", script), "--dry-run", step],
      capture_output=True,
      text=True,
      env={**clean, **env},
      timeout=60,
  )
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


TPU = {"TPU_NAME": "bm", "ZONE": "us-west4-a", "BUCKET": "gs://bkt", "HF_SOURCE": "/hf/llama"}


@pytest.mark.parametrize(
    "accelerator, runtime",
    [("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v4-16", "tpu-ubuntu2204-base")],
)
def test_tpu_pod_command_lines(accelerator, runtime):
  env = dict(TPU, ACCELERATOR=accelerator)
  assert _dry_run("tpu_pod.sh", "create", **env, SPOT="1") == [
      [
          "gcloud",
          "compute",
          "tpus",
          "queued-resources",
          "create",
          "bm-qr",
          "--node-id=bm",
          "--zone=us-west4-a",
          f"--accelerator-type={accelerator}",
          f"--runtime-version={runtime}",
          "--spot",
      ]
  ]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bm", "--zone=us-west4-a"]
  assert _dry_run("tpu_pod.sh", "install", **env) == [
      ssh + ["--worker=all", "--command=cd bmike-jax && bash launch/install.sh tpu"]
  ]
  # The checkpoint is converted once, on worker 0, straight to gs://.
  assert _dry_run("tpu_pod.sh", "convert", **env) == [
      ssh
      + [
          "--worker=0",
          "--command=cd bmike-jax && .venv/bin/python -m bmike_jax.convert "
          "--source=/hf/llama --output=gs://bkt/checkpoints/llama-3.1-8b --dtype=bfloat16",
      ]
  ]
  # Every worker reads data and checkpoint from gs://; process 0 writes the gs:// output.
  assert _dry_run("tpu_pod.sh", "run", **env) == [
      ssh
      + [
          "--worker=all",
          "--command=cd bmike-jax && .venv/bin/python -m bmike_jax.main "
          "--flagfile=configs/8b.flags --data_dir=gs://bkt/bmike53 "
          "--checkpoint=gs://bkt/checkpoints/llama-3.1-8b --output_dir=gs://bkt/runs/8b "
          "--distributed=true --progress=false",
      ]
  ]
  code = _dry_run("tpu_pod.sh", "code", **env)
  assert code[1] == ["gcloud", "storage", "cp", "/tmp/bmike-jax-code.tgz", "gs://bkt/code.tgz"]
  assert "gcloud storage cp gs://bkt/code.tgz" in code[2][-1]
  assert not any("scp" in word for line in code for word in line)
  assert _dry_run("tpu_pod.sh", "data", **env, DATA_SRC="/data/BMIKE53") == [
      ["gcloud", "storage", "cp", "-r", "/data/BMIKE53/*", "gs://bkt/bmike53/"]
  ]
  assert _dry_run("tpu_pod.sh", "report", **env) == [
      [".venv/bin/python", "-m", "bmike_jax.report", "--results_dir=gs://bkt/runs/8b"]
  ]
  assert _dry_run("tpu_pod.sh", "delete", **env) == [
      [
          "gcloud",
          "compute",
          "tpus",
          "queued-resources",
          "delete",
          "bm-qr",
          "--zone=us-west4-a",
          "--force",
          "--quiet",
      ]
  ]


def test_tpu_pod_refuses_a_local_bucket():
  proc = subprocess.run(
      ["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), "--dry-run", "run"],
      capture_output=True,
      text=True,
      timeout=60,
      env=dict(os.environ, **dict(TPU, BUCKET="/local/folder")),
  )
  assert proc.returncode == 2 and "gs://" in proc.stderr


def test_gpu_one_node_and_two_nodes():
  paths = {"DATA": "gs://bkt/bmike53", "CKPT": "gs://bkt/ckpt", "OUTPUT": "gs://bkt/runs/8b"}
  flags = [
      "--flagfile=configs/8b.flags",
      "--data_dir=gs://bkt/bmike53",
      "--checkpoint=gs://bkt/ckpt",
      "--output_dir=gs://bkt/runs/8b",
  ]
  assert _dry_run("gpu.sh", "run", **paths) == [
      [".venv/bin/python", "-m", "bmike_jax.main", *flags]
  ]
  lines = _dry_run("gpu.sh", "run", **paths, NODES="me@gpu0,gpu1")
  assert [line[:2] for line in lines] == [["ssh", "me@gpu0"], ["ssh", "gpu1"]]
  for i, line in enumerate(lines):
    assert shlex.split(line[2]) == [
        "cd",
        "bmike-jax",
        "&&",
        ".venv/bin/python",
        "-m",
        "bmike_jax.main",
        *flags,
        "--progress=false",
        "--coordinator_address=gpu0:12355",
        "--num_processes=2",
        f"--process_id={i}",
    ]
  assert _dry_run(
      "gpu.sh", "convert", HF_SOURCE="/hf/llama", CKPT="gs://bkt/ckpt", NODES="gpu0,gpu1"
  ) == [
      [
          "ssh",
          "gpu0",
          "cd bmike-jax && .venv/bin/python -m bmike_jax.convert "
          "--source=/hf/llama --output=gs://bkt/ckpt --dtype=bfloat16",
      ]
  ]


def test_readme_test_command_is_what_ci_runs():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = [
        line for line in f.read().splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ]
  assert ci == ["bash launch/install.sh dev && .venv/bin/python -m pytest -q tests"]
  assert f"\n{ci[0]}\n" in readme
  assert "bash launch/install.sh cpu && .venv/bin/python -m bmike_jax.main" in readme
