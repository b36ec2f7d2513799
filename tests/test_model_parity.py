"""Flax Llama + checkpoint conversion vs HF torch `LlamaForCausalLM` (the reference), fp32 on CPU.

Tiny random HF models (MHA, GQA, tied, llama3 rope scaling) saved with `save_pretrained` and
loaded by our safetensors reader; and the real SmolLM2-135M GGUF, dequantized by us and by
transformers, run on real BMIKE-53 prompts.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bmike_jax import checkpoints, data, tokenizer as tokenizer_lib  # noqa: E402
from bmike_jax.checkpoints import gguf_loader, hf_safetensors, naming  # noqa: E402
from bmike_jax.model import KVCache, Llama, causal_forward  # noqa: E402
from tests import bmike_texts, hf_tiny  # noqa: E402

PROMPT_LEN = 600
TOL = 1e-4


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()


def _our_logits(config, params, ids: np.ndarray) -> np.ndarray:
  return np.asarray(causal_forward(Llama(config), params, jnp.asarray(ids, jnp.int32)))


def _tokens(vocab: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, size=(2, PROMPT_LEN))  # [B, T]


@pytest.mark.parametrize("variant", sorted(hf_tiny.VARIANTS))
def test_tiny_hf_logits_match(variant, tmp_path):
  model = hf_tiny.make_hf_model(variant)
  path = hf_tiny.save_hf(model, str(tmp_path / variant))
  config, params = checkpoints.load_model(path)
  assert config.tie_word_embeddings == model.config.tie_word_embeddings
  assert ("lm_head" in params) == (not config.tie_word_embeddings)
  if variant == "llama3":
    assert config.rope_scaling is not None and config.rope_theta == 500000.0
  ids = _tokens(config.vocab_size)
  ref, ours = _hf_logits(model, ids), _our_logits(config, params, ids)
  diff = float(np.max(np.abs(ref - ours)))
  print(f"{variant}: max-abs logit diff {diff:.2e} (logit scale {np.abs(ref).max():.2f})")
  assert diff < TOL


def test_shared_prefix_attention_matches_hf(tmp_path):
  """Rows sharing their first 400 tokens: the prefix KV computed once ([L, 1, 448] slots, the last
  48 padding masked out), each row's last 200 tokens run on top of it with their own 200-slot
  cache (cascade attention) -> the logits HF computes for the whole rows."""
  model = hf_tiny.make_hf_model("gqa", seed=6)
  config, params = checkpoints.load_model(hf_tiny.save_hf(model, str(tmp_path / "gqa")))
  ids = _tokens(config.vocab_size, seed=3)
  p, padded = 400, 448
  ids[1, :p] = ids[0, :p]
  llama = Llama(config)
  prefix_tokens = np.zeros((1, padded), np.int32)
  prefix_tokens[0, :p] = ids[0, :p]
  tril = lambda n: jnp.tril(jnp.ones((n, n), bool))
  _, prefix = llama.apply(
      {"params": params},
      jnp.asarray(prefix_tokens),
      jnp.arange(padded, dtype=jnp.int32)[None],
      KVCache.zeros(config, 1, padded),
      0,
      tril(padded)[None],
  )
  t = PROMPT_LEN - p
  positions = jnp.broadcast_to(jnp.arange(p, PROMPT_LEN, dtype=jnp.int32), (2, t))
  logits, _ = llama.apply(
      {"params": params},
      jnp.asarray(ids[:, p:], jnp.int32),
      positions,
      KVCache.zeros(config, 2, t),
      0,
      jnp.broadcast_to(tril(t), (2, t, t)),
      prefix=prefix,
      prefix_mask=jnp.arange(padded) < p,
  )
  diff = float(np.max(np.abs(_hf_logits(model, ids)[:, p:] - np.asarray(logits))))
  print(f"shared prefix: max-abs logit diff {diff:.2e}")
  assert diff < TOL


def test_sharded_save_matches_single(tmp_path):
  model = hf_tiny.make_hf_model("gqa", seed=3)
  path = hf_tiny.save_hf(model, str(tmp_path / "sharded"), max_shard_size="100KB")
  assert os.path.isfile(os.path.join(path, hf_safetensors.INDEX))
  assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
  config, params = checkpoints.load_model(path)
  ids = _tokens(config.vocab_size, seed=2)
  assert np.max(np.abs(_hf_logits(model, ids) - _our_logits(config, params, ids))) < TOL


def test_bf16_save(tmp_path):
  model = hf_tiny.make_hf_model("tied", seed=4)
  path = hf_tiny.save_hf(model, str(tmp_path / "bf16"), dtype=torch.bfloat16)
  reference = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  config, params = checkpoints.load_model(path, dtype="float32")
  ids = _tokens(config.vocab_size, seed=5)
  assert np.max(np.abs(_hf_logits(reference, ids) - _our_logits(config, params, ids))) < TOL
  _, params16 = checkpoints.load_model(path, dtype="bfloat16")
  q16 = params16["layers"]["attn"]["q"]["kernel"]  # [L, D, H*Dh]
  assert q16.dtype == jnp.bfloat16
  want = model.model.layers[1].self_attn.q_proj.weight.detach().to(torch.bfloat16).float().numpy().T
  np.testing.assert_array_equal(q16[1].astype(np.float32), want)


# ---------------------------------------------------------------- SmolLM2-135M (GGUF, Q4_1)


@pytest.fixture(scope="module")
def smollm2():
  """(path, HF torch model dequantized by transformers, our config, our params, tokenizer)."""
  path = checkpoints.default_gguf_path()
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  config, params = gguf_loader.load(path)
  return path, hf, config, params, tokenizer_lib.load_tokenizer(path)


def test_smollm2_config(smollm2):
  _, hf, config, _, tok = smollm2
  assert config.tie_word_embeddings and config.num_kv_heads == 3 and config.num_heads == 9
  assert config.vocab_size == hf.config.vocab_size == tok.vocab_size
  assert config.rms_norm_eps == hf.config.rms_norm_eps
  assert config.eos_token_ids == (hf.generation_config.eos_token_id,)


def test_smollm2_dequantized_params_match_transformers(smollm2):
  _, hf, config, params, _ = smollm2
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  worst = 0.0
  for rule in naming.RULES:
    if rule.target == "lm_head/kernel":
      continue  # tied
    ours = params
    for key in rule.target.split("/"):
      ours = ours[key]
    for i, name in enumerate(naming.source_names(rule, "hf", config.num_layers)):
      mine = ours[i] if rule.per_layer else ours
      theirs = naming.apply_steps(state[name], rule.hf_steps, config)
      assert mine.shape == theirs.shape, name
      diff = float(np.max(np.abs(mine - theirs)))
      worst = max(worst, diff)
      assert diff == 0.0, f"{name}: max-abs diff {diff}"
  print(f"SmolLM2 params: max-abs diff vs transformers' GGUF dequantization {worst}")


def _padded_last_logits(config, params, rows: list[list[int]], length: int) -> np.ndarray:
  """Logits [B, V] at each row's last token, rows right-padded to `length` (one compile)."""
  b = len(rows)
  tokens = np.zeros((b, length), np.int32)  # [B, T]
  lengths = np.array([len(r) for r in rows], np.int32)  # [B]
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length))
  causal = np.tril(np.ones((length, length), bool))
  mask = causal[None] & (np.arange(length)[None, None, :] < lengths[:, None, None])  # [B, T, S]
  model = Llama(config)
  cache = KVCache.zeros(config, b, length)
  logits, _ = jax.jit(model.apply)(
      {"params": params}, tokens, positions, cache, 0, mask, lengths - 1
  )
  return np.asarray(logits)


def test_smollm2_next_token_matches_hf_on_bmike_prompts(smollm2):
  """Zero-shot prompts in seven scripts, the query type cycling; one padded batch for ours."""
  _, hf, config, params, tok = smollm2
  cases = bmike_texts.bmike_prompts(
      bmike_texts.SCRIPT_LANGS,
      ("zero_shot",),
      dataset="counterfact",
      query_types=data.QUERY_TYPES,
      record_index=3,
  )
  rows = [tok.encode(text) for _, text in cases]
  ours = _padded_last_logits(config, params, rows, -(-max(map(len, rows)) // 8) * 8)  # [B, V]
  worst = 0.0
  for (label, _), row, mine in zip(cases, rows, ours):
    ref = _hf_logits(hf, np.array([row]))[0, -1]  # [V]
    diff = float(np.max(np.abs(ref - mine)))
    worst = max(worst, diff)
    top2 = np.sort(ref)[-2:]
    print(
        f"{label}: {len(row)} tokens, max-abs logit diff {diff:.2e}, argmax HF {ref.argmax()} "
        f"ours {mine.argmax()} ({tok.decode([int(ref.argmax())])!r})"
    )
    assert diff < 2e-3, label
    assert ref.argmax() == mine.argmax() or top2[1] - top2[0] < 1e-3, label
  print(
      f"SmolLM2 zero-shot: worst max-abs last-token logit diff {worst:.2e} over {len(rows)} prompts"
  )


def test_smollm2_all_positions_match_hf_on_long_prompt(smollm2):
  """An 8-shot Thai prompt (~900 tokens): logits at every position."""
  _, hf, config, params, tok = smollm2
  ((label, text),) = bmike_texts.bmike_prompts(
      ("th",), ("few_shot_specific",), dataset="counterfact", query_types=("generality",)
  )
  ids = np.array([tok.encode(text)])  # [1, T]
  ref, ours = _hf_logits(hf, ids), _our_logits(config, params, ids)  # [1, T, V]
  diff = float(np.max(np.abs(ref - ours)))
  agree = float(np.mean(ref.argmax(-1) == ours.argmax(-1)))
  print(
      f"{label}: all {ids.shape[1]} positions, max-abs logit diff {diff:.2e}; argmax agree on "
      f"{agree:.4f} of positions; last argmax HF {ref[0, -1].argmax()} ours {ours[0, -1].argmax()}"
  )
  assert ids.shape[1] >= 512
  assert diff < 2e-3
  assert ref[0, -1].argmax() == ours[0, -1].argmax()
  assert agree > 0.99
