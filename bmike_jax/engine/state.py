"""The decode state carried through jit and the greedy loop (a frozen pytree dataclass)."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from bmike_jax.model import KVCache


@flax.struct.dataclass
class DecodeState:
  """Everything the greedy loop needs; rows are independent, slots are shared (see layout.py).

  B: batch bucket, S: cache slots, N: max new tokens.
  """

  cache: KVCache  # B rows, S slots, in the model's layout (model/llama.KVCache)
  key_valid: jax.Array  # [B, S] bool: slot holds a real token of this row
  next_position: jax.Array  # [B] int32: true position of `last_token`
  # [] int32: slot `last_token` is written to, the same for every row; [B] where rows carried
  # between decode batches (decode.decode_carrying) are at steps of their own
  write_index: jax.Array
  last_token: jax.Array  # [B] int32: newest generated token (input of the next step)
  out: jax.Array  # [B, N] int32: generated tokens, 0 past num_out
  num_out: jax.Array  # [B] int32: tokens kept (an EOS is not kept)
  done: jax.Array  # [B] bool: EOS or a quote token seen, N reached, or a dummy row
  step: jax.Array  # [] (or [B], as write_index) int32: tokens generated so far


@flax.struct.dataclass
class StopRule:
  """Per SPEC: a row stops at any EOS id (not kept) or after a token containing `"` (kept)."""

  eos_ids: jax.Array  # [E] int32
  quote_mask: jax.Array  # [V] bool


def record_token(state: DecodeState, token: jax.Array, stop: StopRule) -> DecodeState:
  """Append `token` [B] to the rows still running and update their stop flags."""
  active = ~state.done
  is_eos = jnp.any(token[:, None] == stop.eos_ids[None, :], axis=-1)  # [B]
  keep = active & ~is_eos
  columns = jnp.arange(state.out.shape[1], dtype=jnp.int32)[None, :]  # [1, N]
  at = (columns == jnp.reshape(state.step, (-1, 1))) & keep[:, None]  # [B, N]: one column a row
  out = jnp.where(at, token.astype(jnp.int32)[:, None], state.out)
  step = state.step + 1
  done = state.done | is_eos | stop.quote_mask[token] | (step >= state.out.shape[1])
  return state.replace(
      out=out,
      num_out=state.num_out + keep.astype(jnp.int32),
      done=done,
      last_token=token.astype(jnp.int32),
      step=step,
  )
