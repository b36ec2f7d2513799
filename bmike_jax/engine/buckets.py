"""Shape buckets: every array the engine compiles for has a length and a batch size from a short list.

A program is compiled once per bucket combination, so a whole benchmark run compiles a bounded
number of programs whatever the prompt lengths are. Prompts that do not fit the largest bucket (or
the model's context) are an error unless the caller chose an explicit, logged truncation policy.
"""

from __future__ import annotations

import logging
from typing import Sequence

OVERLONG_POLICIES = ("error", "truncate_left")


class PromptTooLongError(ValueError):
  """A prompt longer than the largest length bucket or the model's context."""

  def __init__(self, name: str, length: int, limit: int, reason: str):
    self.name, self.length, self.limit = name, length, limit
    super().__init__(
        f"prompt {name!r} has {length} tokens, more than the {limit} allowed "
        f"({reason}); pass overlong='truncate_left' to cut it from the left instead"
    )


def default_length_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
  """smallest, 1.5x, 2x, 3x, 4x, ... (32, 48, 64, 96, 128, 192, ...) up to and including max_length.

  The 1.5x steps bound padding waste at 1/3 instead of 1/2 for twice the (still small) number of
  buckets.
  """
  out, p = [], smallest
  while p < max_length:
    out.append(p)
    if p * 3 // 2 < max_length:
      out.append(p * 3 // 2)
    p *= 2
  out.append(max_length)
  return tuple(sorted(set(out)))


def batch_buckets(batch_size: int, multiple_of: int = 1) -> tuple[int, ...]:
  """1, 2, 4, ... up to batch_size (included), each rounded up to a multiple of `multiple_of`
  (the data-axis size, so every batch splits evenly over the data devices)."""
  sizes, b = set(), 1
  while b < batch_size:
    sizes.add(b)
    b *= 2
  sizes.add(batch_size)
  return tuple(sorted({-(-s // multiple_of) * multiple_of for s in sizes}))


def pick_bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; ValueError if none is (callers check lengths first)."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"{n} exceeds the largest bucket {max(buckets)}")


def fit_prompt(
    ids: Sequence[int],
    name: str,
    *,
    max_bucket: int,
    context: int,
    overlong: str = "error",
    keep_first: int = 0,
) -> list[int]:
  """`ids` if it fits both limits; otherwise raise PromptTooLongError or (overlong='truncate_left')
  drop tokens from the left, keeping the first `keep_first` (a BOS), and log it."""
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
  limit = min(max_bucket, context)
  if len(ids) <= limit:
    return list(ids)
  reason = (
      f"largest length bucket {max_bucket}"
      if max_bucket <= context
      else f"model context minus new tokens {context}"
  )
  if overlong == "error":
    raise PromptTooLongError(name, len(ids), limit, reason)
  kept = list(ids[:keep_first]) + list(ids[len(ids) - (limit - keep_first) :])
  logging.warning(
      "overlong='truncate_left': prompt %r cut from %d to %d tokens (%s)",
      name,
      len(ids),
      len(kept),
      reason,
  )
  return kept


def decode_phases(
    batch: int, batch_buckets: Sequence[int], halvings: int, min_batch: int = 16
) -> tuple[int, ...]:
  """The batch sizes a decode loop of `batch` rows shrinks through as rows finish: `batch`, then
  the smaller batch buckets down to batch / 2**halvings (decreasing; just (batch,) for 0).

  Batches under `min_batch` rows do not shrink: there a step's cost is mostly reading the weights,
  which a smaller batch does not save, while every phase is one more loop body to compile."""
  if batch < min_batch:
    return (batch,)
  floor = batch / 2**halvings
  smaller = sorted((b for b in batch_buckets if floor <= b < batch), reverse=True)
  return (batch, *smaller[:halvings])
