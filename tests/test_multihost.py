"""Multi-host resume: two CPU processes joined by jax.distributed, each with its own output disk
(process 1's folder stays empty, as on a pod worker whose disk holds nothing), killed mid-run
and restarted. Process 0 decides which units are finished and tells the other: both run the
same units, nothing hangs, nothing finished is recomputed, and the results equal a local run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests import two_processes
from tests.test_runner import (
    BASE_FLAGS,
    assert_same_results,
    assert_same_samples,
    full_run,
    load_results,
    load_samples,
    tiny_ckpt,
)  # noqa: F401  (fixtures)

pytest.importorskip("torch")


def _start_pair(tiny_ckpt, outs):  # noqa: F811
  return two_processes.start_pair([*BASE_FLAGS, f"--checkpoint={tiny_ckpt}"], outs)


def _metrics_files(out):
  return {
      os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
      for d, _, fs in os.walk(os.path.join(out, "units"))
      for f in fs
      if f.endswith(".metrics.json") and not f.startswith(".")  # not a temporary left by kill
  }


def test_two_hosts_on_separate_disks_killed_and_restarted(  # noqa: F811
    full_run, tiny_ckpt, tmp_path
):
  outs = [str(tmp_path / "host0"), str(tmp_path / "host1")]
  procs = _start_pair(tiny_ckpt, outs)
  deadline = time.time() + 400
  finished = {}
  while time.time() < deadline and all(p.poll() is None for p in procs):
    finished = _metrics_files(outs[0])
    if len(finished) >= 2:
      break
    time.sleep(0.05)
  alive = all(p.poll() is None for p in procs)
  for p in procs:
    if p.poll() is None:
      os.kill(p.pid, signal.SIGKILL)
    p.communicate()
  assert alive, "a process ended before the pair could be killed"
  finished = _metrics_files(outs[0])  # what the kill left (a unit may have finished meanwhile)
  assert 2 <= len(finished) < 8
  assert not os.path.exists(os.path.join(outs[1], "units"))  # process 1 writes nothing

  procs = _start_pair(tiny_ckpt, outs)
  logs = two_processes.wait_pair(procs, timeout=600)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  for _, err in logs:  # both processes agree on the work left: process 0's disk decides
    assert re.search(rf"8 units planned, {len(finished)} already finished", err), err[-3000:]
  after = _metrics_files(outs[0])
  assert len(after) == 8
  assert {k: after[k] for k in finished} == finished  # finished units were not written again
  ref_out, _ = full_run
  assert_same_results(load_results(outs[0])["results"], load_results(ref_out)["results"])
  assert_same_samples(load_samples(outs[0]), load_samples(ref_out))
  assert not os.path.exists(os.path.join(outs[1], "results.json"))


def test_a_write_error_on_process_0_stops_both_with_one_message(tiny_ckpt, tmp_path):  # noqa: F811
  """Process 0 cannot write its first unit (its `units` folder is a file): both processes stop
  with the same clear error and exit 2; process 1 does not wait for a partner that has gone."""
  outs = [str(tmp_path / "host0"), str(tmp_path / "host1")]
  os.makedirs(outs[0])
  with open(os.path.join(outs[0], "units"), "w") as f:
    f.write("not a folder")
  procs = _start_pair(tiny_ckpt, outs)
  logs = two_processes.wait_pair(procs, timeout=400)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message and "cannot write unit" in message[-1] and outs[0] in message[-1], err[-3000:]


def test_two_hosts_with_weight_edits_equal_one_host(tiny_ckpt, tmp_path):  # noqa: F811
  """Weight edits on a pod in miniature: both processes make the same edits and read every edited
  model's answers with the engine over the two-device mesh in lockstep; the results and samples
  equal a one-process run's. The engine runs the accelerators' per-layer layout (unrolled layers),
  so the edits (FT-L's one layer, LoRA's every layer) are applied to per-layer params."""
  from tests.test_runner import run_main
  from tests.test_runner_methods import FLAGS, assert_close

  flags = [
      *FLAGS,
      f"--checkpoint={tiny_ckpt}",
      "--limit=1",
      "--methods=ike,ft,lora",
      "--lora_hparams=steps=3",
      "--scan_layers=false",
  ]
  local = str(tmp_path / "local")
  proc = run_main(flags + [f"--output_dir={local}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  outs = [str(tmp_path / "host0"), str(tmp_path / "host1")]
  procs = two_processes.start_pair(flags, outs)
  logs = two_processes.wait_pair(procs, timeout=600)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  assert_close(load_results(outs[0])["results_by_method"], load_results(local)["results_by_method"])
  assert_close(load_samples(outs[0]), load_samples(local))
  assert not os.path.exists(os.path.join(outs[1], "results.json"))
