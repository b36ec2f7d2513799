"""Shape buckets: every array the engine compiles for has a length and a batch size from a short list.

A program is compiled once per bucket combination, so a whole benchmark run compiles a bounded
number of programs whatever the prompt lengths are. Prompts that do not fit the largest bucket (or
the model's context) are an error unless the caller chose an explicit, logged truncation policy.
"""

from __future__ import annotations

import logging
import math
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


def prefix_buckets(given: Sequence[int] | None, length_buckets: Sequence[int]) -> tuple[int, ...]:
  """The lengths a group's shared prefix pads to: `given` (those up to the largest length
  bucket) plus the largest length bucket, so that every prefix fits one; None: 0 and the length
  buckets. Fewer, coarser prefix buckets mean fewer programs (each generate program is keyed by
  its prefix bucket Pb) for masked prefix slots every row attends: the prefix is one shared row,
  so a padded slot costs each query one masked key, not a row's memory.

  0 is the bucket of a group without a shared prefix (no prefix region) only where it is listed;
  without it such a group runs on an empty prefix region of the smallest bucket (every slot
  masked, `layout.plan_group`), so that it compiles no programs of its own."""
  top = max(length_buckets)
  if given is None:
    return (0, *sorted(length_buckets))
  if any(b < 0 for b in given):
    raise ValueError(f"prefix buckets must be >= 0, got {list(given)}")
  return tuple(sorted({b for b in given if b <= top} | {top}))


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


# How a batch's row count is chosen (one rule for the engine and tools/sweep_plan.py):
#   buckets: the smallest of 1, 2, 4, ... batch_size holding the rows (a group's last, partial
#            batch computes fewer dummy rows, at the price of one program per size);
#   fixed:   always batch_size (one batch shape: a program less per size in use, for dummy rows
#            a step reads the weights for anyway);
#   auto:    buckets on CPU (compute-bound, compiles take seconds), fixed on GPU / TPU
#            (a decode step is weight-read-bound; an 8B program compiles in ~23 s unrolled).
BATCH_SHAPES = ("auto", "fixed", "buckets")


def default_batch_shapes(platform: str) -> str:
  """`buckets` on CPU, `fixed` on accelerators (see BATCH_SHAPES)."""
  return "buckets" if platform == "cpu" else "fixed"


def row_buckets(batch_size: int, shapes: str, multiple_of: int = 1) -> tuple[int, ...]:
  """The batch sizes programs are compiled for under `shapes` ("fixed" / "buckets")."""
  if shapes not in ("fixed", "buckets"):
    raise ValueError(f"batch shapes must be 'fixed' or 'buckets' here, got {shapes!r}")
  sizes = batch_buckets(batch_size, multiple_of)
  return sizes[-1:] if shapes == "fixed" else sizes


FRESH_SCORING_ROWS = 16  # rows of a fresh scoring call under fixed batch shapes


def fresh_scoring_rows(batch_size: int, shapes: str, multiple_of: int = 1) -> tuple[int, ...]:
  """The batch sizes of scoring calls that compute their contexts afresh: under "fixed" shapes
  one size, FRESH_SCORING_ROWS (at most batch_size), not batch_size; under "buckets" the
  generation's. After a generated group only a few sequences take this path (empty targets,
  whose scored tokens are the whole prompt; sequences leaving the prompts inside their shared
  prefix), about 10 a group on BMIKE-53: at a fixed 256 rows their calls were ~30M of the ~77M
  scoring slots of the full sweep (tools/sweep_plan), for as many programs."""
  if shapes == "fixed":
    return row_buckets(min(batch_size, FRESH_SCORING_ROWS), "fixed", multiple_of)
  return row_buckets(batch_size, shapes, multiple_of)


def fresh_continuation_buckets(prefix_buckets: Sequence[int]) -> tuple[int, ...]:
  """The lengths a continuation scored afresh pads to: the prefix buckets but 0
  (`prefix_buckets`, which always hold the largest length bucket). Such a continuation is
  mostly an empty target's whole prompt, demonstrations and all (~100 to ~4,000 tokens), so it
  pads as a group's demonstrations do; they are rare (~10 a group), so coarse buckets cost them
  little padding and keep their programs as few as the prefixes' (the continuation buckets'
  doubling from 16 gave five on a full sweep)."""
  return tuple(b for b in sorted(prefix_buckets) if b > 0)


# A scored continuation runs, per sequence, the tokens after what it shares with its prompt (off
# the kept prompt KV) or its whole continuation (afresh): a target of a few tokens (BMIKE-53's
# targets are entity names) plus the one or two the joint tokenization merges. One bucket holds
# nearly all (tools/sweep_plan: the longest on 3 languages x 3 datasets with Llama 3's tokenizer
# was 64), so nearly all scoring calls of a (prefix, suffix) bucket pair are one program; longer
# ones double from there.
CONTINUATION_BUCKET = 16


def continuation_buckets(largest: int, smallest: int = CONTINUATION_BUCKET) -> tuple[int, ...]:
  """smallest, 2x, 4x, ... up to and including `largest` (the largest length bucket)."""
  out, r = [], min(smallest, largest)
  while r < largest:
    out.append(r)
    r *= 2
  return (*out, largest)


def stem_buckets(length_buckets: Sequence[int]) -> tuple[int, ...]:
  """Lengths the pieces of a batch split at record stems pad to (the stems and the rests after
  them): the length buckets plus the continuation buckets' family (16, 32, 64, ...) below the
  largest. The pieces are short (a `New Fact` line: ~20 Llama-3 tokens, a rest ~25), and the
  length buckets' coarser low end (configs/8b.flags: 64 first) would pad them past what sharing
  the stem saves."""
  largest = max(length_buckets)
  return tuple(sorted(set(length_buckets) | set(continuation_buckets(largest))))


# A scoring call off the kept prompt KV takes about this many token slots (rows x continuation
# bucket), at most the kept batch's rows: a batch of 256 prompts scores its ~6-token rests in calls
# of 128 rows at bucket 16 rather than of 256, and a kept batch's last call wastes fewer rows.
SCORING_TOKENS_PER_CALL = 2048


def scoring_rows(kept_rows: int, rest_bucket: int, multiple_of: int = 1) -> int:
  """Rows of one scoring call off a kept batch of `kept_rows` rows at continuation bucket
  `rest_bucket`: the largest power of two <= SCORING_TOKENS_PER_CALL / rest_bucket, at most
  kept_rows, rounded to a multiple of the data axis (at least one row per data device)."""
  rows = 1
  while rows * 2 * rest_bucket <= SCORING_TOKENS_PER_CALL:
    rows *= 2
  rows = min(rows, kept_rows)
  return max(rows // multiple_of, 1) * multiple_of


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


def carry_rows(batch: int, share: float, data_axis: int = 1) -> int:
  """The rows a decode batch of `batch` rows carries into the next batch of its program
  (decode.decode_carrying): `share` of it rounded up to the data axis, at most the batch; 0 for
  share 0 (off)."""
  if share <= 0:
    return 0
  return min(batch, -(-math.ceil(batch * share) // data_axis) * data_axis)


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
