"""Multi-host start-up: every host of a Cloud TPU pod (or multi-node GPU job) runs the same command.

All processes join one global mesh and run every unit in lockstep; each feeds its share of every
global batch (the engine builds global arrays from per-process batches). Process 0 writes.
"""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables that announce a multi-process job.
_MULTI_PROCESS_MARKERS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _looks_multi_process() -> bool:
  if any(os.environ.get(k) for k in _MULTI_PROCESS_MARKERS):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def maybe_initialize(mode: str, coordinator_address: str = "", num_processes: int = 0,
                     process_id: int = -1) -> None:
  """mode: 'true' always initialises, 'false' never, 'auto' when the environment (or an explicit
  coordinator address) says so. Without an address jax detects the cluster (TPU pod, SLURM, ...)."""
  explicit = bool(coordinator_address)
  if mode == "true" or (mode == "auto" and (explicit or _looks_multi_process())):
    if explicit:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id)
    else:
      jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def is_writer() -> bool:
  """Only one process writes the output directory."""
  return jax.process_index() == 0
