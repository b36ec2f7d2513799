"""Precision of the compiled model (SPEC: the reference runs float32): with dtype float32 every
dot of the program (projections, attention scores and values over the own cache and the shared
prefix, tied and untied logits) asks for HIGHEST precision, so GPUs do not fall back to TF32 nor
TPUs to bf16 passes; in both dtypes the attention dots accumulate in float32. Read off the lowered
StableHLO, which is what every backend compiles (on CPU the numbers are float32 either way)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from bmike_jax.model import KVCache, Llama, init_params
from tests import engine_tiny

DOT = re.compile(r"stablehlo\.dot_general.*")


def _dots(dtype, tied: bool, scan_layers: bool) -> list[str]:
  config = engine_tiny.tiny_config(num_layers=2, tie_word_embeddings=tied)
  params = init_params(config, seed=0, dtype=dtype, scan_layers=scan_layers)
  model = Llama(config, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
  b, t, s, p = 2, 3, 8, 4
  tokens = jnp.zeros((b, t), jnp.int32)
  cache = KVCache.zeros(config, b, s, dtype, per_layer=not scan_layers)
  prefix = KVCache.zeros(config, 1, p, dtype, per_layer=not scan_layers)
  mask = jnp.ones((b, t, s), bool)

  def forward(params, tokens, cache, prefix):
    return model.apply({"params": params}, tokens, tokens, cache, 0, mask, prefix=prefix)

  text = jax.jit(forward).lower(params, tokens, cache, prefix).as_text()
  return DOT.findall(text)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_float32_asks_for_highest_precision_everywhere(tied, scan_layers):
  dots = _dots(jnp.float32, tied, scan_layers)
  # per layer: q, k, v, o, gate, up, down + 4 attention dots; then the logits
  layers = 1 if scan_layers else 2
  assert len(dots) == 11 * layers + 1
  assert all("precision = [HIGHEST, HIGHEST]" in d for d in dots), [
      d for d in dots if "HIGHEST" not in d
  ][:3]


def test_bfloat16_is_fast_but_accumulates_attention_in_float32():
  dots = _dots(jnp.bfloat16, tied=False, scan_layers=False)
  assert not any("HIGHEST" in d for d in dots)
  # attention dots: bf16 operands, f32 results (scores over own cache and prefix, two value sums)
  attention = [
      d
      for d in dots
      if re.search(r"\(tensor<[^)]*bf16>, tensor<[^)]*bf16>\) -> " r"tensor<[^>]*xf32>", d)
  ]
  assert len(attention) == 4 * 2, dots[:6]
