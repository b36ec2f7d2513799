"""Greedy decoding on device: `lax.while_loop`s over steps, the KV cache updated in place.

No host round trip per token: the loop runs until every row is done (EOS, a quote token, or
max_new_tokens generated). The engine runs `greedy_decode` in the same jitted program as the
prefill (programs.py), so the cache buffer prefill allocates is updated in place by every step.

Shrinking batch: a batch decodes until its slowest row stops, and a finished row costs as much per
step as a running one. With `phases` = (B, B/2, B/4) the loop runs at B rows until at most B/2 are
still running, then gathers those rows (their cache, positions, answers so far) into a B/2-row
state and goes on at that size, and so on. Each row's computation is unchanged (rows never see each
other), only fewer finished rows are carried along; the answers are put back in the batch's order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from bmike_jax.engine.batch import SharedPrefix
from bmike_jax.engine.prefill import append_tokens
from bmike_jax.engine.state import DecodeState, StopRule, record_token
from bmike_jax.model import KVCache, Llama
from bmike_jax.model.row_deltas import RowDeltas


def decode_step(
    model: Llama,
    params,
    *,
    prefix: KVCache | None,
    prefix_mask,
    state: DecodeState,
    stop: StopRule,
    deltas: RowDeltas | None = None,
) -> DecodeState:
  """Feed `last_token` [B] at slot `write_index`, pick and record the next token.

  prefix: the shared KV [L, 1, Pb, KVH, Dh] or None; prefix_mask: its real slots [Pb];
  deltas: the state's rows' own weight deltas (model/row_deltas.py) or None."""
  b = state.last_token.shape[0]
  logits, cache, key_valid = append_tokens(
      model,
      params,
      cache=state.cache,
      key_valid=state.key_valid,
      tokens=state.last_token[:, None],
      start_position=state.next_position,
      num_valid=jnp.ones((b,), jnp.int32),
      write_index=state.write_index,
      logits_index=jnp.zeros((b,), jnp.int32),
      prefix=prefix,
      prefix_mask=prefix_mask,
      deltas=deltas,
  )
  state = state.replace(
      cache=cache,
      key_valid=key_valid,
      next_position=state.next_position + 1,
      write_index=state.write_index + 1,
  )
  return record_token(state, jnp.argmax(logits, axis=-1).astype(jnp.int32), stop)  # logits [B, V]


def take_rows(state: DecodeState, rows) -> DecodeState:
  """The state of `rows` [R] int32 only."""
  return state.replace(
      cache=state.cache.take_rows(rows),
      key_valid=state.key_valid[rows],
      next_position=state.next_position[rows],
      last_token=state.last_token[rows],
      out=state.out[rows],
      num_out=state.num_out[rows],
      done=state.done[rows],
  )


def greedy_decode(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    state: DecodeState,
    stop: StopRule,
    phases: Sequence[int] = (),
    constrain: Callable[[DecodeState], DecodeState] | None = None,
    deltas: RowDeltas | None = None,
):
  """Decode until every row is done. Returns (out [B, N] int32, num_out [B] int32, steps
  [len(phases)] int32): each row's answer ids are out[i, :num_out[i]], in the batch's row order;
  steps[k]: decode steps run at phases[k] rows (the token account's decode steps).

  phases: decreasing batch sizes, the first = B (default: B only); the loop moves to the next size
  once no more rows than it are running. constrain(state): places a state of any phase's size on
  the mesh (rows over the data axis). deltas: the batch's rows' own weight deltas (index [B] in
  the batch's row order; each phase takes its rows' entries) or None."""
  mask = prefix.mask()
  b = state.last_token.shape[0]
  phases = tuple(phases) or (b,)
  if phases[0] != b or any(n <= m for n, m in zip(phases, phases[1:])):
    raise ValueError(f"phases must start at the batch size {b} and decrease, got {phases}")
  out, num_out = state.out, state.num_out  # [B, N], [B]: answers in the batch's order
  origin = jnp.arange(b, dtype=jnp.int32)  # [R]: batch row of each row of the state
  steps = []  # [len(phases)] the state's step count after each phase's loop
  for next_size in phases[1:] + (0,):
    own = None if deltas is None else deltas.take(origin)
    step = lambda s, own=own: decode_step(
        model, params, prefix=prefix.kv, prefix_mask=mask, state=s, stop=stop, deltas=own
    )
    running = lambda s, n=next_size: jnp.sum(~s.done) > n
    state = jax.lax.while_loop(running, step, state)
    steps.append(state.step)
    out = out.at[origin].set(state.out)
    num_out = num_out.at[origin].set(state.num_out)
    if next_size:
      # Stable: the running rows (at most next_size) first, then finished ones as filler.
      keep = jnp.argsort(state.done, stable=True)[:next_size].astype(jnp.int32)
      state, origin = take_rows(state, keep), origin[keep]
      if constrain is not None:
        state = constrain(state)
  ends = jnp.stack(steps)  # the prefill's token is step 1
  return out, num_out, jnp.diff(ends, prepend=jnp.ones((1,), ends.dtype))
