"""Conversion as data: one table maps every Flax param to its HF and GGUF source tensors.

Each row names the target param path ('/'-joined, as in the Flax tree), the HF safetensors name,
the GGUF tensor name ('{i}' is the layer index; rows with '{i}' are stacked along a leading layer
axis L) and, per format, the transform steps that turn the stored array into the Flax layout.
Both formats store matrices as [out, in] (torch Linear / GGUF ne reversed); Flax kernels are
[in, out]. GGUF q/k are stored in llama.cpp's rope-permuted row order (`unpermute_*` undoes it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import numpy as np

from bmike_jax.model import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Rule:
  target: str
  hf: str
  gguf: str
  hf_steps: tuple[str, ...]
  gguf_steps: tuple[str, ...]

  def source(self, fmt: str) -> str:
    return getattr(self, fmt)

  def steps(self, fmt: str) -> tuple[str, ...]:
    return getattr(self, f"{fmt}_steps")

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


T = ("transpose",)
RULES: tuple[Rule, ...] = (
    # target                     HF source                                    GGUF source               HF steps GGUF steps
    Rule("embed/embedding", "model.embed_tokens.weight", "token_embd.weight", (), ()),
    Rule(
        "layers/attn/q/kernel",
        "model.layers.{i}.self_attn.q_proj.weight",
        "blk.{i}.attn_q.weight",
        T,
        ("unpermute_q", "transpose"),
    ),
    Rule(
        "layers/attn/k/kernel",
        "model.layers.{i}.self_attn.k_proj.weight",
        "blk.{i}.attn_k.weight",
        T,
        ("unpermute_k", "transpose"),
    ),
    Rule(
        "layers/attn/v/kernel",
        "model.layers.{i}.self_attn.v_proj.weight",
        "blk.{i}.attn_v.weight",
        T,
        T,
    ),
    Rule(
        "layers/attn/o/kernel",
        "model.layers.{i}.self_attn.o_proj.weight",
        "blk.{i}.attn_output.weight",
        T,
        T,
    ),
    Rule(
        "layers/mlp/gate/kernel",
        "model.layers.{i}.mlp.gate_proj.weight",
        "blk.{i}.ffn_gate.weight",
        T,
        T,
    ),
    Rule(
        "layers/mlp/up/kernel", "model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", T, T
    ),
    Rule(
        "layers/mlp/down/kernel",
        "model.layers.{i}.mlp.down_proj.weight",
        "blk.{i}.ffn_down.weight",
        T,
        T,
    ),
    Rule(
        "layers/input_norm/scale",
        "model.layers.{i}.input_layernorm.weight",
        "blk.{i}.attn_norm.weight",
        (),
        (),
    ),
    Rule(
        "layers/post_attn_norm/scale",
        "model.layers.{i}.post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight",
        (),
        (),
    ),
    Rule("final_norm/scale", "model.norm.weight", "output_norm.weight", (), ()),
    Rule("lm_head/kernel", "lm_head.weight", "output.weight", T, T),
)

# Source tensors that carry nothing the Flax model needs (recomputed or redundant).
IGNORED: Mapping[str, tuple[str, ...]] = {
    "hf": (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    "gguf": (),
}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` (convert_hf_to_gguf.py): [n_head*Dh, in] rows from the
  interleaved (pairs) rotary order back to HF's split-half order."""
  rows = w.shape[0]
  return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


STEPS: Mapping[str, Callable[[np.ndarray, LlamaConfig], np.ndarray]] = {
    "transpose": lambda w, c: w.T,
    "unpermute_q": lambda w, c: _unpermute(w, c.num_heads),
    "unpermute_k": lambda w, c: _unpermute(w, c.num_kv_heads),
}

# How each step maps a shape (for the expected *source* shape in error messages).
SHAPE_OF_STEP: Mapping[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "transpose": lambda s: tuple(reversed(s)),
    "unpermute_q": lambda s: s,
    "unpermute_k": lambda s: s,
}


def apply_steps(array: np.ndarray, steps: tuple[str, ...], config: LlamaConfig) -> np.ndarray:
  for step in steps:
    array = STEPS[step](array, config)
  return array


def source_shape(target_shape: tuple[int, ...], steps: tuple[str, ...]) -> tuple[int, ...]:
  """The stored shape whose transform gives `target_shape` (all steps are shape involutions)."""
  for step in reversed(steps):
    target_shape = SHAPE_OF_STEP[step](target_shape)
  return tuple(target_shape)


def source_names(rule: Rule, fmt: str, num_layers: int) -> list[str]:
  pattern = rule.source(fmt)
  return [pattern.format(i=i) for i in range(num_layers)] if rule.per_layer else [pattern]


def is_ignored(name: str, fmt: str) -> bool:
  return any(re.fullmatch(p, name) for p in IGNORED[fmt])
