"""A tiny random Llama in HF format with SmolLM2's real tokenizer: fast end-to-end runner tests.

Built with HF transformers (the reference library) and saved with `save_pretrained`, so the
runner loads it through the same HF safetensors path as a real Llama checkpoint.
"""

from __future__ import annotations

import os

from bmike_jax import checkpoints


def make_tiny_checkpoint(path: str, vocab_size: int | None = None, seed: int = 0) -> str:
  """Writes config.json, model.safetensors and SmolLM2's tokenizer.json into `path`."""
  import torch
  import transformers

  gguf = checkpoints.default_gguf_path()
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(gguf), gguf_file=os.path.basename(gguf)
  )
  tokenizer.save_pretrained(path)
  config = transformers.LlamaConfig(
      vocab_size=vocab_size or len(tokenizer),
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=4096,
      rope_theta=10000.0,
      tie_word_embeddings=True,
      bos_token_id=1,
      eos_token_id=2,
  )
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).eval()
  model.save_pretrained(path)
  return path
