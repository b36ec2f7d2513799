"""Teacher-forced log-probabilities of given continuations (the likelihood comparison of SPEC).

Two ways in, the same arithmetic per token:

- `score_continuations`: a scored sequence's context is computed afresh (on the group's shared
  prefix), then its continuation.
- `score_on_kept`: the sequence continues a prompt that `generate` has just run: its row's prompt
  KV was kept (programs.py), so the sequence reuses it up to their longest common token prefix
  and computes only its own tokens after it (layout.KeptPrompts finds the row).
- `score_packed_rests`: the same, with the rests of a kept row's sequences packed back to back
  into rows of Rb tokens (one program per kept batch shape, whatever the rests' lengths).

Same layout as generation (shared prefix, right-padded suffixes, per-row true positions). Full-vocab
logits are computed only where they are needed: the prompt pass asks for the last prompt position
only, and passes over the continuation (chunks of at most CHUNK tokens, [B, CHUNK, V] logits
each) give the logits of the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bmike_jax.engine.batch import KeptScoreBatch, PackedRests, ScoreBatch, SharedPrefix
from bmike_jax.engine.prefill import append_tokens, suffixes_on_prefix
from bmike_jax.model import KVCache, Llama

CHUNK = 64  # continuation positions per full-vocab logits block


def _token_logprobs(logits, targets):
  """logits [..., V] f32, targets [...] int32 -> log p(target) [...] (no [..., V] log-softmax)."""
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def score_continuations(
    model: Llama, params, *, prefix: SharedPrefix, batch: ScoreBatch, slots: int
):
  """Per-token log-probs of each row's continuation after its prompt.

  Returns [B, Cb] float32: entry c is log p(cont_c | prompt, cont_<c), 0 for c >= m_i (m_i: the
  row's continuation length).
  """
  sb = batch.tokens.shape[1]
  cb = batch.continuations.shape[1]
  logits, cache, key_valid = suffixes_on_prefix(
      model, params, prefix=prefix, tokens=batch.tokens, lengths=batch.lengths, slots=slots
  )  # [B, V]
  first = _token_logprobs(logits, batch.continuations[:, 0])[:, None]  # [B, 1]
  rest = _chunked_logprobs(  # the rest of the continuation, each token predicting the next
      model,
      params,
      prefix=prefix,
      cache=cache,
      key_valid=key_valid,
      tokens=batch.continuations[:, : cb - 1],
      targets=batch.continuations[:, 1:],
      lengths=batch.continuation_lengths,
      start_position=prefix.length + batch.lengths,
      write_index=sb,
  )
  logprobs = jnp.concatenate([first, rest], axis=1)  # [B, Cb]
  keep = jnp.arange(cb)[None, :] < batch.continuation_lengths[:, None]
  return jnp.where(keep, logprobs, 0.0)


def score_on_kept(
    model: Llama, params, *, prefix: SharedPrefix, kept: KVCache, batch: KeptScoreBatch, slots: int
):
  """Per-token log-probs of sequences that continue the prompts of one generated batch.

  kept: that batch's prompt-suffix KV (Bk rows, Sb slots; on `prefix`, the KV it was computed
  on). Row i gathers row `source_rows[i]` of it, keeps its first `reused[i]` slots and writes its
  own `tokens` [B, Rb] at slots [Sb, Sb + Rb) of a cache of `slots` (>= Sb + Rb) at their true
  positions P + reused + t. Returns [B, Rb] float32: entry t is log p(targets_t | the sequence
  up to tokens_t), 0 for t >= lengths.

  Recompiles per (B, Bk, Pb, Sb, Rb) (the engine's B: buckets.scoring_rows(Bk, Rb))."""
  sb, rb = kept.length, batch.tokens.shape[1]
  cache = kept.take_rows(batch.source_rows).pad_slots(slots - sb)  # B rows, S slots
  key_valid = jnp.arange(slots, dtype=jnp.int32)[None, :] < batch.reused[:, None]  # [B, S]
  logprobs = _chunked_logprobs(
      model,
      params,
      prefix=prefix,
      cache=cache,
      key_valid=key_valid,
      tokens=batch.tokens,
      targets=batch.targets,
      lengths=batch.lengths,
      start_position=prefix.length + batch.reused,
      write_index=sb,
  )  # [B, Rb]
  keep = jnp.arange(rb)[None, :] < batch.lengths[:, None]
  return jnp.where(keep, logprobs, 0.0)


def _chunked_logprobs(
    model,
    params,
    *,
    prefix,
    cache,
    key_valid,
    tokens,
    targets,
    lengths,
    start_position,
    write_index,
):
  """log p(targets[:, t] | ..., tokens[:, t]) [B, T] float32: `tokens` [B, T] (`lengths` [B] real)
  written at slots [write_index, write_index + T) at positions start_position + t, in chunks of
  CHUNK tokens, so that at most [B, CHUNK, V] logits exist at once. [B, 0] when T = 0."""
  parts = [jnp.zeros((tokens.shape[0], 0), jnp.float32)]
  for c0 in range(0, tokens.shape[1], CHUNK):
    c1 = min(c0 + CHUNK, tokens.shape[1])
    logits, cache, key_valid = append_tokens(
        model,
        params,
        cache=cache,
        key_valid=key_valid,
        tokens=tokens[:, c0:c1],
        start_position=start_position + c0,
        num_valid=jnp.clip(lengths - c0, 0, c1 - c0),
        write_index=write_index + c0,
        prefix=prefix.kv,
        prefix_mask=prefix.mask(),
    )  # [B, c, V]
    parts.append(_token_logprobs(logits, targets[:, c0:c1]))
  return jnp.concatenate(parts, axis=1)


def score_packed_rests(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    kept: KVCache,
    batch: PackedRests,
    place_block=lambda kv: kv,
):
  """Per-token log-probs of packed rests (layout.plan_packed_rests) continuing the prompts of one
  generated batch, R packed rows at a time: a `fori_loop` with a traced bound over the blocks
  holding a rest, so one program serves every packing off a kept batch of (Bk rows, Sb slots).

  kept: that batch's prompt-suffix KV (on `prefix`). A block gathers, for each of its rows, the
  kept rows of its K sources side by side (K x Sb slots), appends Rb slots for its own tokens,
  and runs them with a mask: the prefix, the slots [0, reused) of the token's own source, and its
  rest's earlier tokens. place_block: put a block's KV (R rows) on the mesh. Returns
  [R, NB, Rb] float32: log p(targets | the sequence up to the token), 0 at padding.

  Recompiles per (Bk, Pb, Sb) and the (R, NB, Rb, K) that Bk, Sb and Rb give
  (layout.rest_blocks, layout.rest_row_sources)."""
  r, nb, rb = batch.tokens.shape
  k, sb = batch.sources.shape[-1], kept.length
  index = jnp.arange(rb, dtype=jnp.int32)
  causal = index[:, None] >= index[None, :]  # [Rb, Rb]
  slot = jnp.arange(k * sb, dtype=jnp.int32)  # the K sources' kept slots, side by side
  section, within = slot // sb, slot % sb  # [K x Sb]: which source, which of its slots
  blocks = jnp.sum(jnp.any(batch.segments >= 0, axis=(0, 2)).astype(jnp.int32))
  prefix_mask = prefix.mask()  # [Pb] or None: the same for every block

  def block(i, out):
    take = lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)  # [R, ...]
    seg = take(batch.segments)  # [R, Rb]
    own = (seg[:, :, None] == seg[:, None, :]) & causal[None] & (seg >= 0)[:, None, :]
    old = (section[None, None, :] == take(batch.source_slots)[:, :, None]) & (
        within[None, None, :] < take(batch.reused)[:, :, None]
    )  # [R, Rb, K x Sb]
    rows = jnp.take(take(batch.sources), section, axis=1)  # [R, K x Sb]: each slot's kept row
    cache = place_block(
        kept.gather(rows, jnp.broadcast_to(within, rows.shape)).pad_slots(rb)
    )  # R rows, K x Sb + Rb slots
    logits, _ = model.apply(
        {"params": params},
        take(batch.tokens),
        prefix.length + take(batch.positions),
        cache,
        k * sb,
        jnp.concatenate([old, own], axis=-1),  # [R, Rb, K x Sb + Rb]
        prefix=prefix.kv,
        prefix_mask=prefix_mask,
    )  # [R, Rb, V]
    logprobs = jnp.where(seg >= 0, _token_logprobs(logits, take(batch.targets)), 0.0)
    return jax.lax.dynamic_update_index_in_dim(out, logprobs.astype(jnp.float32), i, axis=1)

  return jax.lax.fori_loop(0, blocks, block, jnp.zeros((r, nb, rb), jnp.float32))
