"""Teacher-forced log-probabilities of given continuations (the likelihood comparison of SPEC).

Same layout as generation (shared prefix, right-padded suffixes, per-row true positions). Full-vocab
logits are computed only where they are needed: the prompt pass asks for the last prompt position
only, and passes over the continuation (chunks of at most CHUNK tokens, [B, CHUNK, V] logits
each) give the logits of the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bmike_jax.engine.prefill import append_tokens, prefix_mask, start_cache
from bmike_jax.model import KVCache, Llama

CHUNK = 64  # continuation positions per full-vocab logits block


def _token_logprobs(logits, targets):
  """logits [..., V] f32, targets [...] int32 -> log p(target) [...] (no [..., V] log-softmax)."""
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def score_continuations(model: Llama, params, prefix: KVCache | None, prefix_length, tokens,
                        lengths, continuations, continuation_lengths, *, slots: int):
  """Per-token log-probs of each row's continuation after its prompt.

  prefix: [L, 1, Pb, KVH, Dh] or None; prefix_length: [] int32 (P)
  tokens: [B, Sb] prompt suffixes (right-padded), lengths: [B] int32 (n_i >= 1)
  continuations: [B, Cb] (right-padded), continuation_lengths: [B] int32 (m_i >= 0)
  Returns [B, Cb] float32: entry c is log p(cont_c | prompt, cont_<c), 0 for c >= m_i.
  """
  b, sb = tokens.shape
  cb = continuations.shape[1]
  shared = dict(prefix=prefix, prefix_mask=prefix_mask(prefix, prefix_length))
  cache, key_valid = start_cache(model, b, slots)
  start = jnp.broadcast_to(prefix_length, (b,)).astype(jnp.int32)
  logits, cache, key_valid = append_tokens(model, params, cache, key_valid, tokens, start, lengths,
                                           0, logits_index=lengths - 1, **shared)  # [B, V]
  parts = [_token_logprobs(logits, continuations[:, 0])[:, None]]             # [B, 1]
  # The rest of the continuation in chunks, so that at most [B, CHUNK, V] logits exist at once.
  for c0 in range(0, cb - 1, CHUNK):
    c1 = min(c0 + CHUNK, cb - 1)
    chunk_logits, cache, key_valid = append_tokens(
        model, params, cache, key_valid, continuations[:, c0:c1], start + lengths + c0,
        jnp.clip(continuation_lengths - c0, 0, c1 - c0), sb + c0, **shared)     # [B, c, V]
    parts.append(_token_logprobs(chunk_logits, continuations[:, c0 + 1:c1 + 1]))
  logprobs = jnp.concatenate(parts, axis=1)                                    # [B, Cb]
  keep = jnp.arange(cb)[None, :] < continuation_lengths[:, None]
  return jnp.where(keep, logprobs, 0.0)
