"""A functional causal forward pass of the Llama of `bmike_jax.model.llama` with the hooks the
weight editors need: read a layer's MLP activations and output, replace a layer's gate
activations at one position (KN's attribution), add a vector to a layer's `down` output at one
position per row (ROME's and MEMIT's value search). `Llama.__call__` stays as it is: this is a
second, plain implementation over the same stacked params tree (`params["layers"]` with a
leading [L] axis), tested equal to `model.causal_forward` (tests/test_editing_forward.py).

Rows are right-padded: tokens [B, T] hold each row's real tokens first, then anything; causal
attention means the padding never changes the logits at a real position. Everything is computed in
float32 at `Precision.HIGHEST` (true float32 dots on every platform), the reference's precision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bmike_jax.model import layer_layout
from bmike_jax.model import rope
from bmike_jax.model.config import LlamaConfig

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class MlpPatch:
  """A change of one layer's MLP at one position per row.

  layer: the layer (int or traced int32 scalar); position: [B] int32, the position in each row;
  gate: [B, F] replaces the `gate` projection's output (before SiLU) there, or None;
  out_add: [B, D] is added to the `down` projection's output there, or None."""

  layer: Any
  position: jax.Array
  gate: jax.Array | None = None
  out_add: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Trace:
  """What a forward pass read besides the logits: the MLP of layer `capture_layer` over every
  position (`down_in` [B, T, F], the input of `down`; `down_out` [B, T, D], its output;
  `layer_out` [B, T, D], the residual stream after that layer), and the `gate` output of every
  layer at `gate_position` (`gate_at` [L, B, F]); None where not asked."""

  down_in: jax.Array | None = None
  down_out: jax.Array | None = None
  gate_at: jax.Array | None = None
  layer_out: jax.Array | None = None


def stacked(params, config: LlamaConfig):
  """The params in the stacked layout (converted when given per-layer `layers_{i}`)."""
  if layer_layout.is_stacked(params):
    return params
  return layer_layout.stack_layers(params, config.num_layers)


def _dot(x, w):
  return jnp.einsum("...i,io->...o", x, w.astype(jnp.float32), precision=HIGHEST)


def _rms_norm(x, scale, eps):
  normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return scale.astype(jnp.float32) * normed


def _attention(config: LlamaConfig, p, x, cos, sin):
  b, t, _ = x.shape
  h, kvh, dh = config.num_heads, config.num_kv_heads, config.head_dim
  q = rope.apply_rotary(_dot(x, p["q"]["kernel"]).reshape(b, t, h, dh), cos, sin)
  k = rope.apply_rotary(_dot(x, p["k"]["kernel"]).reshape(b, t, kvh, dh), cos, sin)
  v = _dot(x, p["v"]["kernel"]).reshape(b, t, kvh, dh)
  q = q.reshape(b, t, kvh, h // kvh, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, precision=HIGHEST) * dh**-0.5
  causal = jnp.tril(jnp.ones((t, t), bool))
  scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, v, precision=HIGHEST).reshape(b, t, h * dh)
  return _dot(out, p["o"]["kernel"])


def forward(
    config: LlamaConfig,
    params,
    tokens: jax.Array,
    *,
    patch: MlpPatch | None = None,
    capture_layer: int | None = None,
    gate_position: jax.Array | None = None,
    down_add: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, Trace]:
  """Logits [B, T, V] (float32) of tokens [B, T] (right-padded rows), and the `Trace` asked for:
  `capture_layer` (a static int) reads that layer's MLP, `gate_position` [B] every layer's gate
  output at that position of each row. `patch` changes one layer's MLP (see `MlpPatch`).
  `down_add` (a [L, F, K], b [L, K, D]): every layer's `down` as if its kernel were
  `kernel + a[l] @ b[l]`, computed as `(h @ a[l]) @ b[l]` beside `h @ kernel`, so that the
  params stay shared by the rows of a vmapped batch of edits (MEMIT's updates so far) instead
  of each row carrying its own copy of the stacked kernel."""
  params = stacked(params, config)
  b, t = tokens.shape
  x = params["embed"]["embedding"].astype(jnp.float32)[tokens]
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  cos, sin = rope.rotary_tables(positions, rope.inverse_frequencies(config))
  eps = config.rms_norm_eps
  rows = jnp.arange(b)
  if patch is not None:
    at = positions == patch.position[:, None]  # [B, T]
  f = config.intermediate_size

  def layer(carry, xs):
    p, add = xs
    x, i, down_in, down_out, layer_out = carry
    x = x + _attention(config, p["attn"], _rms_norm(x, p["input_norm"]["scale"], eps), cos, sin)
    normed = _rms_norm(x, p["post_attn_norm"]["scale"], eps)
    gate = _dot(normed, p["mlp"]["gate"]["kernel"])
    if patch is not None and patch.gate is not None:
      here = (at & (i == patch.layer))[..., None]
      gate = jnp.where(here, patch.gate[:, None, :].astype(jnp.float32), gate)
    hidden = jax.nn.silu(gate) * _dot(normed, p["mlp"]["up"]["kernel"])
    out = _dot(hidden, p["mlp"]["down"]["kernel"])
    if add is not None:
      out = out + _dot(_dot(hidden, add[0]), add[1])
    if patch is not None and patch.out_add is not None:
      here = (at & (i == patch.layer))[..., None]
      out = out + jnp.where(here, patch.out_add[:, None, :].astype(jnp.float32), 0.0)
    x = x + out
    if capture_layer is not None:
      down_in = jnp.where(i == capture_layer, hidden, down_in)
      down_out = jnp.where(i == capture_layer, out, down_out)
      layer_out = jnp.where(i == capture_layer, x, layer_out)
    gate_at = None if gate_position is None else gate[rows, gate_position]
    return (x, i + 1, down_in, down_out, layer_out), gate_at

  empty_in = jnp.zeros((b, t, f) if capture_layer is not None else (), jnp.float32)
  empty_out = jnp.zeros(
      (b, t, config.hidden_size) if capture_layer is not None else (), jnp.float32
  )
  carry = (x, jnp.zeros((), jnp.int32), empty_in, empty_out, empty_out)
  (x, _, down_in, down_out, layer_out), gate_at = jax.lax.scan(
      layer, carry, (params["layers"], down_add)
  )
  x = _rms_norm(x, params["final_norm"]["scale"], eps)
  if config.tie_word_embeddings:
    logits = jnp.einsum(
        "btd,vd->btv", x, params["embed"]["embedding"].astype(jnp.float32), precision=HIGHEST
    )
  else:
    logits = _dot(x, params["lm_head"]["kernel"])
  trace = Trace(
      down_in=down_in if capture_layer is not None else None,
      down_out=down_out if capture_layer is not None else None,
      gate_at=gate_at,
      layer_out=layer_out if capture_layer is not None else None,
  )
  return logits, trace


def logits_only(config: LlamaConfig, params, tokens: jax.Array) -> jax.Array:
  """`forward` without hooks: logits [B, T, V]."""
  return forward(config, params, tokens)[0]
