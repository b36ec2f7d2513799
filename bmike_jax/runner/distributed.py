"""Multi-host start-up: every host of a Cloud TPU pod (or multi-node GPU job) runs the same command.

All processes join one global mesh and run every unit in lockstep; each feeds its share of every
global batch (the engine builds global arrays from per-process batches). Process 0 writes, and
decides which units are finished (`finished_units`): the other processes' disks play no part.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
from absl import logging

from bmike_jax import paths
from bmike_jax.runner.store import OutputError, OutputStore
from bmike_jax.runner.units import Unit

# Environment variables that announce a multi-process job.
_MULTI_PROCESS_MARKERS = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _looks_multi_process() -> bool:
  if any(os.environ.get(k) for k in _MULTI_PROCESS_MARKERS):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def maybe_initialize(
    mode: str, coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
  """mode: 'true' always initialises, 'false' never, 'auto' when the environment (or an explicit
  coordinator address) says so. Without an address jax detects the cluster (TPU pod, SLURM, ...)."""
  explicit = bool(coordinator_address)
  if mode == "true" or (mode == "auto" and (explicit or _looks_multi_process())):
    if explicit:
      jax.distributed.initialize(
          coordinator_address=coordinator_address,
          num_processes=num_processes,
          process_id=process_id,
      )
    else:
      jax.distributed.initialize()
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def is_writer() -> bool:
  """Only one process writes the output directory."""
  return jax.process_index() == 0


def broadcast_json(obj):
  """Process 0's `obj` (any JSON value) on every process; the others' `obj` is ignored. One
  process: `obj` itself. Every process must call it (it is a collective)."""
  if jax.process_count() == 1:
    return obj
  import numpy as np
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8) if is_writer() else None
  size = int(
      multihost_utils.broadcast_one_to_all(
          np.array([0 if data is None else data.size], dtype=np.int64)
      )[0]
  )
  buffer = data if data is not None else np.zeros(size, dtype=np.uint8)
  received = np.asarray(multihost_utils.broadcast_one_to_all(buffer), dtype=np.uint8)
  return json.loads(received.tobytes().decode("utf-8"))


def finished_units(
    store: OutputStore, identity: dict, plan: Callable[[list[str]], list[Unit]]
) -> tuple[list[Unit], dict[Unit, dict]]:
  """Process 0 prepares the output directory (refusing other settings' results; store.prepare
  returns the weight-editing methods the folder holds), and reads which of `plan(held methods)`
  are finished, with their metrics; every process gets its answer (units, finished units), so
  all run the same units in lockstep however their own disks look. An error reaches every
  process (none waits in a collective for a process that stopped)."""
  answer = None
  if is_writer():
    try:
      held = store.prepare(identity)
      answer = {
          "held": held,
          "finished": [
              [i, store.load_metrics(u)] for i, u in enumerate(plan(held)) if store.is_finished(u)
          ],
      }
    except (OutputError, paths.PathError, OSError, ValueError) as e:  # ValueError: bad JSON
      answer = {
          "error": str(e)
          if isinstance(e, (OutputError, paths.PathError))
          else f"--output_dir {store.root!r}: cannot read the finished units ({e})"
      }
  answer = broadcast_json(answer)
  if "error" in answer:
    raise OutputError(answer["error"])
  units = plan(answer["held"])
  return units, {units[i]: metrics for i, metrics in answer["finished"]}


def writer_does(action, what: str) -> None:
  """Process 0 runs `action` (it writes the outputs); every process learns whether that worked, so
  a write error stops all of them at once, with the same message, instead of leaving the others
  waiting in the next collective for a process that has gone. `what` names what was written.
  Every process must call it (it is a collective); one process: `action()` with its error."""
  error = None
  if is_writer():
    try:
      action()
    except (OutputError, paths.PathError, OSError) as e:
      error = f"{what}: {e}"
  answer = broadcast_json({"error": error})
  if answer["error"]:
    raise OutputError(answer["error"])
