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
  own = lambda x: x[rows] if jnp.ndim(x) else x  # write_index / step: per row, or shared
  return state.replace(
      cache=state.cache.take_rows(rows),
      key_valid=state.key_valid[rows],
      next_position=state.next_position[rows],
      write_index=own(state.write_index),
      last_token=state.last_token[rows],
      out=state.out[rows],
      num_out=state.num_out[rows],
      done=state.done[rows],
      step=own(state.step),
  )


def per_row(state: DecodeState) -> DecodeState:
  """The same state with write_index and step held per row ([B]), as carried rows need."""
  b = state.last_token.shape[0]
  return state.replace(
      write_index=jnp.broadcast_to(state.write_index, (b,)).astype(jnp.int32),
      step=jnp.broadcast_to(state.step, (b,)).astype(jnp.int32),
  )


def concat_rows(state: DecodeState, other: DecodeState) -> DecodeState:
  """`state`'s rows, then `other`'s (both per row, the same slots and N)."""
  cat = lambda a, o: jnp.concatenate([a, o], axis=0)
  return state.replace(
      cache=state.cache.concat_rows(other.cache),
      **{
          f: cat(getattr(state, f), getattr(other, f))
          for f in (
              "key_valid",
              "next_position",
              "write_index",
              "last_token",
              "out",
              "num_out",
              "done",
              "step",
          )
      },
  )


def decode_carrying(
    model: Llama,
    params,
    *,
    prefix: SharedPrefix,
    state: DecodeState,
    carry_rows: int,
    final,
    stop: StopRule,
    constrain: Callable[[DecodeState], DecodeState] | None = None,
):
  """Decode a batch's own rows and the rows carried into it (`state`, per row: `per_row`,
  `concat_rows`) until at most `carry_rows` are still running, or none where `final` ([] bool,
  traced: one program either way), then hand the running rows on.

  Returns (state after the loop: its out / num_out / done hold every finished row's answer;
  carry: a state of `carry_rows` rows, the running ones first, then finished ones as filler
  (done, so they run no further and are never reported twice); lanes [carry_rows] int32: the
  row of `state` each carry row is; iterations [] int32: decode steps run).

  Each row's computation is that of a batch decoding to the end (rows never see each other; a
  carried row keeps its own slots, positions and step: `write_index` and `step` are per row), so
  answers do not depend on which batch finishes a row. The next batch of the same program takes
  the carry (engine.py); a program's loop runs until its batch's short answers are done, not its
  longest, and the long ones finish in the batches after it (continuous refill, one batch at a
  time)."""
  mask = prefix.mask()
  limit = jnp.where(final, 0, carry_rows)

  def running(c):
    return jnp.sum(~c[0].done) > limit

  def step(c):
    s, n = c
    s = decode_step(model, params, prefix=prefix.kv, prefix_mask=mask, state=s, stop=stop)
    return s, n + 1

  state, iterations = jax.lax.while_loop(running, step, (state, jnp.zeros((), jnp.int32)))
  # Stable: the running rows (at most carry_rows) first, then finished ones as filler.
  lanes = jnp.argsort(state.done, stable=True)[:carry_rows].astype(jnp.int32)
  carry = take_rows(state, lanes)
  # Filler rows restart at slot 0 (their writes are never read: done rows are never reported).
  carry = carry.replace(write_index=jnp.where(carry.done, 0, carry.write_index))
  if constrain is not None:
    carry = constrain(carry)
  return state, carry, lanes, iterations


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
