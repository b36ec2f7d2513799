"""Tiny random Llama models, a fake tokenizer and a naive greedy loop for the engine tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.model import Llama, LlamaConfig, causal_forward, init_params

BOS, EOS, VOCAB = 1, 2, 256


class FakeTokenizer:
  """Token i decodes to one letter, or to `"` when i % 11 == 5; 0..2 are specials (skipped)."""

  bos_id = BOS
  eos_ids = (EOS,)
  vocab_size = VOCAB

  @staticmethod
  def piece(i: int) -> str:
    if i <= EOS:
      return ""
    return '"' if i % 11 == 5 else chr(ord("a") + i % 26)

  def decode(self, ids) -> str:
    return "".join(self.piece(int(i)) for i in ids)

  def quote_token_mask(self) -> np.ndarray:
    return np.array(['"' in self.piece(i) for i in range(VOCAB)])


def tiny_config(num_heads: int = 8, num_kv_heads: int = 4, **overrides) -> LlamaConfig:
  """Heads, KV heads, MLP and vocab divisible by 1, 2 and 4 (model-axis tests)."""
  kw = dict(
      vocab_size=VOCAB,
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=64 // num_heads,
      rms_norm_eps=1e-5,
      rope_theta=10000.0,
      max_position_embeddings=1024,
      tie_word_embeddings=False,
      bos_token_id=BOS,
      eos_token_ids=(EOS,),
  )
  kw.update(overrides)
  return LlamaConfig(**kw)


def tiny_params(config: LlamaConfig, seed: int = 0):
  return init_params(config, seed)


def group_prompts(seed: int, n: int, prefix_len: int, suffix_range=(1, 30)) -> list[list[int]]:
  """n prompts: BOS + a shared random prefix, then each its own random suffix."""
  rng = np.random.default_rng(seed)
  prefix = [BOS] + rng.integers(3, VOCAB, prefix_len - 1).tolist()
  return [
      prefix + rng.integers(3, VOCAB, int(rng.integers(*suffix_range))).tolist() for _ in range(n)
  ]


def record_prompts(
    seed: int, records: int, prefix_len: int, stem_range=(6, 30), rest_range=(1, 20), queries=4
) -> list[list[int]]:
  """BMIKE-53's shape: BOS + a shared prefix (demonstrations), then per record a stem (its `New
  Fact` line) shared by its `queries` prompts, each ending in its own rest; record-major order.
  Stems may share a few leading tokens (records of one relation), as real ones do."""
  rng = np.random.default_rng(seed)
  prefix = [BOS] + rng.integers(3, VOCAB, prefix_len - 1).tolist()
  relation = rng.integers(3, VOCAB, 3).tolist()
  out = []
  for r in range(records):
    stem = rng.integers(3, VOCAB, int(rng.integers(*stem_range))).tolist()
    if r % 3 == 0:
      stem = relation + stem
    for _ in range(queries):
      out.append(prefix + stem + rng.integers(3, VOCAB, int(rng.integers(*rest_range))).tolist())
  return out


def naive_greedy(
    config: LlamaConfig, params, prompt, max_new_tokens: int = 15, width: int = 128
) -> tuple[int, ...]:
  """Re-run the whole sequence (no KV cache) for every new token; the engine's stop rules.

  The sequence sits at the start of a [1, width] row (one compile; causal, so the trailing
  padding cannot change the logits read at the last real position)."""
  model, ids, out = Llama(config), list(prompt), []
  forward = jax.jit(lambda p, x: causal_forward(model, p, x))
  quote = FakeTokenizer().quote_token_mask()
  for _ in range(max_new_tokens):
    row = np.zeros((1, width), np.int32)
    row[0, : len(ids)] = ids
    logits = forward(params, jnp.asarray(row))[0, len(ids) - 1]
    tok = int(jnp.argmax(logits))
    if tok == EOS:
      break
    out.append(tok)
    ids.append(tok)
    if quote[tok]:
      break
  return tuple(out)


def random_deltas(config: LlamaConfig, edits: int, seed: int = 0, scale: float = 0.3) -> dict:
  """A batched weight delta of `edits` edits (editing/delta.py's form, leading [E] axis) touching
  the structures the editing methods produce: a dense `down` matrix at layer 1 (FT-L), rank-2
  factors of `v` on every layer (LoRA), a rank-1 pair of `q` at layer 0 (ROME), rank-1 pairs of
  `up` at layers 0 and 1 (MEMIT's form: several single layers of one projection)."""
  from bmike_jax.editing import delta as delta_lib

  rng = np.random.default_rng(seed)
  f, d, layers = config.intermediate_size, config.hidden_size, config.num_layers
  kv, q = config.num_kv_heads * config.head_dim, config.num_heads * config.head_dim
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
  return {
      "mlp/down/kernel": {1: normal(edits, f, d)},
      "attn/v/kernel": {
          delta_lib.ALL_LAYERS: (normal(edits, layers, d, 2), normal(edits, layers, 2, kv))
      },
      "attn/q/kernel": {0: (normal(edits, d, 1), normal(edits, 1, q))},
      "mlp/up/kernel": {l: (normal(edits, d, 1), normal(edits, 1, f)) for l in (0, 1)},
  }
