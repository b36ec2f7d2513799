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

import bisect
import dataclasses
from typing import Callable, Sequence

import numpy as np

from bmike_jax.engine import buckets as buckets_lib


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
  """Longest common token prefix of all `seqs`, at most min(len) - 1 (every row keeps >= 1 own
  token, whose logits predict the first new token). Token level: strings are never split."""
  if not seqs:
    return 0
  first, n = seqs[0], min(len(s) for s in seqs) - 1
  for s in seqs[1:]:
    if n <= 0:
      break
    n = min(n, longest_common_prefix(first[:n], s[:n]))
  return max(n, 0)


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """The prefix shared by a group's prompts."""

  prefix: tuple[int, ...]  # [P] token ids computed once
  prefix_bucket: int  # Pb >= P (0: no prefix region; P = 0 < Pb: an empty one, all masked)

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
  """Reuse the common prefix when asked and when it is at least `min_prefix` tokens long.
  length_buckets: the prefix buckets (`buckets.prefix_buckets`); a group without a shared prefix
  takes the smallest, 0 (no prefix region) where it is one, else an empty region of that many
  masked slots."""
  p = common_prefix_length(prompts) if reuse and len(prompts) > 1 else 0
  if p < max(min_prefix, 1):
    return GroupLayout(prefix=(), prefix_bucket=min(length_buckets))
  return GroupLayout(
      prefix=tuple(prompts[0][:p]), prefix_bucket=buckets_lib.pick_bucket(p, length_buckets)
  )


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """One batch of rows. With stems (stem_bucket > 0) each row's suffix is its record stem, run
  once per stem in a block of `stem_rows` rows, then its rest, run in its own row (`suffix_bucket`
  then bounds the rests). Packed (packed_rows > 0), the suffixes are segments of rows of
  `packed_length` tokens, prefilled `packed_rows` rows (one block) at a time in one loop of
  `packed_blocks` iterations, each one's KV gathered into its own row of `suffix_bucket` prompt
  slots; see `pack_batch`."""

  rows: tuple[int, ...]  # indices of the real rows (into the caller's list), <= batch
  batch: int  # B: a batch bucket (rows beyond len(rows) are inactive dummies)
  suffix_bucket: int  # Sb: a length bucket >= every row's suffix (its rest, with stems)
  extra_bucket: int = 0  # Cb: continuation bucket (scoring only)
  stem_rows: int = 0  # R: rows of the stem block (a power of two >= len(stems)); 0: no stems
  stem_bucket: int = 0  # Tb: a stem bucket >= every stem's length
  stems: tuple[tuple[int, int], ...] = ()  # per stem: (a row i holding it, its length)
  row_stems: tuple[int, ...] = ()  # per row (as `rows`): its stem's index, -1 for none
  packed_rows: int = 0  # R: rows of one packed block (0: one padded row per prompt)
  packed_length: int = 0  # T: tokens of each packed row (>= suffix_bucket)
  packed_blocks: int = 0  # blocks of R rows the packing fills (the loop's iterations)
  segments: tuple[tuple[int, int], ...] = ()  # per row (as `rows`): (packed row, first token)
  # packed with stems (stem_rows 0, `stems` given): per stem, (packed row, first token) of its one
  # copy; each of its rows' `segments` then holds the row's rest only, after it in the same row
  stem_segments: tuple[tuple[int, int], ...] = ()

  @property
  def prompt_slots(self) -> int:
    """Slots of a row's prompt after the shared prefix once prefilled: Tb + Sb (stem, rest)."""
    return self.stem_bucket + self.suffix_bucket

  def padded_slots(self) -> int:
    """Token slots the prefill runs: B x Sb, plus R x Tb for the stems; packed, blocks x R x T."""
    if self.packed_rows:
      return self.packed_blocks * self.packed_rows * self.packed_length
    return self.batch * self.suffix_bucket + self.stem_rows * self.stem_bucket

  def program_key(self, prefix_bucket: int) -> tuple:
    """The key of the generate program this batch runs (engine/programs.py; tools/sweep_plan)."""
    if self.stem_rows:
      return (
          "generate_stemmed",
          self.batch,
          prefix_bucket,
          self.stem_rows,
          self.stem_bucket,
          self.suffix_bucket,
      )
    if self.packed_rows:
      return (
          "generate_packed",
          self.batch,
          prefix_bucket,
          self.packed_rows,
          self.packed_length,
          self.suffix_bucket,
      )
    return ("generate", self.batch, prefix_bucket, self.suffix_bucket)

  def stem_tokens(self) -> int:
    """The stems' tokens, each run once."""
    return sum(n for _, n in self.stems)

  def stem_tokens_saved(self) -> int:
    """Tokens the rows' suffixes hold that their shared stems spare running again."""
    held = sum(self.stems[k][1] for k in self.row_stems if k >= 0)  # each row's own copy
    return held - self.stem_tokens()


def plan_batches(
    suffix_lengths: Sequence[int],
    *,
    batch_size: int,
    batch_buckets: Sequence[int],
    length_buckets: Sequence[int],
    extra_lengths: Sequence[int] | None = None,
    extra_buckets: Sequence[int] = (),
    max_rows: Callable[[int, int], int] | None = None,
) -> list[BatchPlan]:
  """Rows sorted by length (longest first) and cut into batches of `batch_size`; each batch gets
  the smallest batch and length buckets that hold it.

  max_rows(suffix bucket, extra slots) -> the most rows a batch of that shape may hold (a member of
  `batch_buckets` or of the sizes below batch_size; device memory, engine/memory.py): a batch of
  long suffixes then takes fewer rows. Extra slots: the continuation bucket of the longest
  continuation of all rows (scoring), else 0 (the caller adds its new tokens)."""
  order = sorted(range(len(suffix_lengths)), key=lambda i: -suffix_lengths[i])
  cb_all = 0
  if extra_lengths is not None and order:
    cb_all = buckets_lib.pick_bucket(max(max(extra_lengths), 1), extra_buckets)
  plans, start = [], 0
  while start < len(order):
    cap = batch_size
    if max_rows is not None:
      sb_first = buckets_lib.pick_bucket(suffix_lengths[order[start]], length_buckets)
      cap = min(cap, max_rows(sb_first, cb_all))
    rows = tuple(order[start : start + cap])
    start += len(rows)
    sb = buckets_lib.pick_bucket(max(suffix_lengths[i] for i in rows), length_buckets)
    cb = 0
    if extra_lengths is not None:
      cb = buckets_lib.pick_bucket(max(max(extra_lengths[i] for i in rows), 1), extra_buckets)
    sizes = [b for b in batch_buckets if b <= cap] or [cap]
    plans.append(
        BatchPlan(
            rows=rows,
            batch=buckets_lib.pick_bucket(len(rows), sizes),
            suffix_bucket=sb,
            extra_bucket=cb,
        )
    )
  return plans


def stem_clusters(
    suffixes: Sequence[Sequence[int]], min_stem: int, stem_buckets: Sequence[int] = ()
) -> list[tuple[list[int], int]]:
  """The prompts' record stems (level 2 of DESIGN.md's sharing): [(member indices, stem length)]
  covering every index once; a stem is a common token prefix of its members, at least `min_stem`
  tokens and at most every member's length - 1 (each keeps >= 1 own token); members without one
  are singletons of stem 0.

  In sorted order, members of a stem are a run of neighbours. A run is cut where two neighbours
  share fewer than `min_stem` tokens, and within a run at its weakest link wherever the two halves,
  each with its own longer stem, save more than the run with the shorter one. A stem of s tokens
  shared by n rows saves n x s token slots and costs one stem row of bucket(s) slots (s without
  `stem_buckets`): saved(run) = max(n x s - bucket(s), saved(left) + saved(right), 0)."""
  order = sorted(range(len(suffixes)), key=lambda i: tuple(suffixes[i]))
  links = np.asarray(
      [  # tokens neighbours k and k + 1 may share as a stem
          min(
              longest_common_prefix(suffixes[a], suffixes[b]),
              len(suffixes[a]) - 1,
              len(suffixes[b]) - 1,
          )
          for a, b in zip(order, order[1:])
      ],
      np.int64,
  )
  cost = lambda n: buckets_lib.pick_bucket(n, stem_buckets) if stem_buckets else n
  out: list[tuple[list[int], int]] = []

  def runs(lo: int, hi: int):
    """(lo, hi, stem) of the best stems of the run order[lo..hi]; iterative (a run may be a
    whole group: its shared prefix, without prefix reuse)."""
    value, split, todo = {}, {}, [(lo, hi, False)]
    while todo:
      a, b, ready = todo.pop()
      if a == b:
        value[a, b] = 0
        continue
      k = a + int(np.argmin(links[a:b]))
      if not ready:
        todo += [(a, b, True), (a, k, False), (k + 1, b, False)]
        continue
      whole = (b - a + 1) * int(links[k]) - cost(int(links[k]))
      halves = value[a, k] + value[k + 1, b]
      value[a, b] = max(whole, halves, 0)
      split[a, b] = (k, whole < halves or whole <= 0)
    found, todo = [], [(lo, hi)]
    while todo:
      a, b = todo.pop()
      if a == b or value[a, b] == 0:
        found += [(j, j, 0) for j in range(a, b + 1)]
      elif split[a, b][1]:
        k = split[a, b][0]
        todo += [(a, k), (k + 1, b)]
      else:
        found.append((a, b, int(links[split[a, b][0]])))
    return sorted(found)

  lo = 0
  for k in range(len(order)):
    if k == len(order) - 1 or links[k] < max(min_stem, 1):
      for a, b, stem in runs(lo, k):
        out.append(([order[j] for j in range(a, b + 1)], stem))
      lo = k + 1
  return out


@dataclasses.dataclass(frozen=True)
class PlanSettings:
  """How `plan_generate` cuts a call's prompts into batches. Built by `plan_settings`, once, for
  the engine and tools/sweep_plan alike (so the sweep's plan is the engine's); tests may replace
  fields. batch_buckets: the batch sizes programs run (buckets.row_buckets); block_row_buckets:
  the row counts of a block run apart from the batch's own rows, a stem block or packed suffix
  rows (powers of two, multiples of the data axis); stem_buckets: the lengths stems and rests pad
  to (buckets.stem_buckets); suffix_packing, packed_length, packed_rows: prefill the suffixes
  packed into rows of packed_length tokens (at least the batch's suffix bucket), packed_rows
  rows at a time (at most; `pack_batch`)."""

  batch_size: int
  batch_buckets: tuple[int, ...]
  length_buckets: tuple[int, ...]
  stem_reuse: bool
  min_stem: int
  block_row_buckets: tuple[int, ...]
  stem_buckets: tuple[int, ...]
  suffix_packing: bool = False
  packed_length: int = 512
  packed_rows: int = 4
  data_axis: int = 1


def plan_settings(
    *,
    batch_size: int,
    batch_shapes: str,
    length_buckets: Sequence[int],
    data_axis: int = 1,
    stem_reuse: bool = False,
    min_stem: int = 4,
    suffix_packing: bool = False,
    packed_length: int = 512,
    packed_rows: int = 4,
) -> PlanSettings:
  """The settings of an engine of `batch_size` rows (a multiple of `data_axis`), resolved
  `batch_shapes` ("fixed" / "buckets") and `length_buckets`."""
  if packed_length < 1 or packed_rows < 1:
    raise ValueError(
        f"packed_length and packed_rows must be >= 1, got {packed_length}, {packed_rows}"
    )
  length_buckets = tuple(sorted(length_buckets))
  return PlanSettings(
      batch_size=batch_size,
      batch_buckets=buckets_lib.row_buckets(batch_size, batch_shapes, multiple_of=data_axis),
      length_buckets=length_buckets,
      stem_reuse=stem_reuse,
      min_stem=min_stem,
      block_row_buckets=buckets_lib.batch_buckets(batch_size, multiple_of=data_axis),
      stem_buckets=buckets_lib.stem_buckets(length_buckets),
      suffix_packing=suffix_packing,
      packed_length=packed_length,
      packed_rows=packed_rows,
      data_axis=data_axis,
  )


def plan_generate(
    suffixes: Sequence[Sequence[int]],
    settings: PlanSettings,
    *,
    max_rows: Callable[[int, int], int] | None = None,
    prefix_bucket: int = 0,
) -> list[BatchPlan]:
  """The batches of one `generate` call (one rule for the engine and tools/sweep_plan).

  Without stem reuse: `plan_batches`. With it, the rows of one stem (`stem_clusters`) go to one
  batch where they fit (stems ordered by their longest row, every batch filled: a stem whose rows
  span two batches is run in both, so there are as many batches as without stems), and each
  batch runs its stems once (R rows of Tb slots) and its
  rows' rests on them, or, where that computes more token slots (R x Tb + B x Sb_rest against B x
  Sb_whole: short stems), its rows whole as `plan_batches` would. With suffix packing, each batch
  run whole is then packed (`pack_batch`; `prefix_bucket`: Pb, for its attention-score bound);
  with suffix packing and stem reuse, the batches are the stems' as above (a stem costs its own
  tokens, no bucket), each packed with its stems as segments (`pack_batch`): no stem rows, no
  program more than packing alone."""
  if settings.suffix_packing and settings.stem_reuse:
    plans = [
        _whole_with_stems(units, suffixes, cap, settings)
        for units, cap in _stem_batches(suffixes, settings, max_rows, stem_buckets=())
    ]
  else:
    plans = _stems_or_whole(suffixes, settings, max_rows)
  if settings.suffix_packing:
    cap = lambda sb: settings.batch_size if max_rows is None else max_rows(sb, 0)
    plans = [
        p if p.stem_rows else pack_batch(p, suffixes, settings, prefix_bucket, cap(p.suffix_bucket))
        for p in plans
    ]
  return plans


def pack_segments(
    lengths: Sequence[int], row_length: int, max_per_row: int | None = None
) -> list[tuple[int, int]]:
  """(packed row, first token) of each of `lengths` (each <= row_length): first fit, in the given
  order (the batch's rows come longest first, so this is first-fit decreasing); at most
  `max_per_row` segments a row where given. A segment's index in its row is the number of
  segments placed in that row before it."""
  used: list[int] = []  # tokens taken in each packed row
  count: list[int] = []  # segments in each packed row
  room = max_per_row or len(lengths) or 1
  out = []
  for n in lengths:
    if n > row_length:
      raise ValueError(f"a segment of {n} tokens does not fit a packed row of {row_length}")
    r = next((k for k, u in enumerate(used) if u + n <= row_length and count[k] < room), len(used))
    if r == len(used):
      used.append(0)
      count.append(0)
    out.append((r, used[r]))
    used[r] += n
    count[r] += 1
  return out


def pack_batch(
    plan: BatchPlan,
    suffixes: Sequence[Sequence[int]],
    settings: PlanSettings,
    prefix_bucket: int,
    row_cap: int | None = None,
) -> BatchPlan:
  """`plan` with its suffixes packed first-fit (`pack_segments`, longest first) into rows of T
  tokens, prefilled in blocks of R rows (`packed_block`; row_cap: the most rows a batch of its
  shape may hold, `plan_batches`' max_rows); `plan` unchanged (without stems) where no block fits
  its bounds. T and R depend on (B, Pb, Sb) only, so a packed batch runs one program per
  (B, Pb, Sb), as padded rows do; the loop runs only the blocks the packing fills.

  With stems (`plan.stems`, stem_rows 0: `_whole_with_stems`), the packed unit is a stem and its
  rows' rests, back to back in one row: the stem once, then each rest (which attends the stem and
  itself, `PackedBatch.parents`). A stem whose rows do not fit one row of T is cut into pieces
  that do, each with its own copy of the stem; a piece of one row is that row's whole suffix."""
  shape = packed_block(plan.batch, plan.suffix_bucket, prefix_bucket, settings, row_cap)
  if shape is None:
    return dataclasses.replace(plan, stems=(), row_stems=())
  r, t = shape
  units = _stem_pieces(plan, suffixes, t)  # [(stem length, [batch rows])]
  units.sort(key=lambda u: -(u[0] + sum(len(suffixes[plan.rows[b]]) - u[0] for b in u[1])))
  starts = pack_segments(
      [n + sum(len(suffixes[plan.rows[b]]) - n for b in members) for n, members in units], t
  )
  segments = [(0, 0)] * len(plan.rows)
  row_stems = [-1] * len(plan.rows)
  stems, stem_segments = [], []
  for (n, members), (g, first) in zip(units, starts):
    k = -1
    if n:  # the stem first, then its rows' rests
      k = len(stems)
      stems.append((plan.rows[members[0]], n))
      stem_segments.append((g, first))
      first += n
    for b in members:
      segments[b], row_stems[b] = (g, first), k
      first += len(suffixes[plan.rows[b]]) - n
  used = 1 + max(g for g, _ in starts)
  return dataclasses.replace(
      plan,
      packed_rows=r,
      packed_length=t,
      packed_blocks=-(-used // r),
      segments=tuple(segments),
      stems=tuple(stems),
      row_stems=tuple(row_stems) if stems else (),
      stem_segments=tuple(stem_segments),
  )


def _stem_pieces(plan: BatchPlan, suffixes, row_length: int) -> list[tuple[int, list[int]]]:
  """A batch's packed units: (stem length, its batch rows (indices into plan.rows)), each unit's
  stem plus rests at most `row_length` tokens; rows without a stem (or alone in their piece) are
  units of stem length 0, their whole suffix."""
  members: dict[int, list[int]] = {}
  units: list[tuple[int, list[int]]] = []
  for b, k in enumerate(plan.row_stems or (-1,) * len(plan.rows)):
    if k < 0:
      units.append((0, [b]))
    else:
      members.setdefault(k, []).append(b)
  for k, rows in members.items():
    n = plan.stems[k][1]
    piece, used = [], n
    for b in rows:
      rest = len(suffixes[plan.rows[b]]) - n
      if piece and used + rest > row_length:
        units.append((n, piece) if len(piece) > 1 else (0, piece))
        piece, used = [], n
      piece.append(b)
      used += rest
    units.append((n, piece) if len(piece) > 1 else (0, piece))
  return units


def packed_block(
    batch: int,
    suffix_bucket: int,
    prefix_bucket: int,
    settings: PlanSettings,
    row_cap: int | None = None,
) -> tuple[int, int] | None:
  """(R, T) of a packed (B, Pb, Sb) batch's blocks, or None (run it padded). T starts at
  max(Sb, min(packed_length, B x Sb)), R at min(packed_rows, B x Sb / T) rounded up to the data
  axis; T halves (not below Sb) until one block runs no more token slots than the padded batch
  (R x T <= B x Sb) and its float32 attention scores are no larger than those the rows' memory
  estimate allows a batch of this shape (R x T x (Pb + T) <= C x Sb x (Pb + Sb), C = row_cap,
  default B), so that estimate still bounds the prefill; None where even T = Sb does not fit."""
  b, sb, pb, d = batch, suffix_bucket, prefix_bucket, settings.data_axis
  cap = max(b, row_cap or b)
  t = max(sb, min(settings.packed_length, b * sb))
  while True:
    r = -(-min(settings.packed_rows, -(-b * sb // t)) // d) * d
    if r * t <= b * sb and r * t * (pb + t) <= cap * sb * (pb + sb):
      return r, t
    if t == sb:
      return None
    t = max(sb, t // 2)


def packed_row_count(batch: int, packed_rows: int) -> int:
  """Rows of a packed batch's token arrays: the most rows B suffixes can take (one each),
  rounded up to whole blocks of `packed_rows`."""
  return -(-batch // packed_rows) * packed_rows


def _stems_or_whole(suffixes, settings: PlanSettings, max_rows) -> list[BatchPlan]:
  if not settings.stem_reuse:
    return plan_batches(
        [len(s) for s in suffixes],
        batch_size=settings.batch_size,
        batch_buckets=settings.batch_buckets,
        length_buckets=settings.length_buckets,
        max_rows=max_rows,
    )
  return [
      _stem_or_whole(
          units,
          suffixes,
          cap=cap,
          batch_buckets=settings.batch_buckets,
          block_row_buckets=settings.block_row_buckets,
          length_buckets=settings.length_buckets,
          stem_buckets=settings.stem_buckets,
          max_rows=max_rows,
      )
      for units, cap in _stem_batches(suffixes, settings, max_rows, settings.stem_buckets)
  ]


def _stem_batches(suffixes, settings: PlanSettings, max_rows, stem_buckets):
  """The batches of stem reuse: [(units [(rows, stem length)], the most rows the batch may
  hold)]; the rows of one stem (`stem_clusters`, a stem costing its bucket in `stem_buckets`)
  go to one batch where they fit, stems ordered by their longest row, every batch filled (a stem
  whose rows span two batches is in both)."""
  batch_size, length_buckets = settings.batch_size, settings.length_buckets
  clusters = stem_clusters(suffixes, settings.min_stem, stem_buckets)
  clusters.sort(key=lambda c: (-max(len(suffixes[i]) for i in c[0]), min(c[0])))
  units = [(sorted(m, key=lambda i: -len(suffixes[i])), stem) for m, stem in clusters]
  batches, u = [], 0
  while u < len(units):
    first = max(len(suffixes[i]) for i in units[u][0])
    cap = batch_size
    if max_rows is not None:
      cap = min(cap, max_rows(buckets_lib.pick_bucket(first, length_buckets), 0))
    taken, room = [], cap
    while u < len(units) and room:
      rows, stem = units[u]
      if len(rows) <= room:
        taken.append(units[u])
        room -= len(rows)
        u += 1
      else:  # fill the batch: the stem's other rows start the next one (its stem run again)
        taken.append((rows[:room], stem if room > 1 else 0))
        units[u] = (rows[room:], stem if len(rows) - room > 1 else 0)
        room = 0
    batches.append((taken, cap))
  return batches


def _whole_with_stems(units, suffixes, cap: int, settings: PlanSettings) -> BatchPlan:
  """A batch of `units` [(rows, stem length)] run whole (padded shape: B, Sb of the whole
  suffixes) with its stems noted (stem_rows 0), for `pack_batch` to lay out as segments."""
  rows = tuple(i for r, _ in units for i in r)
  sizes = [b for b in settings.batch_buckets if b <= cap] or [cap]
  stems, row_stems = [], []
  for r, stem in units:
    row_stems += [len(stems) if stem else -1] * len(r)
    if stem:
      stems.append((r[0], stem))
  return BatchPlan(
      rows=rows,
      batch=buckets_lib.pick_bucket(len(rows), sizes),
      suffix_bucket=buckets_lib.pick_bucket(
          max(len(suffixes[i]) for i in rows), settings.length_buckets
      ),
      stems=tuple(stems),
      row_stems=tuple(row_stems) if stems else (),
  )


def _stem_or_whole(
    units,
    suffixes,
    *,
    cap,
    batch_buckets,
    block_row_buckets,
    length_buckets,
    stem_buckets,
    max_rows,
) -> BatchPlan:
  """One batch of `units` [(rows, stem length)]: with its stems, or whole, whichever runs fewer
  token slots (ties: whole, one program kind less); with its stems only where its rows' longer
  prompt slots (Tb + Sb_rest may pass Sb_whole) still fit `max_rows`."""
  rows = tuple(i for r, _ in units for i in r)
  sizes = [b for b in batch_buckets if b <= cap] or [cap]
  batch = buckets_lib.pick_bucket(len(rows), sizes)
  whole = BatchPlan(
      rows=rows,
      batch=batch,
      suffix_bucket=buckets_lib.pick_bucket(max(len(suffixes[i]) for i in rows), length_buckets),
  )
  stems, row_stems = [], []
  for r, stem in units:
    row_stems += [len(stems) if stem else -1] * len(r)
    if stem:
      stems.append((r[0], stem))
  if not stems:
    return whole
  lengths = [len(suffixes[i]) - (stems[s][1] if s >= 0 else 0) for i, s in zip(rows, row_stems)]
  stemmed = BatchPlan(
      rows=rows,
      batch=batch,
      suffix_bucket=buckets_lib.pick_bucket(max(lengths), stem_buckets),
      stem_rows=buckets_lib.pick_bucket(len(stems), block_row_buckets),
      stem_bucket=buckets_lib.pick_bucket(max(n for _, n in stems), stem_buckets),
      stems=tuple(stems),
      row_stems=tuple(row_stems),
  )
  if max_rows is not None and max_rows(stemmed.prompt_slots, 0) < batch:
    return whole
  return stemmed if stemmed.padded_slots() < whole.padded_slots() else whole


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


def prefix_tree_tokens(seqs: Sequence[Sequence[int]]) -> int:
  """Tokens of `seqs` with every shared start counted once: the size of their token trie, what
  a computation sharing the KV of every common prefix (a group's demonstrations, a record's
  `New Fact` stem, any shared start, identical prompts) would run. In sorted order each sequence
  adds its tokens past the longest start it shares with the one before it."""
  total, previous = 0, ()
  for seq in sorted(tuple(int(t) for t in s) for s in seqs):
    total += len(seq) - longest_common_prefix(previous, seq)
    previous = seq
  return total


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  """Tokens two sequences share from the start."""
  n = min(len(a), len(b))
  differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
  return int(differ[0]) if len(differ) else n


@dataclasses.dataclass(frozen=True)
class KeptPrompts:
  """Where the prompts of the last generated group sit: (batch, row) of each, for a scored
  sequence to find the kept prompt KV it shares the most tokens with.

  Any prompt with the longest common token prefix serves: a causal model's KV up to a token
  depends only on the tokens before it. In a sorted list that prompt is a neighbour of the
  sequence's insertion point, so a lookup is a bisection and two prefix comparisons."""

  keys: tuple[tuple[int, ...], ...]  # the prompts (as run, after any truncation), sorted
  places: tuple[tuple[int, int], ...]  # (batch index, row in that batch) of each key

  @staticmethod
  def build(prompts: Sequence[Sequence[int]], places: Sequence[tuple[int, int]]) -> "KeptPrompts":
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    return KeptPrompts(
        keys=tuple(tuple(prompts[i]) for i in order), places=tuple(places[i] for i in order)
    )

  def match(self, seq: Sequence[int]) -> tuple[int, int, int]:
    """(batch, row, shared tokens) of a kept prompt sharing the longest token prefix with seq."""
    k = bisect.bisect_left(self.keys, tuple(seq))
    best = None
    for j in (k - 1, k):
      if 0 <= j < len(self.keys):
        n = longest_common_prefix(self.keys[j], seq)
        if best is None or n > best[2]:
          best = (*self.places[j], n)
    return best


@dataclasses.dataclass(frozen=True)
class KeptRest:
  """A scored sequence's tokens past the kept prompt KV it reuses (plan_kept_scoring's rule)."""

  index: int  # the sequence (into the caller's list)
  row: int  # the row of its generated batch whose kept KV it reuses
  reused: int  # kept suffix slots it reuses: its tokens [P, P + reused)
  tokens: tuple[int, ...]  # its tokens from P + reused on, but its last one
  targets: tuple[int, ...]  # the token after each of `tokens`


def kept_rests(
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    kept: KeptPrompts,
    prefix_length: int,
    longest: int,
) -> tuple[dict[int, list[KeptRest]], list[int]]:
  """({generated batch: the sequences continuing its prompts}, indices left to the fresh path):
  the rule of `plan_kept_scoring`, for rests of at most `longest` tokens."""
  per_batch: dict[int, list[KeptRest]] = {}
  fresh = []
  for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
    seq = list(ctx) + list(cont)
    j, row, shared = kept.match(seq)
    start = min(shared, len(ctx) - 1)
    if not cont or start < prefix_length or len(seq) - 1 - start > longest:
      fresh.append(i)
      continue
    per_batch.setdefault(j, []).append(
        KeptRest(i, row, start - prefix_length, tuple(seq[start:-1]), tuple(seq[start + 1 :]))
    )
  return per_batch, fresh


@dataclasses.dataclass(frozen=True)
class KeptScorePlan:
  """Scored sequences that continue rows of one generated batch, scored in one call."""

  source_batch: int  # the generated batch whose kept prompt KV they reuse
  indices: tuple[int, ...]  # the sequences (into the caller's list)
  source_rows: tuple[int, ...]  # the row of that batch each reuses
  reused: tuple[int, ...]  # kept suffix slots each reuses
  tokens: tuple[tuple[int, ...], ...]  # each one's tokens after them, but its last one
  targets: tuple[tuple[int, ...], ...]  # the token after each of `tokens`
  batch: int  # B: rows of this call (buckets.scoring_rows of the kept batch and Rb)
  kept_batch: int  # Bk: the rows of the generated batch whose KV it reuses
  rest_bucket: int  # Rb >= every len(tokens)


def plan_kept_scoring(
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    kept: KeptPrompts,
    prefix_length: int,
    batches: Sequence[int],
    rest_buckets: Sequence[int],
    multiple_of: int = 1,
) -> tuple[list[KeptScorePlan], list[int]]:
  """(calls scoring off the kept prompt KV, indices of the sequences left to the fresh path).

  Sequence = context + continuation (the reference's joint tokenization, as given). Its first
  scored token is predicted at the context's last token, so it runs its tokens from
  start = min(shared, len(context) - 1) on, where `shared` is its longest common token prefix
  with a kept prompt, and reuses that prompt's KV before `start` (the group prefix, P tokens, and
  the row's first start - P suffix slots). Left to the fresh path: start < P (the sequence leaves
  the prompts inside their shared prefix), an empty continuation, more tokens after start than
  the largest rest bucket. batches: the batch bucket of each generated batch; each call takes
  sequences of one batch, longest first, as many as `buckets.scoring_rows` gives for that batch
  and the call's rest bucket (the bucket of its longest sequence; rows a multiple of
  `multiple_of`, the data axis)."""
  _, calls, fresh = plan_scoring(
      contexts,
      continuations,
      kept=kept,
      prefix_length=prefix_length,
      batches=batches,
      rest_buckets=rest_buckets,
      multiple_of=multiple_of,
  )
  return calls, fresh


def kept_score_calls(
    per_batch: dict[int, list[KeptRest]],
    *,
    batches: Sequence[int],
    rest_buckets: Sequence[int],
    multiple_of: int = 1,
) -> list[KeptScorePlan]:
  """plan_kept_scoring's calls of the rests `per_batch` (`kept_rests`), one rest a row."""
  plans = []
  for j, items in sorted(per_batch.items()):
    items.sort(key=lambda x: -len(x.tokens))
    c = 0
    while c < len(items):
      rb = buckets_lib.pick_bucket(len(items[c].tokens), rest_buckets)  # the longest left
      rows = buckets_lib.scoring_rows(batches[j], rb, multiple_of)
      chunk = items[c : c + rows]
      c += len(chunk)
      plans.append(
          KeptScorePlan(
              source_batch=j,
              indices=tuple(x.index for x in chunk),
              source_rows=tuple(x.row for x in chunk),
              reused=tuple(x.reused for x in chunk),
              tokens=tuple(x.tokens for x in chunk),
              targets=tuple(x.targets for x in chunk),
              batch=rows,
              kept_batch=batches[j],
              rest_bucket=rb,
          )
      )
  return plans


@dataclasses.dataclass(frozen=True)
class PackedRestPlan:
  """Scored sequences continuing rows of one generated batch, their rests packed into rows of
  `row_length` (Rb) tokens, one call. A kept row's rests go back to back into pieces of at most
  Rb tokens (first fit, longest first); pieces go into rows (first fit, longest first), at most
  `sources_per_row` (K) pieces a row, since a row attends the kept KV of each of its pieces' rows.
  The rows run `block_rows` (R) at a time; the call's arrays hold `blocks` (NB) blocks,
  R x NB <= Bk rows."""

  source_batch: int  # the generated batch whose kept prompt KV they reuse
  kept_batch: int  # Bk: its rows
  block_rows: int  # R
  blocks: int  # NB
  row_length: int  # Rb
  sources_per_row: int  # K
  row_sources: tuple[tuple[int, ...], ...]  # the kept rows (<= K) of each packed row in use
  rests: tuple[KeptRest, ...]  # the sequences
  places: tuple[tuple[int, int, int], ...]  # (packed row, first token, its source in the row)

  @property
  def blocks_used(self) -> int:
    return -(-len(self.row_sources) // self.block_rows)

  def padded_slots(self) -> int:
    """Token slots the call computes: the blocks holding a rest, R rows of Rb tokens each."""
    return self.blocks_used * self.block_rows * self.row_length


REST_KEPT_KEYS = 512  # kept slots a packed rest row attends at most (K x Sb), unless K = 1


def rest_row_sources(row_length: int, suffix_slots: int) -> int:
  """K, the kept rows one packed rest row may continue, for a kept batch of Sb prompt slots: one
  per CONTINUATION_BUCKET (16) tokens (a prompt's three rests are ~15 tokens), and at most
  REST_KEPT_KEYS / Sb, since each is Sb more key slots for every token of the row (the float32
  attention scores of a block grow with K x Sb; at Sb >= 512 a row continues one prompt, whose
  block attends as many keys as a one-a-row call). Sb is in the program's key: no program more."""
  return max(1, min(row_length // buckets_lib.CONTINUATION_BUCKET, REST_KEPT_KEYS // suffix_slots))


def rest_blocks(
    kept_batch: int, row_length: int, sources: int, multiple_of: int = 1
) -> tuple[int, int]:
  """(R, NB) of a packed-rest call off a kept batch of Bk rows, K sources a row: R rows of Rb
  tokens a block (about buckets.SCORING_TOKENS_PER_CALL tokens, at most Bk / K: rows of K prompts
  each hold a whole batch's rests in one block where they fit; a multiple of the data axis) and
  as many blocks as Bk rows fill (at least one)."""
  r = buckets_lib.scoring_rows(max(kept_batch // sources, 1), row_length, multiple_of)
  return r, max(kept_batch // r, 1)


def plan_packed_rests(
    per_batch: dict[int, list[KeptRest]],
    *,
    batches: Sequence[int],
    slots: Sequence[int],
    row_length: int,
    multiple_of: int = 1,
) -> tuple[list[PackedRestPlan], dict[int, list[KeptRest]]]:
  """(the calls of packed rests, {generated batch: its rests longer than a row}, left to
  `kept_score_calls`). per_batch: `kept_rests`; batches, slots: the batch bucket and the prompt
  slots (Sb) of each generated batch."""
  plans, long = [], {}
  for j, items in sorted(per_batch.items()):
    k = rest_row_sources(row_length, slots[j])
    fit = [x for x in items if len(x.tokens) <= row_length]
    if len(fit) < len(items):
      long[j] = [x for x in items if len(x.tokens) > row_length]
    by_row: dict[int, list[KeptRest]] = {}
    for x in fit:
      by_row.setdefault(x.row, []).append(x)
    pieces = []  # (kept row, [(rest, offset in the piece)], tokens)
    for row, xs in sorted(by_row.items()):
      xs.sort(key=lambda x: -len(x.tokens))
      per_piece: dict[int, list] = {}
      for x, (q, first) in zip(xs, pack_segments([len(x.tokens) for x in xs], row_length)):
        per_piece.setdefault(q, []).append((x, first))
      for q in sorted(per_piece):
        pieces.append((row, per_piece[q], sum(len(x.tokens) for x, _ in per_piece[q])))
    pieces.sort(key=lambda p: -p[2])  # stable: kept row order among equal lengths
    rows: list[list[int]] = []  # the kept rows of each packed row, in their order there
    placed: list[tuple[KeptRest, int, int, int]] = []  # rest, packed row, first token, source
    at = pack_segments([n for _, _, n in pieces], row_length, max_per_row=k)
    for (row, members, _), (g, start) in zip(pieces, at):
      if g == len(rows):
        rows.append([])
      placed += [(x, g, start + first, len(rows[g])) for x, first in members]
      rows[g].append(row)
    r, nb = rest_blocks(batches[j], row_length, k, multiple_of)
    per_call = r * nb
    for c0 in range(0, len(rows), per_call):
      mine = [(x, g - c0, f, s) for x, g, f, s in placed if c0 <= g < c0 + per_call]
      plans.append(
          PackedRestPlan(
              source_batch=j,
              kept_batch=batches[j],
              block_rows=r,
              blocks=nb,
              row_length=row_length,
              sources_per_row=k,
              row_sources=tuple(tuple(src) for src in rows[c0 : c0 + per_call]),
              rests=tuple(x for x, _, _, _ in mine),
              places=tuple((g, f, s) for _, g, f, s in mine),
          )
      )
  return plans, long


def plan_scoring(
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    kept: KeptPrompts,
    prefix_length: int,
    batches: Sequence[int],
    rest_buckets: Sequence[int],
    rest_row_length: int = 0,
    slots: Sequence[int] = (),
    multiple_of: int = 1,
) -> tuple[list[PackedRestPlan], list[KeptScorePlan], list[int]]:
  """(packed-rest calls, one-rest-a-row calls, indices left to the fresh path) of sequences
  scored after a generated group: `plan_kept_scoring`'s routing, then, with rest_row_length
  (Rb) > 0, the rests of at most Rb tokens packed (plan_packed_rests; slots: each generated
  batch's prompt slots Sb) and only the longer ones one a row."""
  per_batch, fresh = kept_rests(
      contexts, continuations, kept=kept, prefix_length=prefix_length, longest=rest_buckets[-1]
  )
  packed = []
  if rest_row_length:
    packed, long = plan_packed_rests(
        per_batch,
        batches=batches,
        slots=slots,
        row_length=rest_row_length,
        multiple_of=multiple_of,
    )
    per_batch = long
  calls = kept_score_calls(
      per_batch, batches=batches, rest_buckets=rest_buckets, multiple_of=multiple_of
  )
  return packed, calls, fresh


def in_program_rests(
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    kept: KeptPrompts,
    prefix_length: int,
    batches: Sequence[int],
    rest_buckets: Sequence[int],
    rest_row_length: int,
    slots: Sequence[int],
    multiple_of: int = 1,
) -> dict[int, PackedRestPlan]:
  """{generated batch: the packed rests its generate program scores}: `plan_scoring`'s packed
  calls over every batch of the call (`kept`: all of its prompts; the KV is live inside the
  program, nothing is kept for it), the first call of each batch (a batch's rests fill one call
  but where a prompt's rests take several pieces). The others, and the sequences no packed call
  takes (longer rests, the fresh ones), are left to `continuation_logprobs`, which plans them
  again by the same rules."""
  packed, _, _ = plan_scoring(
      contexts,
      continuations,
      kept=kept,
      prefix_length=prefix_length,
      batches=batches,
      rest_buckets=rest_buckets,
      rest_row_length=rest_row_length,
      slots=slots,
      multiple_of=multiple_of,
  )
  out: dict[int, PackedRestPlan] = {}
  for plan in packed:
    out.setdefault(plan.source_batch, plan)
  return out
