"""--edit_batch_size=auto: how many edits one vmapped optimisation takes, from device memory.

Where the backend reports its memory (GPU / TPU), the method's batched program is compiled, not
run, at 1 and 2 edits, at the padded shapes of the longest request of the run (every batch pads
to its own longest, so no batch needs more), and XLA's own account of it (`memory_analysis`, per
device: temporaries, outputs, and the arguments other than the params, which are already held)
gives a fixed part and a part per edit. The largest of EDIT_BATCH_SIZES whose bytes that line
puts within the budget is compiled once more to check it, and the next size down is tried while
it does not fit. The budget is engine/memory.row_budget's share of the device less the engine's
weights, less what the caller holds besides (the Editor's float32 copy): the same rule as the
engine's rows. Where the backend reports no memory (CPU) the size is CPU_EDIT_BATCH_SIZE, the
fixed 8 of earlier runs.

What triggers a compile: each probe is one compile of the method's program at its shapes (two or
three per method and dataset, on accelerators only); the edits then compile their own shapes as
before.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from bmike_jax.editing import methods
from bmike_jax.editing.request import EditRequest
from bmike_jax.model.config import LlamaConfig

EDIT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
CPU_EDIT_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class EditMemory:
  """Bytes one device needs for a batch of edits, beside the params: fixed + per_edit x edits."""

  fixed_bytes: int
  per_edit_bytes: int

  def bytes_for(self, edits: int) -> int:
    return self.fixed_bytes + self.per_edit_bytes * edits


def widest_row(name: str, tokenizer, requests: Sequence[EditRequest], hp) -> dict:
  """One request's prepared arrays at the padded shapes of the longest of `requests` (the shapes
  no batch of them exceeds)."""
  prepared = methods.method(name).module.prepare_batch(tokenizer, list(requests), hp)
  return {k: np.asarray(v)[0] for k, v in prepared.items()}


def program_bytes(
    name: str,
    config: LlamaConfig,
    params,
    hp,
    row: dict,
    edits: int,
    *,
    params_bytes: int,
    second_moments_shape: tuple[int, ...] | None = None,
) -> int | None:
  """Bytes on one device of the method's batched program at `edits` rows of `row`'s shapes, beside
  the `params_bytes` of params it reads (compiled, not run); None where the backend gives no
  memory account."""
  structs = {
      k: jax.ShapeDtypeStruct((edits,) + v.shape, v.dtype) for k, v in row.items()
  }  # [edits, ...]
  args = [params, structs]
  if name == "memit":
    args.append(jax.ShapeDtypeStruct(second_moments_shape, np.float32))
  stats = methods.batched_program(name, config, hp).lower(*args).compile().memory_analysis()
  if stats is None:  # a backend without XLA's memory account
    return None
  used = (
      stats.temp_size_in_bytes
      + stats.output_size_in_bytes
      + stats.argument_size_in_bytes
      - stats.alias_size_in_bytes
  )
  return int(used - params_bytes)


def largest_fitting(
    memory: EditMemory, budget: int, sizes: Sequence[int] = EDIT_BATCH_SIZES
) -> int:
  """The largest of `sizes` whose bytes fit `budget`; the smallest when none does."""
  fitting = [s for s in sizes if memory.bytes_for(s) <= budget]
  return fitting[-1] if fitting else sizes[0]


def choose(
    measure: Callable[[int], int], budget: int, sizes: Sequence[int] = EDIT_BATCH_SIZES
) -> tuple[int, dict]:
  """(size, account): the line through measure(1) and measure(2) picks a size, which measure()
  then checks, stepping down while it exceeds `budget`. account: the line, the budget and the
  checked bytes (results.json)."""
  one, two = measure(1), measure(2)
  line = EditMemory(fixed_bytes=2 * one - two, per_edit_bytes=two - one)
  size = largest_fitting(line, budget, sizes)
  measured = {1: one, 2: two}
  while True:
    if size not in measured:
      measured[size] = measure(size)
    if measured[size] <= budget or size == sizes[0]:
      break
    size = max(s for s in sizes if s < size)
  account = {
      "budget_bytes": int(budget),
      "fixed_bytes": line.fixed_bytes,
      "per_edit_bytes": line.per_edit_bytes,
      "bytes": int(measured[size]),
      "fits": measured[size] <= budget,
  }
  return size, account


def auto_size(
    name: str,
    config: LlamaConfig,
    params,
    tokenizer,
    requests: Sequence[EditRequest],
    hp,
    *,
    budget: int | None,
    params_bytes: int,
    second_moments_shape: tuple[int, ...] | None = None,
) -> tuple[int, dict]:
  """(edits per batch, account) for `requests` (editable by `name`) within `budget` bytes per
  device. CPU_EDIT_BATCH_SIZE where the budget is None (memory unknown), no request is editable,
  or the backend gives no memory account (the account says which)."""
  if budget is None:
    return CPU_EDIT_BATCH_SIZE, {"budget_bytes": None}
  if not requests:
    return CPU_EDIT_BATCH_SIZE, {"budget_bytes": int(budget), "editable_requests": 0}
  row = widest_row(name, tokenizer, requests, hp)
  measured: dict[int, int | None] = {}

  def measure(edits: int) -> int | None:
    if edits not in measured:
      measured[edits] = program_bytes(
          name,
          config,
          params,
          hp,
          row,
          edits,
          params_bytes=params_bytes,
          second_moments_shape=second_moments_shape,
      )
    return measured[edits]

  if measure(1) is None:
    return CPU_EDIT_BATCH_SIZE, {"budget_bytes": int(budget), "memory_analysis": None}
  return choose(measure, budget)
