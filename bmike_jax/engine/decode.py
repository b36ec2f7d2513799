"""Greedy decoding on device: a `lax.while_loop` over steps, the KV cache updated in place.

No host round trip per token: the loop runs until every row is done (EOS, a quote token, or
max_new_tokens generated). The engine runs `greedy_decode` in the same jitted program as the
prefill (programs.py), so the cache buffer prefill allocates is updated in place by every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bmike_jax.engine.prefill import append_tokens, prefix_mask
from bmike_jax.engine.state import DecodeState, StopRule, record_token
from bmike_jax.model import KVCache, Llama


def decode_step(model: Llama, params, prefix: KVCache | None, mask, state: DecodeState,
                stop: StopRule) -> DecodeState:
  """Feed `last_token` [B] at slot `write_index`, pick and record the next token.

  prefix: the shared KV [L, 1, Pb, KVH, Dh] or None; mask: its real slots [Pb]."""
  b = state.last_token.shape[0]
  logits, cache, key_valid = append_tokens(
      model, params, state.cache, state.key_valid, state.last_token[:, None], state.next_position,
      jnp.ones((b,), jnp.int32), state.write_index, logits_index=jnp.zeros((b,), jnp.int32),
      prefix=prefix, prefix_mask=mask)
  state = state.replace(cache=cache, key_valid=key_valid, next_position=state.next_position + 1,
                        write_index=state.write_index + 1)
  return record_token(state, jnp.argmax(logits, axis=-1).astype(jnp.int32), stop)  # logits [B, V]


def greedy_decode(model: Llama, params, prefix: KVCache | None, prefix_length, state: DecodeState,
                  stop: StopRule) -> DecodeState:
  """Decode until every row is done; the state's `out[:, :num_out]` are the answers' ids."""
  mask = prefix_mask(prefix, prefix_length)
  return jax.lax.while_loop(lambda s: ~jnp.all(s.done),
                            lambda s: decode_step(model, params, prefix, mask, s, stop), state)
