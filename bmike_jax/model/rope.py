"""Rotary position embedding in HF's split-half layout (so HF conversion is transposes only)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from bmike_jax.model.config import LlamaConfig


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
  """[head_dim // 2] float32, with `llama3` rope scaling applied as HF does."""
  dim = config.head_dim
  exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
  scaling = config.rope_scaling
  if scaling is None:
    return inv_freq
  old_len = scaling.original_max_position_embeddings
  low_freq_wavelen = old_len / scaling.low_freq_factor
  high_freq_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rotary_tables(positions: jnp.ndarray, inv_freq: np.ndarray):
  """cos, sin: [B, T, head_dim] float32 for per-row `positions` [B, T]."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """x: [B, T, H, Dh]; cos/sin: [B, T, Dh]. HF `rotate_half` convention."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin
