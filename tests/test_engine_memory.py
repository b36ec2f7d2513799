"""engine/memory.py: rows per batch from device memory, on Llama-3.1-8B's real shape and devices
as the backends report them (GPU / TPU: `memory_stats()["bytes_limit"]`; CPU: nothing)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from bmike_jax.engine import layout, memory
from bmike_jax.engine.buckets import batch_buckets
from tools.bench import gpu as gpu_bench

GIB = 1 << 30
LLAMA_31_8B = gpu_bench.llama31_8b_config()


@dataclasses.dataclass
class Chip:
  bytes_limit: int | None

  def memory_stats(self):
    return None if self.bytes_limit is None else {"bytes_limit": self.bytes_limit}


@dataclasses.dataclass
class FakeMesh:
  """What memory.py reads of a mesh: its devices and its axis sizes."""

  devices: np.ndarray
  shape: dict


def _rows(mesh, pb, sb, new_tokens=15, batch=256):
  budget = memory.row_budget(
      mesh,
      weight_bytes=LLAMA_31_8B.num_params * 2,
      kept_kv_bytes=memory.kept_kv_budget(mesh),
  )
  per_row = memory.row_bytes(
      LLAMA_31_8B,
      2,
      prefix_bucket=pb,
      suffix_bucket=sb,
      slots=layout.cache_length(sb, new_tokens),
      model_axis=mesh.shape["model"],
  )
  rows = memory.rows_that_fit(batch_buckets(batch), per_row, budget, mesh.shape["data"])
  return rows, per_row, budget


def test_one_80gb_gpu_runs_256_short_rows_and_fewer_long_ones():
  h100 = FakeMesh(np.array([Chip(80 * GIB)]), {"data": 1, "model": 1})
  short, per_short, budget = _rows(h100, pb=512, sb=64)
  long_, per_long, _ = _rows(h100, pb=2048, sb=512)
  assert short == 256 and short * per_short <= budget
  assert long_ < 256 and long_ * per_long <= budget < 2 * long_ * per_long
  # The float32 attention scores dominate a long row: 2 x 32 heads x 512 x (2048 + 528) x 4 bytes.
  scores = 2 * LLAMA_31_8B.num_heads * 512 * (2048 + layout.cache_length(512, 15)) * 4
  assert scores > per_long / 2


def test_scoring_inside_generate_still_leaves_256_short_rows_on_an_80gb_gpu():
  """configs/8b.flags' shapes: a block of packed rests (Rb 128, ~2,048 tokens, K x Sb kept slots)
  scored inside a generate program of Pb 2048 is a few GB, its float32 logits the largest part (every token
  is scored over the 128k vocabulary); 256 rows of short suffixes still fit beside it."""
  h100 = FakeMesh(np.array([Chip(80 * GIB)]), {"data": 1, "model": 1})
  sb, rb = 64, 128
  block = memory.rest_block_bytes(
      LLAMA_31_8B,
      2,
      prefix_bucket=2048,
      kept_slots=layout.rest_row_sources(rb, sb) * sb,
      tokens=2048,
      row_length=rb,
      model_axis=1,
  )
  logits = 2 * 2048 * LLAMA_31_8B.vocab_size * 4
  assert logits < block < 8 * GIB
  _, per_row, budget = _rows(h100, pb=2048, sb=sb)
  assert 256 * per_row <= budget - block


def test_a_model_axis_splits_heads_and_a_data_axis_rows():
  v5e8 = FakeMesh(np.array([Chip(16 * GIB)] * 8), {"data": 4, "model": 2})
  rows, per_row, budget = _rows(v5e8, pb=512, sb=64)
  assert rows % 4 == 0 and rows // 4 * per_row <= budget  # rows split over the 4 data devices
  one_chip = FakeMesh(np.array([Chip(16 * GIB)]), {"data": 1, "model": 1})
  assert memory.row_budget(one_chip, weight_bytes=LLAMA_31_8B.num_params * 2, kept_kv_bytes=0) < 0
  # 16 GB of bf16 weights do not leave room on one 16 GiB chip: the smallest size, not an error
  # here (the weights' own placement fails first, with its own message)
  assert _rows(one_chip, pb=512, sb=64)[0] == 1


def test_cpu_reports_no_memory_so_nothing_is_bounded():
  cpu = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
  assert memory.mesh_memory_bytes(cpu) is None
  assert memory.row_budget(cpu, weight_bytes=1, kept_kv_bytes=0) is None
  assert memory.kept_kv_budget(cpu) == memory.KEPT_KV_UNKNOWN
  assert memory.rows_that_fit((1, 2, 4, 8), 10**12, None, 1) == 8
  assert memory.auto_batch_size("cpu") == 8 and memory.auto_batch_size("gpu") == 256
