"""Greedy decoding on device: a `lax.while_loop` over steps, the KV cache updated in place.

No host round trip per token: the loop runs until every row is done (EOS, a quote token, or
max_new_tokens generated). The engine jits `greedy_decode` with the state donated, so the cache
buffer preallocated by prefill is reused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bmike_jax.engine.prefill import append_tokens
from bmike_jax.engine.state import DecodeState, StopRule, record_token
from bmike_jax.model import Llama


def decode_step(model: Llama, params, state: DecodeState, stop: StopRule) -> DecodeState:
  """Feed `last_token` [B] at slot `write_index`, pick and record the next token."""
  b = state.last_token.shape[0]
  logits, cache, key_valid = append_tokens(
      model, params, state.cache, state.key_valid, state.last_token[:, None], state.next_position,
      jnp.ones((b,), jnp.int32), state.write_index, logits_index=jnp.zeros((b,), jnp.int32))
  state = state.replace(cache=cache, key_valid=key_valid, next_position=state.next_position + 1,
                        write_index=state.write_index + 1)
  return record_token(state, jnp.argmax(logits, axis=-1).astype(jnp.int32), stop)  # logits [B, V]


def greedy_decode(model: Llama, params, state: DecodeState, stop: StopRule) -> DecodeState:
  """Decode until every row is done; the state's `out[:, :num_out]` are the answers' ids."""
  return jax.lax.while_loop(lambda s: ~jnp.all(s.done),
                            lambda s: decode_step(model, params, s, stop), state)
