"""gs:// end to end against a local GCS emulator (fake-gcs-server on 127.0.0.1): a run with its
data, checkpoint and outputs on gs:// killed with -9 and resumed equals a local run; a converted
checkpoint on gs:// restores bit-exact; report reads and writes a gs:// folder; each failure
(unknown scheme, no credentials, missing bucket, emulator down) is one clear error."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.gcs_emulator import gcs  # noqa: F401  (the session fixture)
from tests.test_runner import (
    _CACHE,
    BASE_FLAGS,
    SAMPLE_DIR,
    _expect_user_error,
    assert_same_results,
    assert_same_samples,
    full_run,
    load_results,
    load_samples,
    run_main,
    tiny_ckpt,
)  # noqa: F401  (fixtures)

pytest.importorskip("torch")


def _env(extra: dict[str, str]) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env.pop("BMIKE53_DIR", None)
  return env


def _main(flags: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
  """python -m bmike_jax.main, as test_runner.run_main, in the environment `env`."""
  return subprocess.run(
      [sys.executable, "-m", "bmike_jax.main", f"--compilation_cache_dir={_CACHE}", *flags],
      capture_output=True,
      text=True,
      env=env,
      timeout=600,
      **kwargs,
  )


def _flags_without(prefix: str) -> list[str]:
  return [f for f in BASE_FLAGS if not f.startswith(prefix)]


@pytest.fixture(scope="module")
def bucket(gcs):  # noqa: F811
  """A bucket holding the sample data and the tiny checkpoint converted there."""
  return gcs.make_bucket("bmike-test")


@pytest.fixture(scope="module")
def gcs_data(gcs, bucket):  # noqa: F811
  return gcs.upload_tree(SAMPLE_DIR, bucket[len("gs://") :], "data")


@pytest.fixture(scope="module")
def gcs_ckpt(gcs, bucket, tiny_ckpt):  # noqa: F811
  target = f"{bucket}/ckpt/tiny"
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.convert", f"--source={tiny_ckpt}", f"--output={target}"],
      capture_output=True,
      text=True,
      env=_env(gcs.env),
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return target


def test_converted_checkpoint_on_gcs_restores_bit_exact(gcs, gcs_ckpt, tiny_ckpt):  # noqa: F811
  names = gcs.names("bmike-test", "ckpt/tiny/")
  assert "ckpt/tiny/config.json" in names and "ckpt/tiny/tokenizer.json" in names
  assert any(n.startswith("ckpt/tiny/params/") for n in names)
  script = (
      "import sys, numpy as np, jax\n"
      "from bmike_jax import checkpoints\n"
      "_, a = checkpoints.load_model(sys.argv[1])\n"
      "_, b = checkpoints.load_model(sys.argv[2])\n"
      "la = jax.tree_util.tree_leaves_with_path(a)\n"
      "lb = jax.tree_util.tree_leaves_with_path(b)\n"
      "assert [p for p, _ in la] == [p for p, _ in lb]\n"
      "assert all(x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))\n"
      "           for (_, x), (_, y) in zip(la, lb)), 'restored params differ'\n"
      "print('leaves', len(la))\n"
  )
  proc = subprocess.run(
      [sys.executable, "-c", script, gcs_ckpt, tiny_ckpt],
      capture_output=True,
      text=True,
      env=_env(gcs.env),
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert int(proc.stdout.split()[-1]) > 0


def _finished_units(gcs, prefix):  # noqa: F811
  return [n for n in gcs.names("bmike-test", prefix) if n.endswith(".metrics.json")]


def test_run_on_gcs_killed_and_resumed_equals_a_local_run(
    gcs, gcs_data, gcs_ckpt, full_run  # noqa: F811
):
  """Data, checkpoint (restored onto the mesh) and outputs all on gs://."""
  ref_out, _ = full_run
  out = "gs://bmike-test/runs/killed"
  flags = _flags_without("--data_dir") + [
      f"--data_dir={gcs_data}",
      f"--checkpoint={gcs_ckpt}",
      f"--output_dir={out}",
  ]
  proc = subprocess.Popen(
      [sys.executable, "-m", "bmike_jax.main", f"--compilation_cache_dir={_CACHE}", *flags],
      env=_env(gcs.env),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
  )
  deadline = time.time() + 300
  finished = []
  while time.time() < deadline and proc.poll() is None:
    finished = _finished_units(gcs, "runs/killed/units/")
    if len(finished) >= 2:
      break
    time.sleep(0.1)
  assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-3000:]}"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  proc.stderr.close()
  assert 2 <= len(finished) < 8
  resumed = _main(flags, _env(gcs.env))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"8 units planned, [2-7] already finished", resumed.stderr), resumed.stderr
  results = json.loads(gcs.read("bmike-test", "runs/killed/results.json"))
  assert_same_results(results["results"], load_results(ref_out)["results"])
  samples = [
      json.loads(line)
      for line in gcs.read("bmike-test", "runs/killed/samples.jsonl").decode("utf-8").splitlines()
  ]
  assert_same_samples(samples, load_samples(ref_out))
  names = gcs.names("bmike-test", "runs/killed/")
  assert "runs/killed/tokenizer/tokenizer.json" in names
  assert not any(n.rsplit("/", 1)[-1].startswith(".") for n in names)  # no temporaries uploaded


def test_report_reads_and_writes_a_gcs_folder(gcs, bucket, full_run):  # noqa: F811
  ref_out, _ = full_run
  for name in (
      "results.json",
      "samples.jsonl",
      "tokenizer/tokenizer.json",
      "tokenizer/tokenizer_config.json",
  ):
    with open(os.path.join(ref_out, name), "rb") as f:
      gcs.upload("bmike-test", f"fetched/{name}", f.read())
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.report", "--results_dir=gs://bmike-test/fetched"],
      capture_output=True,
      text=True,
      env=_env(dict(gcs.env, MPLBACKEND="Agg")),
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = gcs.names("bmike-test", "fetched/")
  assert "fetched/report.md" in names
  assert any(n.startswith("fetched/figures/") and n.endswith(".png") for n in names)
  report = gcs.read("bmike-test", "fetched/report.md").decode("utf-8")
  assert "](figures/" in report
  assert report.startswith("# BMIKE-53 report: `gs://bmike-test/fetched`")  # not the temp folder

  # --tokenizer on gs:// too (read through the same path layer as the run's saved one)
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "bmike_jax.report",
          "--results_dir=gs://bmike-test/fetched",
          "--tokenizer=gs://bmike-test/fetched/tokenizer",
      ],
      capture_output=True,
      text=True,
      env=_env(dict(gcs.env, MPLBACKEND="Agg")),
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = gcs.read("bmike-test", "fetched/report.md").decode("utf-8")
  assert "- tokenizer for re-scoring: `gs://bmike-test/fetched/tokenizer`" in report


@pytest.mark.parametrize(
    "flag",
    [
        "--output_dir=foo://bucket/run",
        "--output_dir=s3://b/run",
        "--data_dir=foo://bucket/data",
        "--checkpoint=s3://b/ckpt",
    ],
)
def test_unknown_scheme_is_one_clear_error(flag, tmp_path):
  name = flag.split("=")[0]
  flags = [f for f in BASE_FLAGS if not f.startswith(name + "=")]
  if name != "--output_dir":
    flags.append(f"--output_dir={tmp_path}/o")
  proc = run_main(flags + [flag], cwd=str(tmp_path))
  _expect_user_error(proc, name, "unsupported scheme")
  assert not any(p.name.endswith(":") for p in tmp_path.iterdir())  # no ./foo: folder


def test_convert_to_unknown_scheme_is_one_clear_error(tiny_ckpt, tmp_path):  # noqa: F811
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.convert", f"--source={tiny_ckpt}", "--output=foo://b/c"],
      capture_output=True,
      text=True,
      env=_env({}),
      cwd=str(tmp_path),
      timeout=600,
  )
  assert proc.returncode == 2 and "--output" in proc.stderr and "unsupported scheme" in proc.stderr
  assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "foo:")


def test_missing_bucket(gcs, tmp_path):  # noqa: F811
  proc = _main(BASE_FLAGS + ["--output_dir=gs://no-such-bucket/run"], _env(gcs.env))
  _expect_user_error(proc, "--output_dir", "gs://no-such-bucket", "does not exist")


def test_emulator_down(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed once the block ends: nothing listens there
  env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
  proc = _main(BASE_FLAGS + ["--output_dir=gs://bucket/run"], _env(env))
  _expect_user_error(proc, "--output_dir", "not reachable", "STORAGE_EMULATOR_HOST")


def test_no_credentials(tmp_path):
  env = _env(
      {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "True"}
  )
  for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
    env.pop(name, None)
  proc = _main(BASE_FLAGS + ["--output_dir=gs://bucket/run"], env)
  _expect_user_error(proc, "--output_dir", "no Google Cloud credentials")


def test_checkpoint_other_than_converted_on_gcs_is_refused(gcs, bucket, tmp_path):  # noqa: F811
  gcs.upload("bmike-test", "raw/model.gguf", b"GGUF")
  proc = _main(
      BASE_FLAGS + ["--checkpoint=gs://bmike-test/raw/model.gguf", f"--output_dir={tmp_path}/o"],
      _env(gcs.env),
  )
  _expect_user_error(proc, "gs://bmike-test/raw/model.gguf", "converted")


@pytest.fixture
def emulated(gcs, monkeypatch):  # noqa: F811
  """This process's gcsfs pointed at the emulator (fresh client; none cached before or after)."""
  import gcsfs

  for name, value in gcs.env.items():
    monkeypatch.setenv(name, value)
  gcsfs.GCSFileSystem.clear_instance_cache()
  yield gcs
  gcsfs.GCSFileSystem.clear_instance_cache()


def test_path_layer_on_the_emulator(emulated, bucket, tmp_path):
  from bmike_jax import paths

  root = f"{bucket}/layer"
  target = paths.join(root, "a", "b.json")
  assert target == "gs://bmike-test/layer/a/b.json"
  paths.write_text(target, "old\n")
  with pytest.raises(RuntimeError):
    with paths.atomic_writer(target) as f:
      f.write("half of the new")
      raise RuntimeError("killed mid-write")
  assert paths.read_text(target) == "old\n"  # an interrupted write leaves the old object
  assert emulated.read("bmike-test", "layer/a/b.json") == b"old\n"
  paths.write_text(target, "new\n")
  assert paths.read_text(target) == "new\n" and paths.isfile(target)
  assert paths.isdir(paths.join(root, "a")) and paths.listdir(root) == ["a"]
  assert not paths.exists(paths.join(root, "absent"))
  local = paths.local_copy(paths.join(root, "a"))
  assert os.listdir(local) == ["b.json"]
  paths.copy_file(os.path.join(local, "b.json"), paths.join(root, "c.json"))
  assert emulated.read("bmike-test", "layer/c.json") == b"new\n"
  paths.remove(paths.join(root, "c.json"))
  assert "layer/c.json" not in emulated.names("bmike-test", "layer/")


@pytest.mark.parametrize(
    "path, scheme",
    [
        ("gs://b/x", "gs"),
        ("/tmp/x", None),
        ("x/y", None),
        ("S3://b/x", "s3"),
        ("foo://b", "foo"),
        ("C:/x", None),
    ],
)
def test_schemes(path, scheme):
  from bmike_jax import paths

  assert paths.scheme(path) == scheme
  if scheme not in (None, "gs"):
    with pytest.raises(paths.PathError, match="--output_dir.*unsupported scheme"):
      paths.check(path, flag="output_dir")
  else:
    paths.check(path, flag="output_dir")
