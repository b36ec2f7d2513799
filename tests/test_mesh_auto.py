"""--mesh_model=auto: the model axis from the device count and memory (Llama-3.1-8B's real shape)."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from bmike_jax.engine import memory as engine_memory
from bmike_jax.runner import model_setup
from bmike_jax.runner.run_config import FlagError, _auto_or_positive
from tools.bench import gpu as gpu_bench

GIB = 1 << 30
LLAMA_31_8B = gpu_bench.llama31_8b_config()  # the one 8B shape the GPU benchmark uses too


@dataclasses.dataclass
class Chip:
  """A device as the runner sees it: what `memory_stats()` reports (GPU / TPU backends)."""

  bytes_limit: int | None

  def memory_stats(self):
    return None if self.bytes_limit is None else {"bytes_limit": self.bytes_limit}


@pytest.mark.parametrize(
    "devices, dtype, want",
    [
        ([Chip(80 * GIB)], "bfloat16", 1),  # one H100: 16 GB of weights fit in 40
        ([Chip(80 * GIB)], "float32", 1),  # 32 GB in 40
        ([Chip(16 * GIB)] * 8, "bfloat16", 2),  # TPU v5e-8: 8 GB per chip in 8 GiB
        ([Chip(16 * GIB)] * 8, "float32", 4),  # 8 GB per chip
        ([Chip(32 * GIB)] * 4, "bfloat16", 1),  # v4-8 (32 GiB chips)
        ([Chip(16 * GIB)] * 6, "float32", 2),  # 6 chips: m must divide 6 and the 8 KV heads
        ([Chip(None)] * 4, "float32", 1),  # CPU: memory unknown
    ],
)
def test_choose_model_axis(devices, dtype, want):
  assert model_setup.choose_model_axis(LLAMA_31_8B, dtype, devices) == want
  assert LLAMA_31_8B.num_params == 8_030_261_248  # the real 8B's count


def test_real_cpu_devices_choose_one():
  assert engine_memory.device_memory_bytes(jax.devices()[0]) is None
  assert model_setup.choose_model_axis(LLAMA_31_8B, "bfloat16", jax.devices()) == 1


def test_flag_values():
  assert _auto_or_positive("mesh_model", "auto") is None
  assert _auto_or_positive("mesh_model", "4") == 4
  for bad in ("0", "-2", "four"):
    with pytest.raises(FlagError, match="--mesh_model"):
      _auto_or_positive("mesh_model", bad)
