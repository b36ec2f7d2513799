"""A pod in miniature for the tests: two CPU processes of `bmike_jax.main` joined by
jax.distributed on loopback, one device each."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys


def start_pair(flags, output_dirs) -> list[subprocess.Popen]:
  """Starts process 0 and 1 with the runner `flags` plus their own --output_dir (output_dirs[i];
  the same folder twice for a shared disk). Their stdout / stderr are pipes."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("BMIKE53_DIR", None)
  env.pop("XLA_FLAGS", None)
  return [
      subprocess.Popen(
          [
              sys.executable,
              "-m",
              "bmike_jax.main",
              "--compilation_cache_dir=",
              *flags,
              f"--output_dir={output_dirs[i]}",
              "--distributed=true",
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2",
              f"--process_id={i}",
          ],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in (0, 1)
  ]


def wait_pair(procs, timeout: float) -> list[tuple[str, str]]:
  """(stdout, stderr) of each process once both have ended. Both pipes of both processes are read
  at once (a process blocked on a full pipe would stall its partner's collectives), under one
  deadline: at `timeout` seconds the ones still running are killed and the wait fails."""
  with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
    futures = [pool.submit(p.communicate) for p in procs]
    done, _ = concurrent.futures.wait(futures, timeout=timeout)
    if len(done) < len(futures):
      for p in procs:
        if p.poll() is None:
          p.kill()
      raise subprocess.TimeoutExpired([str(p.args) for p in procs], timeout)
    return [f.result() for f in futures]
