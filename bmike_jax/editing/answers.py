"""Answers of an (edited) model, the two ways the protocols read them: teacher-forced argmax over
a gold span (the reference's baselines) and greedy generation (the in-context runs' way). Both
take a params tree, so the same functions serve the unedited and every edited model."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing.forward import logits_only
from bmike_jax.editing.request import pad_rows
from bmike_jax.model.config import LlamaConfig


@functools.lru_cache(maxsize=None)
def _argmax_logits(config: LlamaConfig):
  return jax.jit(lambda params, tokens: jnp.argmax(logits_only(config, params, tokens), axis=-1))


def teacher_forced(
    config: LlamaConfig, params, tokenizer, prompts: Sequence[str], golds: Sequence[str]
) -> list[list[int]]:
  """Per prompt: the argmax ids over the gold span, as the reference's baselines read answers:
  one pass over tokenizer(prompt + " " + gold) (BOS as the tokenizer adds it), the argmax at
  positions [len(tokenizer(prompt)) - 1, len(full) - 1). (With an empty gold the full text is
  `prompt + " "`.)"""
  full = [tokenizer.encode(f"{p} {g}") for p, g in zip(prompts, golds)]
  starts = [len(tokenizer.encode(p)) - 1 for p in prompts]
  if not full:
    return []
  argmax = np.asarray(_argmax_logits(config)(params, jnp.asarray(pad_rows(full))))
  return [argmax[i, s : len(ids) - 1].tolist() for i, (ids, s) in enumerate(zip(full, starts))]


@functools.lru_cache(maxsize=None)
def _greedy(config: LlamaConfig, steps: int, eos: tuple[int, ...]):
  def run(params, tokens, lengths, quote_mask):
    """tokens [B, T] prompt rows (T >= longest + steps); every step re-runs the whole rows."""
    rows = jnp.arange(tokens.shape[0])

    def step(carry, i):
      tokens, done = carry
      logits = logits_only(config, params, tokens)[rows, lengths + i - 1]
      tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      is_eos = jnp.isin(tok, jnp.asarray(eos, jnp.int32)) if eos else jnp.zeros_like(done)
      emitted = jnp.where(done | is_eos, -1, tok)
      tokens = tokens.at[rows, lengths + i].set(jnp.where(done, tokens[rows, lengths + i], tok))
      done = done | is_eos | quote_mask[tok]
      return (tokens, done), emitted

    (_, _), out = jax.lax.scan(step, (tokens, jnp.zeros(tokens.shape[0], bool)), jnp.arange(steps))
    return out.T  # [B, steps], -1 after the end

  return jax.jit(run)


def greedy(
    config: LlamaConfig,
    params,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 15,
    stop_at_quote: bool = True,
) -> list[list[int]]:
  """Greedy continuations of tokenizer(prompt) (BOS as the tokenizer adds it), stopped as the
  engine does: at an EOS id (not kept), after a token holding `"` (kept), or after
  max_new_tokens (`stop_at_quote=False`: EOS and length only). No KV cache: each step re-runs
  the rows (for small batches and tests)."""
  ids = [tokenizer.encode(p) for p in prompts]
  if not ids:
    return []
  longest = max(len(i) for i in ids)
  tokens = pad_rows(ids, -(-(longest + max_new_tokens) // 16) * 16)
  quote = np.zeros(config.vocab_size, bool)
  mask = np.asarray(tokenizer.quote_token_mask())[: config.vocab_size]
  quote[: len(mask)] = mask & stop_at_quote
  run = _greedy(config, max_new_tokens, tuple(int(e) for e in tokenizer.eos_ids))
  out = np.asarray(
      run(params, jnp.asarray(tokens), jnp.asarray([len(i) for i in ids]), jnp.asarray(quote))
  )
  return [[int(t) for t in row if t >= 0] for row in out]


def engine_greedy(
    engine,
    tokenizer,
    prompts: Sequence[str],
    *,
    tables=None,
    prompt_edits: Sequence[int] | None = None,
    held_bytes_per_device: int = 0,
) -> list[list[int]]:
  """Greedy continuations of tokenizer(prompt) read by the in-context runs' engine (its KV cache,
  batches, buckets, sharding, dtype and stop rule): on its own params, or with `tables` (the E
  edits' per-row delta tables, delta.row_tables) prompt i on edit prompt_edits[i], the prompts of all
  E edited models in the same batches (Engine.generate). held_bytes_per_device: what the caller
  holds on each device meanwhile."""
  ids = [tokenizer.encode(p) for p in prompts]
  if not ids:
    return []
  if tables is None:
    return [list(r.ids) for r in engine.generate(ids)]
  out = engine.generate(
      ids, tables=tables, prompt_edits=prompt_edits, held_bytes_per_device=held_bytes_per_device
  )
  return [list(r.ids) for r in out]
