"""A pod in miniature for the tests: two CPU processes of `bmike_jax.main` joined by
jax.distributed on loopback, one device each."""

from __future__ import annotations

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
  """(stdout, stderr) of each process once both have ended; both are killed if either outlasts
  `timeout` seconds (or the wait fails), so no test leaves a process behind."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
