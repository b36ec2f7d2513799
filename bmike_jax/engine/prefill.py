"""Prefill: the shared prefix's KV once per group, then every batch's own suffix on top of it.

The prefix KV is never copied into the rows' caches: every program takes it as a separate input
and the model attends it as a shared block (see model/llama.py), so a row's cache holds only its
own suffix and new tokens.

These are traceable functions (the engine jits them, see programs.py). `append_tokens` is the one
primitive that writes a chunk of tokens into the cache; prefix, suffix, decode steps and scored
continuations all go through it, so masks and positions are built in one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bmike_jax.engine.batch import PackedBatch, SharedPrefix, StemmedBatch, SuffixBatch
from bmike_jax.engine.state import DecodeState, StopRule, record_token
from bmike_jax.model import KVCache, Llama
from bmike_jax.model.row_deltas import RowDeltas


def append_tokens(
    model: Llama,
    params,
    *,
    cache: KVCache,
    key_valid,
    tokens,
    start_position,
    num_valid,
    write_index,
    logits_index=None,
    prefix: KVCache | None = None,
    prefix_mask=None,
    deltas: RowDeltas | None = None,
):
  """Write `tokens` [B, T] at slots [write_index, write_index + T) of `cache` and run the model
  (write_index [] for every row, or [B] each row's own).

  start_position: [B] int32, true position of tokens[:, 0] (token t is at start_position + t).
  num_valid: [B] int32, tokens[:, :num_valid] are real, the rest padding (masked as keys).
  key_valid: [B, S] bool, slots already holding real tokens of the row.
  prefix: shared KV (1 row, Pb slots) every query attends first (slots where prefix_mask [Pb]).
  deltas: each row's own weight delta (model/row_deltas.py), or None.
  Query t attends the valid slots up to its own slot (causal within the chunk).
  Returns (logits [B, V] if logits_index [B] is given else [B, T, V], cache, key_valid [B, S]).
  """
  _, t = tokens.shape
  s = cache.length
  offsets = jnp.arange(t, dtype=jnp.int32)  # [T]
  positions = start_position[:, None] + offsets[None, :]  # [B, T]
  slots = jnp.arange(s, dtype=jnp.int32)  # [S]
  first = jnp.reshape(write_index, (-1, 1))  # [1, 1] (every row alike) or [B, 1] (a row's own)
  written = (slots[None, :] >= first) & (slots[None, :] < first + num_valid[:, None])
  key_valid = key_valid | written  # [B, S]
  causal = slots[None, None, :] <= (first + offsets[None, :])[:, :, None]  # [1 or B, T, S]
  mask = key_valid[:, None, :] & causal  # [B, T, S]
  logits, cache = model.apply(
      {"params": params},
      tokens,
      positions,
      cache,
      write_index,
      mask,
      logits_index=logits_index,
      prefix=prefix,
      prefix_mask=prefix_mask,
      deltas=deltas,
  )
  return logits, cache, key_valid


def prefix_cache(model: Llama, params, *, tokens, prefix_length) -> KVCache:
  """KV of the shared prefix: tokens [1, Pb] (right-padded), prefix_length [] int32 (P).

  Returns a KVCache of 1 row and Pb slots, in the model's layout (slots >= P hold padding, masked
  by `SharedPrefix.mask`)."""
  _, pb = tokens.shape
  cache = KVCache.zeros(model.config, 1, pb, model.dtype, per_layer=not model.scan_layers)
  # Only the KV is needed: ask for the logits of a single position (the cheapest output).
  _, cache, _ = append_tokens(
      model,
      params,
      cache=cache,
      key_valid=jnp.zeros((1, pb), bool),
      tokens=tokens,
      start_position=jnp.zeros((1,), jnp.int32),
      num_valid=jnp.reshape(prefix_length, (1,)),
      write_index=0,
      logits_index=jnp.zeros((1,), jnp.int32),
  )
  return cache


def start_cache(model: Llama, batch: int, slots: int):
  """An empty per-row cache of B rows and S slots in the model's layout (the shared prefix lives
  apart, see layout.py) and key_valid [B, S] all False."""
  cache = KVCache.zeros(model.config, batch, slots, model.dtype, per_layer=not model.scan_layers)
  return cache, jnp.zeros((batch, slots), bool)


def suffixes_on_prefix(
    model: Llama, params, *, prefix: SharedPrefix, tokens, lengths, slots: int, deltas=None
):
  """Each row's suffix tokens [B, Sb] (`lengths` [B] real) on top of the shared prefix, written
  into a fresh per-row cache of `slots`: the first pass of generation and of scoring alike.

  Returns (logits [B, V] at each row's last suffix token, cache (B rows, S slots), key_valid
  [B, S])."""
  b = tokens.shape[0]
  cache, key_valid = start_cache(model, b, slots)
  return append_tokens(
      model,
      params,
      cache=cache,
      key_valid=key_valid,
      tokens=tokens,
      start_position=jnp.broadcast_to(prefix.length, (b,)).astype(jnp.int32),
      num_valid=lengths,
      write_index=0,
      logits_index=lengths - 1,
      prefix=prefix.kv,
      prefix_mask=prefix.mask(),
      deltas=deltas,
  )


def prefill(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    batch: SuffixBatch,
    stop: StopRule,
    slots: int,
    max_new_tokens: int,
    deltas: RowDeltas | None = None,
) -> DecodeState:
  """Run each row's suffix on top of the shared prefix and pick the first new token (each row on
  its own weight delta where `deltas` is given).

  Returns the DecodeState after one generated token (step 1), cache of B rows and S slots.
  """
  _, sb = batch.tokens.shape
  logits, cache, key_valid = suffixes_on_prefix(
      model,
      params,
      prefix=prefix,
      tokens=batch.tokens,
      lengths=batch.lengths,
      slots=slots,
      deltas=deltas,
  )
  return _first_token(
      jnp.argmax(logits, axis=-1),
      cache=cache,
      key_valid=key_valid,
      next_position=prefix.length + batch.lengths,
      write_index=sb,
      active=batch.active,
      stop=stop,
      max_new_tokens=max_new_tokens,
  )


def prefill_stemmed(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    batch: StemmedBatch,
    stop: StopRule,
    slots: int,
    max_new_tokens: int,
) -> DecodeState:
  """`prefill` of prompts split into record stems and rests (layout.plan_generate).

  The stems run once each on the shared prefix (R rows of Tb slots); each row starts from its
  stem's KV (gathered, slots [0, Tb), its stem's tokens real), runs its rest at slots [Tb, Tb + Sb)
  at its true positions, then its rest's slots are moved up to follow its stem, so that the row
  holds its prompt at slots [0, stem + rest) as `prefill` of the whole suffix leaves it; decode
  and the kept KV go on from there unchanged. Returns the DecodeState after one generated token,
  cache of B rows and S >= Tb + Sb slots, write_index Tb + Sb."""
  tb, sb = batch.stem_tokens.shape[1], batch.tokens.shape[1]
  _, stem_cache, _ = suffixes_on_prefix(  # [R rows, Tb slots]
      model, params, prefix=prefix, tokens=batch.stem_tokens, lengths=batch.stem_lengths, slots=tb
  )
  stem = batch.row_stem_lengths[:, None]  # [B, 1]
  slot = jnp.arange(slots, dtype=jnp.int32)[None, :]  # [1, S]
  logits, cache, _ = append_tokens(
      model,
      params,
      cache=stem_cache.take_rows(batch.row_stems).pad_slots(slots - tb),  # B rows, S slots
      key_valid=slot < stem,
      tokens=batch.tokens,
      start_position=prefix.length + batch.row_stem_lengths,
      num_valid=batch.lengths,
      write_index=tb,
      logits_index=batch.lengths - 1,
      prefix=prefix.kv,
      prefix_mask=prefix.mask(),
  )
  source = jnp.clip(jnp.where(slot < stem, slot, slot - stem + tb), 0, slots - 1)  # [B, S]
  lengths = batch.row_stem_lengths + batch.lengths  # [B]
  return _first_token(
      jnp.argmax(logits, axis=-1),
      cache=cache.gather_slots(source),
      key_valid=slot < lengths[:, None],
      next_position=prefix.length + lengths,
      write_index=tb + sb,
      active=batch.active,
      stop=stop,
      max_new_tokens=max_new_tokens,
  )


def prefill_packed(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    batch: PackedBatch,
    stop: StopRule,
    slots: int,
    max_new_tokens: int,
    block_rows: int,
    place_block=lambda kv: kv,
    place_rows=lambda kv: kv,
) -> DecodeState:
  """`prefill` of suffixes packed into rows of T tokens (layout.pack_batch), `block_rows` (R)
  rows at a time: a `fori_loop` with a traced bound over the blocks holding a prompt (so one
  program serves every packing of a (B, Pb, Sb) batch).

  A packed token attends the shared prefix and the earlier tokens of its own segment (its
  prompt) only, and a rest's token its record stem's segment too (`PackedBatch.parents`), at its
  true position P + offset, so each prompt's KV and last logits are those of
  its own row in `prefill`. After each block, the KV of its prompts is gathered into their rows
  of S slots (real up to each length) and their first tokens picked; decoding goes on from the
  state `prefill` leaves (write_index Sb). place_block / place_rows: put a block's KV (R rows)
  and the rows' cache (B rows) on the mesh (rows over the data axis). Returns the DecodeState
  after one generated token."""
  _, _, t = batch.tokens.shape  # [R, NB, T]
  b, sb = batch.slots.shape
  index = jnp.arange(t, dtype=jnp.int32)
  causal = index[:, None] >= index[None, :]  # [T, T]
  block_of = batch.rows // block_rows  # [B]
  local = batch.rows % block_rows  # [B]: its row in its block
  last = jnp.take_along_axis(batch.slots, (batch.lengths - 1)[:, None], axis=1)[:, 0]  # [B]
  blocks = jnp.max(jnp.where(batch.active, block_of, 0)) + 1
  per_layer = not model.scan_layers
  prefix_mask = prefix.mask()  # [Pb] or None: the same for every block

  def block(i, carry):
    rows_kv, first = carry  # B rows x S slots; [B] int32
    take = lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)  # [R, T]
    seg, par = take(batch.segments), take(batch.parents)  # [R, T]: rows over the data axis
    # query q attends key k of its own segment or of its stem's, causally; never padding
    own = (seg[:, :, None] == seg[:, None, :]) | (par[:, :, None] == seg[:, None, :])
    mask = own & causal[None] & (seg >= 0)[:, None, :]  # [R, T, T]
    logits, kv = model.apply(  # logits [B, V]: each prompt's last token, read in this block
        {"params": params},
        take(batch.tokens),
        prefix.length + take(batch.offsets),
        place_block(KVCache.zeros(model.config, block_rows, t, model.dtype, per_layer=per_layer)),
        0,
        mask,
        logits_index=(local, last),
        prefix=prefix.kv,
        prefix_mask=prefix_mask,
    )
    mine = block_of == i  # [B]: the prompts of this block
    rows_kv = place_rows(rows_kv.where_rows(mine, kv.gather(local, source)))  # B rows, S slots
    first = jnp.where(mine, jnp.argmax(logits, axis=-1).astype(jnp.int32), first)
    return rows_kv, first

  # Slots past Sb read the last packed token too: masked (key_valid) until decode writes them.
  source = jnp.pad(batch.slots, ((0, 0), (0, slots - sb)), mode="edge")  # [B, S]
  start = KVCache.zeros(model.config, b, slots, model.dtype, per_layer=per_layer)
  rows_kv, first = jax.lax.fori_loop(0, blocks, block, (start, jnp.zeros((b,), jnp.int32)))
  slot = jnp.arange(slots, dtype=jnp.int32)[None, :]  # [1, S]
  return _first_token(
      first,
      cache=rows_kv,  # B rows, S slots
      key_valid=slot < batch.lengths[:, None],
      next_position=prefix.length + batch.lengths,
      write_index=sb,
      active=batch.active,
      stop=stop,
      max_new_tokens=max_new_tokens,
  )


def _first_token(
    token, *, cache, key_valid, next_position, write_index, active, stop, max_new_tokens
) -> DecodeState:
  """The DecodeState of prefilled rows after recording their first generated token [B] int32
  (the argmax of the logits at each row's last prompt token)."""
  b = token.shape[0]
  state = DecodeState(
      cache=cache,
      key_valid=key_valid,
      next_position=next_position,
      write_index=jnp.asarray(write_index, jnp.int32),
      last_token=jnp.zeros((b,), jnp.int32),
      out=jnp.zeros((b, max_new_tokens), jnp.int32),
      num_out=jnp.zeros((b,), jnp.int32),
      done=~active,
      step=jnp.asarray(0, jnp.int32),
  )
  return record_token(state, token.astype(jnp.int32), stop)
