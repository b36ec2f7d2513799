"""Tiny random HF `LlamaForCausalLM` checkpoints (torch, CPU) saved with `save_pretrained`."""

from __future__ import annotations

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}

VARIANTS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama3": dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE,
        max_position_embeddings=4096,
    ),
}


def make_hf_model(variant: str, seed: int = 0, vocab_size: int = 512, num_layers: int = 2):
  import torch
  import transformers

  kwargs = dict(
      vocab_size=vocab_size,
      hidden_size=64,
      intermediate_size=160,
      num_hidden_layers=num_layers,
      max_position_embeddings=2048,
      rope_theta=10000.0,
      rms_norm_eps=1e-5,
      initializer_range=0.1,
      bos_token_id=1,
      eos_token_id=2,
  )
  kwargs.update(VARIANTS[variant])
  config = transformers.LlamaConfig(**kwargs)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # non-trivial norm scales, so a wrong norm mapping shows
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.uniform_(0.5, 1.5)
  return model


def save_hf(model, path: str, dtype=None, **kwargs) -> str:
  """save_pretrained (safetensors); `dtype` e.g. torch.bfloat16 saves a cast copy."""
  if dtype is not None:
    import copy

    model = copy.deepcopy(model).to(dtype)
  model.save_pretrained(path, **kwargs)
  return path


def save_tiny_tokenizer(path: str, texts, vocab_size: int = 512) -> str:
  """A small byte-level BPE (tokenizers library) trained on `texts`, saved as tokenizer.json +
  tokenizer_config.json; ids < vocab_size."""
  import json
  import os
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=["<unk>", "<s>", "</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tok.train_from_iterator(texts, trainer)
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "add_bos_token": True,
        },
        f,
    )
  return path


def llama_cpp_permute(w, n_head: int):
  """llama.cpp convert_hf_to_gguf.py `permute` (HF split-half rows -> interleaved pairs)."""
  return (
      w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


GGUF_NAMES = {  # HF suffix -> GGUF name, as llama.cpp writes them
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def write_gguf(model, path: str, quantize: str | None = None, skip: tuple[str, ...] = ()) -> str:
  """The HF model as a llama.cpp-style GGUF (q/k permuted; matrices optionally Q8_0)."""
  import gguf
  import numpy as np

  cfg = model.config
  w = gguf.GGUFWriter(path, "llama")
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  w.add_tokenizer_model("gpt2")
  w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  tensors = {}
  for name, p in model.state_dict().items():
    a = p.detach().float().numpy()
    if name == "model.embed_tokens.weight":
      tensors["token_embd.weight"] = a
    elif name == "model.norm.weight":
      tensors["output_norm.weight"] = a
    elif name == "lm_head.weight":
      if not cfg.tie_word_embeddings:
        tensors["output.weight"] = a
    else:
      layer, suffix = name.split(".", 3)[2:]
      if suffix == "self_attn.q_proj.weight":
        a = llama_cpp_permute(a, cfg.num_attention_heads)
      elif suffix == "self_attn.k_proj.weight":
        a = llama_cpp_permute(a, cfg.num_key_value_heads)
      tensors[f"blk.{layer}.{GGUF_NAMES[suffix]}"] = a
  for name, a in tensors.items():
    if name in skip:
      continue
    if quantize == "Q8_0" and a.ndim == 2:
      qtype = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, np.ascontiguousarray(a, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path
