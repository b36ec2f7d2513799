"""The named inputs of the engine's programs: the group's shared prefix and one batch of rows.

Each is a pytree dataclass. Its shapes (`spec`) and its shardings (`row_shardings`) are built from
the same fields, and `place` checks every array against the spec before it goes to the devices, so
a call cannot pass two arrays in each other's place: the fields are named, and a swap of two
fields fails on their shape or dtype on any number of devices.

B: batch bucket, Sb: suffix length bucket, Cb: continuation length bucket, Pb: prefix bucket,
Rb: length bucket of the tokens a scored sequence computes past a generated prompt's kept KV
(or, packed, the tokens of a row of such rests).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bmike_jax.engine import sharding as sh
from bmike_jax.model import KVCache


@flax.struct.dataclass
class SharedPrefix:
  """The group's shared token prefix (its demonstrations), computed once per group."""

  kv: KVCache | None  # 1 row, Pb slots (slots >= length are padding); None: Pb = 0
  length: jax.Array  # [] int32: P, the prefix's real tokens (0 without a prefix)

  def mask(self):
    """[Pb] bool: the slots holding real tokens (None without a prefix)."""
    if self.kv is None:
      return None
    return jnp.arange(self.kv.length, dtype=jnp.int32) < self.length


@flax.struct.dataclass
class SuffixBatch:
  """One batch of the group's prompts after the shared prefix (generation)."""

  tokens: jax.Array  # [B, Sb] int32: right-padded suffixes
  lengths: jax.Array  # [B] int32: real tokens of each row (>= 1)
  active: jax.Array  # [B] bool: real rows (False: padding rows of the batch bucket)

  @staticmethod
  def spec(*, batch: int, suffix_bucket: int) -> "SuffixBatch":
    return SuffixBatch(
        tokens=jax.ShapeDtypeStruct((batch, suffix_bucket), jnp.int32),
        lengths=jax.ShapeDtypeStruct((batch,), jnp.int32),
        active=jax.ShapeDtypeStruct((batch,), jnp.bool_),
    )


@flax.struct.dataclass
class StemmedBatch:
  """One batch of the group's prompts after the shared prefix, split into record stems (run once
  each, in a block of R rows) and each row's rest (run on its stem); see layout.plan_generate."""

  stem_tokens: jax.Array  # [R, Tb] int32: right-padded stems
  stem_lengths: jax.Array  # [R] int32: real tokens of each stem (>= 1; dummies 1)
  row_stems: jax.Array  # [B] int32: each row's stem (any one where its stem length is 0)
  row_stem_lengths: jax.Array  # [B] int32: its stem's tokens (0: no stem)
  tokens: jax.Array  # [B, Sb] int32: right-padded rests (the tokens after the stem)
  lengths: jax.Array  # [B] int32: real rest tokens of each row (>= 1)
  active: jax.Array  # [B] bool: real rows

  @staticmethod
  def spec(*, batch: int, suffix_bucket: int, stem_rows: int, stem_bucket: int) -> "StemmedBatch":
    i32 = jnp.int32
    return StemmedBatch(
        stem_tokens=jax.ShapeDtypeStruct((stem_rows, stem_bucket), i32),
        stem_lengths=jax.ShapeDtypeStruct((stem_rows,), i32),
        row_stems=jax.ShapeDtypeStruct((batch,), i32),
        row_stem_lengths=jax.ShapeDtypeStruct((batch,), i32),
        tokens=jax.ShapeDtypeStruct((batch, suffix_bucket), i32),
        lengths=jax.ShapeDtypeStruct((batch,), i32),
        active=jax.ShapeDtypeStruct((batch,), jnp.bool_),
    )


@flax.struct.dataclass
class PackedBatch:
  """One batch of the group's prompts after the shared prefix, prefilled packed
  (layout.pack_batch): the suffixes are segments of rows of T tokens, run R rows (one block) at a
  time, each token attending the prefix and its own segment's earlier tokens only; each prompt's
  KV is gathered into its own row of Sb prompt slots, the layout a `SuffixBatch` prefill leaves
  (decode and the kept KV go on unchanged). The token arrays are block-minor, [R, NB, T]: packed
  row g is [g % R, g // R], so block i ([:, i]) has its R rows split over the data axis like any
  batch's rows, and NB x R is the most rows B suffixes may take (layout.packed_row_count); the
  loop runs the blocks holding a prompt only. With record stems (layout.pack_batch), a stem is a
  segment of its own, once, before its rows' rests in the same packed row; a rest's tokens attend
  the stem's too (`parents`), and its row's prompt slots gather the stem's KV, then the rest's."""

  tokens: jax.Array  # [R, NB, T] int32: the segments, back to back; padding after the last
  offsets: jax.Array  # [R, NB, T] int32: each token's index in its suffix (position P + offset)
  # [R, NB, T] int32: each token's segment: its prompt (its row in the batch) or, for a stem's
  # tokens, B + the stem's index; -1 padding
  segments: jax.Array
  parents: jax.Array  # [R, NB, T] int32: the stem segment a rest's token also attends, else -1
  rows: jax.Array  # [B] int32: the packed row g holding each prompt (dummies: 0)
  slots: jax.Array  # [B, Sb] int32: the packed token of each prompt slot (clipped into [0, T))
  lengths: jax.Array  # [B] int32: real suffix tokens of each prompt (>= 1; dummies 1)
  active: jax.Array  # [B] bool: real rows

  @staticmethod
  def spec(*, batch: int, suffix_bucket: int, packed_rows: int, blocks: int, packed_length: int):
    """packed_rows: R, the rows of one block; blocks: NB, the blocks the arrays hold."""
    i32 = jnp.int32
    grid = (packed_rows, blocks, packed_length)
    return PackedBatch(
        tokens=jax.ShapeDtypeStruct(grid, i32),
        offsets=jax.ShapeDtypeStruct(grid, i32),
        segments=jax.ShapeDtypeStruct(grid, i32),
        parents=jax.ShapeDtypeStruct(grid, i32),
        rows=jax.ShapeDtypeStruct((batch,), i32),
        slots=jax.ShapeDtypeStruct((batch, suffix_bucket), i32),
        lengths=jax.ShapeDtypeStruct((batch,), i32),
        active=jax.ShapeDtypeStruct((batch,), jnp.bool_),
    )

  @staticmethod
  def build(
      suffixes,
      segments,
      *,
      batch: int,
      suffix_bucket: int,
      packed_rows: int,
      blocks: int,
      packed_length: int,
      row_stems=(),
      stem_lengths=(),
      stem_segments=(),
  ) -> "PackedBatch":
    """Host arrays of `suffixes` (the batch's real rows, in order) placed at `segments`
    [(packed row g, first token)] (layout.pack_batch); rows past len(suffixes) are dummies.
    With stems: row_stems (per row, its stem or -1), stem_lengths and stem_segments (per stem,
    its tokens and its (g, first)); a stemmed row's segment then holds its rest only."""
    shape = (packed_rows, blocks, packed_length)
    tokens, offsets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    owner, parents = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
    rows = np.zeros((batch,), np.int32)
    slots = np.zeros((batch, suffix_bucket), np.int32)
    lengths, active = np.ones((batch,), np.int32), np.zeros((batch,), bool)
    row_stems = row_stems or (-1,) * len(suffixes)
    for b, (ids, (g, first), k) in enumerate(zip(suffixes, segments, row_stems)):
      n, at = len(ids), (g % packed_rows, g // packed_rows)
      m = stem_lengths[k] if k >= 0 else 0  # stem tokens before the row's own segment
      span = slice(first, first + n - m)
      tokens[at][span], offsets[at][span], owner[at][span] = ids[m:], np.arange(m, n), b
      rows[b], lengths[b], active[b] = g, n, True
      own = first + np.arange(suffix_bucket - m)
      if m:
        g0, first0 = stem_segments[k]
        assert g0 == g, "a stem and its rows' rests share one packed row"
        stem = slice(first0, first0 + m)
        tokens[at][stem], offsets[at][stem], owner[at][stem] = ids[:m], np.arange(m), batch + k
        parents[at][span] = batch + k
        own = np.concatenate([first0 + np.arange(m), own])
      slots[b] = np.minimum(own, packed_length - 1)
    return PackedBatch(
        tokens=tokens,
        offsets=offsets,
        segments=owner,
        parents=parents,
        rows=rows,
        slots=slots,
        lengths=lengths,
        active=active,
    )


@flax.struct.dataclass
class ScoreBatch:
  """One batch of prompt suffixes with the continuations whose log-probs are scored."""

  tokens: jax.Array  # [B, Sb] int32: right-padded prompt suffixes
  lengths: jax.Array  # [B] int32: real suffix tokens (>= 1)
  continuations: jax.Array  # [B, Cb] int32: right-padded continuations
  continuation_lengths: jax.Array  # [B] int32: real continuation tokens (>= 0)

  @staticmethod
  def spec(*, batch: int, suffix_bucket: int, continuation_bucket: int) -> "ScoreBatch":
    return ScoreBatch(
        tokens=jax.ShapeDtypeStruct((batch, suffix_bucket), jnp.int32),
        lengths=jax.ShapeDtypeStruct((batch,), jnp.int32),
        continuations=jax.ShapeDtypeStruct((batch, continuation_bucket), jnp.int32),
        continuation_lengths=jax.ShapeDtypeStruct((batch,), jnp.int32),
    )


@flax.struct.dataclass
class KeptScoreBatch:
  """Scored sequences that continue rows of one generated batch: a sequence reuses its row's kept
  prompt KV (the suffix slots [0, reused)) and computes only its own tokens after them."""

  source_rows: jax.Array  # [B] int32: the row of the generated batch whose kept KV is reused
  reused: jax.Array  # [B] int32: kept suffix slots reused: the sequence's tokens [P, P + reused)
  tokens: jax.Array  # [B, Rb] int32: the sequence's tokens from P + reused on, but its last one
  targets: jax.Array  # [B, Rb] int32: the token after each of `tokens` (right-padded alike)
  lengths: jax.Array  # [B] int32: real tokens of each row (>= 1)

  @staticmethod
  def spec(*, batch: int, rest_bucket: int) -> "KeptScoreBatch":
    return KeptScoreBatch(
        source_rows=jax.ShapeDtypeStruct((batch,), jnp.int32),
        reused=jax.ShapeDtypeStruct((batch,), jnp.int32),
        tokens=jax.ShapeDtypeStruct((batch, rest_bucket), jnp.int32),
        targets=jax.ShapeDtypeStruct((batch, rest_bucket), jnp.int32),
        lengths=jax.ShapeDtypeStruct((batch,), jnp.int32),
    )


@flax.struct.dataclass
class PackedRests:
  """Scored sequences continuing rows of one generated batch, their rests packed
  (layout.plan_packed_rests): rows of Rb tokens, each row holding the rests of at most K kept
  rows (its `sources`), back to back; a token attends the shared prefix, the first `reused`
  slots of its own kept row (`source_slots`: which of the row's K) and its own rest's earlier
  tokens, at its true position P + `positions`. Block-minor as `PackedBatch`: packed row g is
  [g % R, g // R], so a block's R rows split over the data axis; the loop runs the blocks holding
  a rest only."""

  tokens: jax.Array  # [R, NB, Rb] int32: each rest's tokens, but its last one; 0 padding
  targets: jax.Array  # [R, NB, Rb] int32: the token after each
  positions: jax.Array  # [R, NB, Rb] int32: each token's position after the prefix
  reused: jax.Array  # [R, NB, Rb] int32: the kept slots each token attends ([0, reused))
  segments: jax.Array  # [R, NB, Rb] int32: each token's rest (its index in the call), -1 padding
  source_slots: jax.Array  # [R, NB, Rb] int32: which of its row's K sources each token continues
  sources: jax.Array  # [R, NB, K] int32: the kept rows each packed row continues (unused: 0)

  @staticmethod
  def spec(*, block_rows: int, blocks: int, row_length: int, sources: int) -> "PackedRests":
    grid = jax.ShapeDtypeStruct((block_rows, blocks, row_length), jnp.int32)
    return PackedRests(
        tokens=grid,
        targets=grid,
        positions=grid,
        reused=grid,
        segments=grid,
        source_slots=grid,
        sources=jax.ShapeDtypeStruct((block_rows, blocks, sources), jnp.int32),
    )

  @staticmethod
  def empty(spec: "PackedRests") -> "PackedRests":
    """Host arrays of `spec`'s shapes holding no rest (a loop over them runs no block)."""
    grid = spec.tokens.shape
    zeros = np.zeros(grid, np.int32)
    return PackedRests(
        tokens=zeros,
        targets=zeros,
        positions=zeros,
        reused=zeros,
        segments=np.full(grid, -1, np.int32),
        source_slots=zeros,
        sources=np.zeros(spec.sources.shape, np.int32),
    )

  @staticmethod
  def build(plan) -> "PackedRests":
    """Host arrays of a layout.PackedRestPlan."""
    r, nb, rb = plan.block_rows, plan.blocks, plan.row_length
    grid = lambda: np.zeros((r, nb, rb), np.int32)
    tokens, targets, positions, reused, source_slots = grid(), grid(), grid(), grid(), grid()
    segments = np.full((r, nb, rb), -1, np.int32)
    sources = np.zeros((r, nb, plan.sources_per_row), np.int32)
    for g, rows in enumerate(plan.row_sources):
      sources[g % r, g // r, : len(rows)] = rows
    for k, (x, (g, first, source)) in enumerate(zip(plan.rests, plan.places)):
      at, n = (g % r, g // r), len(x.tokens)
      span = slice(first, first + n)
      tokens[at][span], targets[at][span] = x.tokens, x.targets
      positions[at][span] = x.reused + np.arange(n)
      reused[at][span], segments[at][span], source_slots[at][span] = x.reused, k, source
    return PackedRests(
        tokens=tokens,
        targets=targets,
        positions=positions,
        reused=reused,
        segments=segments,
        source_slots=source_slots,
        sources=sources,
    )


def row_shardings(spec, mesh: Mesh):
  """The spec's structure with each array's rows (axis 0) split over the mesh's data axis."""
  return jax.tree_util.tree_map(lambda s: sh.batch_sharding(mesh, len(s.shape), s.shape[0]), spec)


def check(rows, spec) -> None:
  """ValueError naming the field whose array differs from the spec in shape or dtype."""
  names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(spec)[0]]
  got, want = jax.tree_util.tree_leaves(rows), jax.tree_util.tree_leaves(spec)
  if len(got) != len(want):
    raise ValueError(f"{type(rows).__name__}: {len(got)} arrays, the spec has {len(want)}")
  for name, x, s in zip(names, got, want):
    if tuple(x.shape) != tuple(s.shape) or np.dtype(x.dtype) != np.dtype(s.dtype):
      raise ValueError(
          f"{type(rows).__name__}{name}: {x.dtype}{list(x.shape)}, expected "
          f"{np.dtype(s.dtype)}{list(s.shape)}"
      )


def place(rows, spec, mesh: Mesh):
  """Host arrays of a batch (checked against `spec`) as global arrays, rows over the data axis."""
  check(rows, spec)
  return jax.tree_util.tree_map(sh.to_global, rows, row_shardings(spec, mesh))
