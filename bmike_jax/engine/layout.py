"""Host-side layout: the shared token prefix of a group, batches of suffixes, padded numpy arrays.

KV layout of one batch: the group's shared prefix is one block [L, 1, Pb, KVH, Dh] (slots [0, P)
real, [P, Pb) padding, masked), computed once and attended by every row without being copied;
each row has its own cache of S = Sb + N slots (rounded up to a multiple of 8):

    slots [0, n_i)        row i's own suffix tokens, right-padded to Sb (padding masked)
    slots [Sb, ...)       generated (or teacher-forced continuation) tokens

True positions: prefix token j -> j; suffix token k -> P + k; the t-th token after the suffix ->
P + n_i + t. Without prefix reuse P = Pb = 0 and the whole prompt is the suffix (same code path).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bmike_jax.engine import buckets as buckets_lib


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
  """Longest common token prefix of all `seqs`, at most min(len) - 1 (every row keeps >= 1 own
  token, whose logits predict the first new token). Token level: strings are never split."""
  if not seqs:
    return 0
  first, limit = seqs[0], min(len(s) for s in seqs) - 1
  n = 0
  while n < limit and all(s[n] == first[n] for s in seqs):
    n += 1
  return max(n, 0)


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """The prefix shared by a group's prompts."""

  prefix: tuple[int, ...]  # [P] token ids computed once
  prefix_bucket: int  # Pb >= P (0 without reuse)

  @property
  def prefix_length(self) -> int:
    return len(self.prefix)


def plan_group(
    prompts: Sequence[Sequence[int]],
    *,
    reuse: bool,
    length_buckets: Sequence[int],
    min_prefix: int = 16,
) -> GroupLayout:
  """Reuse the common prefix when asked and when it is at least `min_prefix` tokens long."""
  p = common_prefix_length(prompts) if reuse and len(prompts) > 1 else 0
  if p < max(min_prefix, 1):
    return GroupLayout(prefix=(), prefix_bucket=0)
  return GroupLayout(
      prefix=tuple(prompts[0][:p]), prefix_bucket=buckets_lib.pick_bucket(p, length_buckets)
  )


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  rows: tuple[int, ...]  # indices of the real rows (into the caller's list), <= batch
  batch: int  # B: a batch bucket (rows beyond len(rows) are inactive dummies)
  suffix_bucket: int  # Sb: a length bucket >= every row's suffix length
  extra_bucket: int = 0  # Cb: continuation bucket (scoring only)


def plan_batches(
    suffix_lengths: Sequence[int],
    *,
    batch_size: int,
    batch_buckets: Sequence[int],
    length_buckets: Sequence[int],
    extra_lengths: Sequence[int] | None = None,
    extra_buckets: Sequence[int] = (),
) -> list[BatchPlan]:
  """Rows sorted by length (longest first) and cut into batches of `batch_size`; each batch gets
  the smallest batch and length buckets that hold it."""
  order = sorted(range(len(suffix_lengths)), key=lambda i: -suffix_lengths[i])
  plans = []
  for start in range(0, len(order), batch_size):
    rows = tuple(order[start : start + batch_size])
    sb = buckets_lib.pick_bucket(max(suffix_lengths[i] for i in rows), length_buckets)
    cb = 0
    if extra_lengths is not None:
      cb = buckets_lib.pick_bucket(max(max(extra_lengths[i] for i in rows), 1), extra_buckets)
    plans.append(
        BatchPlan(
            rows=rows,
            batch=buckets_lib.pick_bucket(len(rows), batch_buckets),
            suffix_bucket=sb,
            extra_bucket=cb,
        )
    )
  return plans


def cache_length(suffix_bucket: int, extra: int) -> int:
  """S, a row's own cache: suffix + `extra` slots (new tokens), rounded up to a multiple of 8
  (the shared prefix is not in it)."""
  return -(-(suffix_bucket + extra) // 8) * 8


def pad_rows(seqs: Sequence[Sequence[int]], batch: int, length: int, min_length: int = 1):
  """Right-padded tokens [batch, length] int32, lengths [batch] int32, active [batch] bool.

  Rows past len(seqs) are inactive dummies of `min_length` pad tokens (0)."""
  tokens = np.zeros((batch, length), np.int32)
  lengths = np.full((batch,), min_length, np.int32)
  active = np.zeros((batch,), bool)
  for i, s in enumerate(seqs):
    tokens[i, : len(s)] = s
    lengths[i] = len(s)
    active[i] = True
  return tokens, lengths, active
