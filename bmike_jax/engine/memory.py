"""Device memory: what one device holds, and how many rows a batch of a given shape may take.

One rule for the engine (rows per batch, the kept prompt KV's bound) and the runner (the model
axis). Where the backend reports no memory (CPU) nothing is bounded: the batch size is taken as
given.

The row estimate is an upper bound of what one row of a `generate` program keeps live on one
device at its peak (the prefill of the suffix, one layer at a time; the decode loop holds less):

    KV cache      2 (K, V) x L x KVH/m x (S + Sb) x Dh x dtype bytes  (the row's S slots, plus the
                  Sb-slot copy kept for scoring that the program returns; packed suffix rows:
                  S more, a block's gathered rows beside the cache)
    scores        2 x H/m x Sb x (Pb + S) x 4        (float32 scores and probabilities of a layer)
    activations   Sb x (4 D + 3 F/m) x 4             (residual, norms, q/k/v/o; gate, up, product)
    logits        2 x V x 4                          (the last position's float32 logits)

with m the model axis (heads and F are split over it). Not measured against a GPU's allocator
yet (BENCHMARKS.md says so); the budget leaves a margin for what the estimate leaves out.

With scoring inside the generate program (packed rests), one block of rests runs after the
prefill beside all of it: `rest_block_bytes`, taken off the budget of every row together.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from bmike_jax.engine.sharding import MODEL

# --batch_size=auto: rows per batch where the backend is a CPU (compute-bound: small batches lose
# little) and elsewhere (a decode step reads every weight whatever the rows: as many as fit).
AUTO_BATCH_SIZE = {"cpu": 8, "accelerator": 256}

# Share of a device's memory the batch's rows may use, after the weights and the kept prompt KV.
ROW_MEMORY_SHARE = 0.7
# The kept prompt KV's default bound: this fraction of the mesh's memory (4 GiB where unknown).
KEPT_KV_SHARE = 0.2
KEPT_KV_UNKNOWN = 4 << 30


def auto_batch_size(platform: str) -> int:
  """--batch_size=auto (AUTO_BATCH_SIZE); the engine then lowers it per shape where memory says."""
  return AUTO_BATCH_SIZE["cpu" if platform == "cpu" else "accelerator"]


def device_memory_bytes(device) -> int | None:
  """What one device can hold (GPU / TPU); None where the backend does not say (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without memory stats raise)
    return None
  return (stats or {}).get("bytes_limit") or None


def mesh_memory_bytes(mesh) -> int | None:
  """The smallest device memory of the mesh, or None where any device does not say."""
  sizes = [device_memory_bytes(d) for d in mesh.devices.flat]
  return None if any(s is None for s in sizes) else min(sizes)


def weight_bytes(config, dtype) -> int:
  """The model's weights at `dtype` (a name or dtype), all devices together."""
  return config.num_params * jnp.dtype(dtype).itemsize


def device_bytes(tree) -> int:
  """Bytes of a pytree's arrays held on one device (the first shard of each; host arrays: 0)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shards = getattr(leaf, "addressable_shards", None)
    if shards:
      total += shards[0].data.nbytes
  return total


def kept_kv_budget(mesh) -> int:
  """KEPT_KV_SHARE of the mesh's memory (all devices together), else KEPT_KV_UNKNOWN."""
  per_device = mesh_memory_bytes(mesh)
  if per_device is None:
    return KEPT_KV_UNKNOWN
  return int(KEPT_KV_SHARE * per_device * mesh.devices.size)


def row_budget(mesh, *, weight_bytes: int, kept_kv_bytes: int) -> int | None:
  """Bytes one device may give the rows of a batch: ROW_MEMORY_SHARE of its memory less its share
  of the weights and of the kept prompt KV; None where memory is unknown (no bound)."""
  per_device = mesh_memory_bytes(mesh)
  if per_device is None:
    return None
  model = mesh.shape[MODEL]
  return int(
      ROW_MEMORY_SHARE * per_device - weight_bytes / model - kept_kv_bytes / mesh.devices.size
  )


def kv_slot_bytes(config, dtype_bytes: int, model_axis: int = 1) -> int:
  """Bytes of one row-slot of KV cache on one device: K and V of every layer (heads split over
  the model axis; model_axis=1: all devices together)."""
  kvh = max(config.num_kv_heads // model_axis, 1)
  return 2 * config.num_layers * kvh * config.head_dim * dtype_bytes


def row_bytes(
    config,
    dtype_bytes: int,
    *,
    prefix_bucket: int,
    suffix_bucket: int,
    slots: int,
    model_axis: int,
    packed: bool = False,
    carry_share: float = 0.0,
) -> int:
  """Upper estimate of one row's live bytes on one device (module docstring); packed: the packed
  prefill's rows (prefill.prefill_packed) hold S more slots (a block's gathered rows beside the
  cache; the block's own KV is within the Sb counted for the kept copy, made after it).
  carry_share: rows carried between decode batches (decode.decode_carrying), a share of the batch:
  the B + C rows' state is built beside the batch's own and the carried-in rows' (2 C rows of S
  slots more, per batch row 2 x share)."""
  heads = max(config.num_heads // model_axis, 1)
  kv = kv_slot_bytes(config, dtype_bytes, model_axis) * (
      slots * (2 if packed else 1) + suffix_bucket + math.ceil(2 * carry_share * slots)
  )
  scores = 2 * heads * suffix_bucket * (prefix_bucket + slots) * 4
  acts = suffix_bucket * (4 * config.hidden_size + 3 * config.intermediate_size // model_axis) * 4
  return kv + scores + acts + 2 * config.vocab_size * 4


def rest_block_bytes(
    config,
    dtype_bytes: int,
    *,
    prefix_bucket: int,
    kept_slots: int,
    tokens: int,
    row_length: int,
    model_axis: int,
) -> int:
  """Upper estimate of the live bytes on one device of one block of packed scoring rests
  (scoring.score_packed_rests), which a generate program with scoring inside runs after its
  prefill, beside the batch's cache and kept copy: `tokens` (R x Rb) rows' tokens attending the
  prefix (Pb), their rows' gathered kept slots (K x Sb = kept_slots) and their own row (Rb):

      scores        2 x H/m x tokens x (Pb + kept_slots + Rb) x 4
      gathered KV   kv_slot_bytes x (tokens / Rb) x kept_slots
      activations   tokens x (4 D + 3 F/m) x 4
      logits        2 x tokens x V x 4     (every token is scored: float32 logits, log-softmax)

  The same for every batch of a program's shape, so it is taken off the row budget once."""
  heads = max(config.num_heads // model_axis, 1)
  scores = 2 * heads * tokens * (prefix_bucket + kept_slots + row_length) * 4
  gathered = kv_slot_bytes(config, dtype_bytes, model_axis) * (tokens // row_length) * kept_slots
  acts = tokens * (4 * config.hidden_size + 3 * config.intermediate_size // model_axis) * 4
  return scores + gathered + acts + 2 * tokens * config.vocab_size * 4


def rows_that_fit(sizes: Sequence[int], per_row: int, budget: int | None, data_axis: int) -> int:
  """The largest of `sizes` (ascending global row counts, multiples of the data axis) whose rows
  on one device (size / data_axis) fit `budget`; the smallest when none does; the largest when
  the budget is unknown."""
  if budget is None:
    return sizes[-1]
  fitting = [s for s in sizes if s // data_axis * per_row <= budget]
  return fitting[-1] if fitting else sizes[0]
