"""The Hugging Face torch reference (tests, benchmarks and tools only; the engine never imports it).

torch and transformers are imported lazily. The reference answer is computed as the public
BMIKE-53 code does: one prompt at a time, float32, `generate(max_new_tokens=15, do_sample=False)`,
the new tokens decoded with special tokens skipped and cut at the first `"`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from bmike_jax.engine.answer import cut_at_quote


def _split_source(source: str):
  """(directory, gguf basename or None) for a model directory or a .gguf file."""
  source = os.fspath(source)
  if source.endswith(".gguf"):
    return os.path.dirname(os.path.abspath(source)), os.path.basename(source)
  return source, None


def load_hf_model(source: str):
  """The torch LlamaForCausalLM (float32, eval mode) of a HF directory or a .gguf file."""
  import torch
  import transformers

  dirname, gguf = _split_source(source)
  kwargs = {"gguf_file": gguf} if gguf else {}
  model = transformers.AutoModelForCausalLM.from_pretrained(dirname, dtype=torch.float32, **kwargs)
  return model.eval()


def load_hf_tokenizer(source: str):
  import transformers

  dirname, gguf = _split_source(source)
  kwargs = {"gguf_file": gguf} if gguf else {}
  return transformers.AutoTokenizer.from_pretrained(dirname, **kwargs)


def reference_generate_ids(model, prompt_ids: Sequence[int], max_new_tokens: int = 15) -> list[int]:
  """New token ids of `model.generate` (greedy) for one prompt, as the reference runs it."""
  import torch

  ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
  pad = model.generation_config.pad_token_id
  if pad is None:
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, (list, tuple)) else eos
  with torch.no_grad():
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
  return out[0, ids.shape[1] :].tolist()


def reference_answer(model, hf_tokenizer, prompt: str | Sequence[int], max_new_tokens: int = 15):
  """(prompt ids, new ids, extracted answer) for one prompt (text is encoded by the HF tokenizer
  with its default special tokens, as the reference does)."""
  ids = hf_tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
  new = reference_generate_ids(model, ids, max_new_tokens)
  return ids, new, cut_at_quote(hf_tokenizer.decode(new, skip_special_tokens=True))


def reference_logprobs(model, prompt_ids: Sequence[int], continuation_ids: Sequence[int]):
  """Per-token log p of the continuation after the prompt, float32 [len(continuation)]."""
  import torch

  full = torch.tensor([list(prompt_ids) + list(continuation_ids)], dtype=torch.long)
  with torch.no_grad():
    logits = model(full).logits[0].float()
  logp = torch.log_softmax(logits, dim=-1)
  n = len(prompt_ids)
  targets = full[0, n:]
  picked = logp[n - 1 : full.shape[1] - 1].gather(-1, targets[:, None])[:, 0]
  return picked.numpy().astype(np.float32)
