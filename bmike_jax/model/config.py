"""Llama hyper-parameters, read from a HF `config.json` dict or GGUF metadata; never hard-coded."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class ConfigError(ValueError):
  """A model configuration that cannot describe a supported Llama."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """`rope_scaling` of type `llama3` (Llama-3.1 / 3.2)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  rope_theta: float
  max_position_embeddings: int
  tie_word_embeddings: bool
  rope_scaling: RopeScaling | None = None
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()

  @property
  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    attn = d * self.num_heads * self.head_dim * 2 + d * self.num_kv_heads * self.head_dim * 2
    layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else d * v
    return v * d + self.num_layers * layer + d + head

  @classmethod
  def from_hf_dict(cls, cfg: Mapping[str, Any]) -> "LlamaConfig":
    """From the dict of a HF `config.json` (LlamaForCausalLM)."""
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if k not in cfg]
    if missing:
      raise ConfigError(f"config.json lacks required field(s): {', '.join(missing)}")
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    rope_scaling = None
    scaling = cfg.get("rope_scaling") or None
    if scaling:
      kind = scaling.get("rope_type", scaling.get("type"))
      if kind == "llama3":
        rope_scaling = RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
      elif kind not in (None, "default"):
        raise ConfigError(
            f"config.json rope_scaling type {kind!r} is not supported "
            "(supported: llama3, default)"
        )
    rope_theta = cfg.get("rope_theta")
    if rope_theta is None:  # transformers 5 nests it under rope_parameters
      rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
      params = cfg.get("rope_parameters") or {}
      if rope_scaling is None and params.get("rope_type") == "llama3":
        rope_scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    return cls(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos_ids),
    )

  @classmethod
  def from_gguf_metadata(cls, meta: Mapping[str, Any], tied: bool) -> "LlamaConfig":
    """From GGUF metadata (key -> value, arrays as lists): `llama.*` hyper-parameters, vocabulary
    size from `tokenizer.ggml.tokens`, bos/eos from `tokenizer.ggml.*`. `tied` (the file has no
    `output.weight`) is a property of the tensors, not of the metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
      raise ConfigError(f"GGUF architecture {arch!r} is not supported (supported: llama)")
    required = (
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.block_count",
        "llama.attention.head_count",
        "tokenizer.ggml.tokens",
    )
    missing = [k for k in required if k not in meta]
    if missing:
      raise ConfigError(f"GGUF metadata lacks required key(s): {', '.join(missing)}")
    if meta.get("llama.rope.scaling.type", "none") not in ("none", None):
      raise ConfigError(f"GGUF rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
    hidden = int(meta["llama.embedding_length"])
    num_heads = int(meta["llama.attention.head_count"])
    head_dim = int(meta.get("llama.attention.key_length") or hidden // num_heads)
    rope_dim = int(meta.get("llama.rope.dimension_count") or head_dim)
    if rope_dim != head_dim:
      raise ConfigError(
          f"GGUF rope.dimension_count {rope_dim} != head dim {head_dim} "
          "(partial rotary embeddings are not supported)"
      )
    tokens = meta["tokenizer.ggml.tokens"]
    eos = meta.get("tokenizer.ggml.eos_token_id")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return cls(
        vocab_size=len(tokens) if not isinstance(tokens, int) else tokens,
        hidden_size=hidden,
        intermediate_size=int(meta["llama.feed_forward_length"]),
        num_layers=int(meta["llama.block_count"]),
        num_heads=num_heads,
        num_kv_heads=int(meta.get("llama.attention.head_count_kv") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
        tie_word_embeddings=tied,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=() if eos is None else (int(eos),),
    )

  def to_hf_dict(self) -> dict[str, Any]:
    """The inverse of `from_hf_dict` (used to build HF reference models in tests)."""
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(self.eos_token_ids)
        if len(self.eos_token_ids) != 1
        else self.eos_token_ids[0],
    }
    if self.rope_scaling is not None:
      out["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
    return out
