"""The Flax (linen) Llama decoder: scanned or unrolled layers (model/layer_layout.py), preallocated
KV cache, per-row positions.

Call convention (the engine relies on it; see DESIGN.md):
  tokens, positions: [B, T] int32
  cache: KVCache, k and v each [L, B, KVH, S, Dh] in one buffer (scanned layers) or a tuple
         of L buffers [B, KVH, S, Dh] (unrolled layers); the T new entries are written at slots
         [write_index, write_index + T): write_index [] the same slot for every row, or [B]
         a slot of each row's own (decode rows carried between batches)
  attn_mask: [B, T, S] bool, True where query t may attend cache slot s (after the write)
  logits_index: None -> logits [B, T, V]; [B] int32 -> logits of those positions only [B, V];
                (rows [B'], positions [B']) -> the logits of those (row, position) pairs [B', V]
  prefix: optional KVCache (k, v [L, 1, KVH, P, Dh] or L x [1, KVH, P, Dh]) shared by every row
          (the group's demonstrations),
          attended by every query before its own cache; prefix_mask: [P] bool, its real slots
  deltas: optional row_deltas.RowDeltas: each row's own weight delta (row b asks edit index[b]),
          added beside the shared weights' products (see row_deltas.py)
Returns (logits float32, new cache).

Precision (`matmul_precision`): with dtype float32 (the reference's precision) every matmul and
einsum runs at `Precision.HIGHEST`: on GPUs a default float32 dot uses TF32, on TPUs bf16 passes,
so "float32" would not be float32 there (on CPU both are exact float32). bfloat16 is the fast mode
(DEFAULT precision) and departs from the reference. In both dtypes the attention scores and the
weighted values accumulate in float32 (`preferred_element_type`) instead of being rounded to the
compute dtype first.

Shared-prefix ("cascade") attention: a query's scores over the shared prefix and over its row's
own cache go through one softmax (a shared running max and normalizer, no concatenation, see
`_attend`), so the result equals attention over one cache holding [prefix, own tokens], but the prefix's K/V are stored and read once per batch instead of
once per row. The caches ride through the layers (the stacked buffers in the scan's carry, or each
layer's own buffers along the unrolled chain) and only the T new entries are written (in place),
so a decode step does not rewrite the whole cache.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bmike_jax.model.config import LlamaConfig
from bmike_jax.model import layer_layout
from bmike_jax.model import rope
from bmike_jax.model import row_deltas


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, KV head before slot (so neither attention einsum transposes
  its cache operand). Two layouts, the same as the weights' (model/layer_layout.py):
  - stacked: k, v each one buffer [L, B, KVH, S, Dh] (scanned layers);
  - per layer: k, v each a tuple of L buffers [B, KVH, S, Dh] (unrolled layers, the accelerator
    default): a decode step then reads each layer's buffer in place, where a layer's slice of a
    stacked buffer is copied out first (6x slower attention on an H200 at 256 rows x 640 slots,
    BENCHMARKS.md "KV-cache layout").
  Engine code changes caches through the methods below, never by axis numbers."""

  k: Any
  v: Any

  @classmethod
  def zeros(
      cls, config: LlamaConfig, batch: int, length: int, dtype=jnp.float32, per_layer=False
  ) -> "KVCache":
    shape = (batch, config.num_kv_heads, length, config.head_dim)
    if per_layer:
      return cls(
          k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
          v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
      )
    stacked = (config.num_layers, *shape)
    return cls(k=jnp.zeros(stacked, dtype), v=jnp.zeros(stacked, dtype))

  @property
  def per_layer(self) -> bool:
    return isinstance(self.k, (tuple, list))

  @property
  def _row_axis(self) -> int:  # the B axis of every leaf (slots are 2 further, KV heads 1)
    return 0 if self.per_layer else 1

  @property
  def length(self) -> int:
    return (self.k[0] if self.per_layer else self.k).shape[self._row_axis + 2]

  def layer(self, i: int) -> tuple:
    """(k, v) of layer i, each [B, KVH, S, Dh]."""
    return (self.k[i], self.v[i])

  def _map(self, fn) -> "KVCache":
    return jax.tree_util.tree_map(fn, self)

  def take_rows(self, rows) -> "KVCache":
    """The rows `rows` [B'] int32 of every layer."""
    return self._map(lambda a: jnp.take(a, rows, axis=self._row_axis))

  def concat_rows(self, other: "KVCache") -> "KVCache":
    """This cache's rows, then `other`'s (the same slots): B + B' rows of every layer."""
    return jax.tree_util.tree_map(
        lambda a, o: jnp.concatenate([a, o], axis=self._row_axis), self, other
    )

  def slots(self, start: int, size: int) -> "KVCache":
    """Slots [start, start + size) of every row and layer (static bounds)."""
    axis = self._row_axis + 2
    return self._map(lambda a: jax.lax.slice_in_dim(a, start, start + size, axis=axis))

  def gather_slots(self, index) -> "KVCache":
    """Row b's slot s <- its slot index[b, s], for index [B, S'] int32 (every layer): S' slots."""
    idx = index[:, None, :, None]  # [B, 1, S', 1]: KV heads and head dim broadcast
    if not self.per_layer:
      idx = idx[None]  # [1, B, 1, S', 1]: every layer alike
    axis = self._row_axis + 2

    def gather(a):
      shape = (*a.shape[:axis], idx.shape[axis], a.shape[-1])
      return jnp.take_along_axis(a, jnp.broadcast_to(idx, shape), axis=axis)

    return self._map(gather)

  def gather(self, rows, index) -> "KVCache":
    """Row b's slot s <- row rows[b]'s slot index[b, s] (rows [B'], index [B', S'] int32): B' rows
    of S' slots, every layer; one gather of the slots read (no [B', all slots] copy first).
    rows may also be [B', S']: each slot from a row of its own (row rows[b, s])."""
    r, i = (rows if rows.ndim == 2 else rows[:, None]), index  # broadcast to B' x S' entries

    def pick(a):
      if self.per_layer:  # [B, KVH, S, Dh] -> [B', S', KVH, Dh] -> [B', KVH, S', Dh]
        return a[r, :, i, :].transpose(0, 2, 1, 3)
      # [L, B, KVH, S, Dh] -> [B', S', L, KVH, Dh] -> [L, B', KVH, S', Dh]
      return a[:, r, :, i, :].transpose(2, 0, 3, 1, 4)

    return self._map(pick)

  def where_rows(self, take, other: "KVCache") -> "KVCache":
    """Row b from `other` where take[b] ([B] bool), else from self (same shapes)."""

    def pick(a, o):
      shape = [1] * a.ndim
      shape[self._row_axis] = take.shape[0]
      return jnp.where(take.reshape(shape), o, a)

    return jax.tree_util.tree_map(pick, self, other)

  def pad_slots(self, extra: int) -> "KVCache":
    """`extra` empty slots appended to every row."""
    axis = self._row_axis + 2
    return self._map(lambda a: jnp.pad(a, [(0, extra if d == axis else 0) for d in range(a.ndim)]))


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def matmul_precision(dtype) -> jax.lax.Precision:
  """HIGHEST for float32 (true float32 dots on every platform), DEFAULT for the fast bf16 mode."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def _dense(features: int, name: str, dtype, param_dtype) -> nn.Dense:
  return nn.Dense(
      features,
      use_bias=False,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=matmul_precision(dtype),
      name=name,
  )


def _project(module: str, dtype, param_dtype, deltas, name: str, features: int, x):
  """The Dense `name` of x, plus each row's own delta of `module/name` where `deltas` (this
  layer's row_deltas.layer_deltas, the rows' edit index [B]) has one."""
  y = _dense(features, name, dtype, param_dtype)(x)
  if deltas is None:
    return y
  entries, index = deltas
  entry = entries.get(f"{module}/{name}")
  return row_deltas.add_delta(y, x, entry, index, jax.lax.Precision.HIGHEST)


def _attend(q, k_cache, v_cache, attn_mask, prefix, prefix_mask, dtype):
  """Softmax attention of q [B, T, KVH, G, Dh] over the row's own cache k/v [B, KVH, S, Dh]
  (where attn_mask [B, T, S]) and, when given, the shared prefix (k, v) [1, KVH, P, Dh] (where
  prefix_mask [P]), as one softmax over both: the two score blocks share the running max and the
  normalizer, so no [.., P + S] concatenation is built. Each einsum is written in the layout its
  dot produces (batch dims first), so the large score blocks are never transposed; for the prefix
  the batch folds into the rows of one [B*T*G, Dh] x [Dh, P] product per KV head.
  Scores and weighted sums accumulate in float32 (see the module docstring on precision).
  Returns [B, T, KVH, G, Dh]."""
  scale, neg = q.shape[-1] ** -0.5, jnp.finfo(jnp.float32).min
  dot = dict(precision=matmul_precision(dtype), preferred_element_type=jnp.float32)
  own = jnp.einsum("btkgd,bksd->bktgs", q, k_cache, **dot) * scale  # [B,KVH,T,G,S]
  own = jnp.where(attn_mask[:, None, :, None, :], own, neg)
  peak = jnp.max(own, axis=-1)  # [B,KVH,T,G]
  if prefix is not None:
    pk, pv = (a[0].astype(dtype) for a in prefix)  # [KVH, P, Dh]
    pre = jnp.einsum("btkgd,kpd->kbtgp", q, pk, **dot) * scale  # [KVH,B,T,G,P]
    pre = jnp.where(prefix_mask, pre, neg)
    peak = jnp.maximum(peak, jnp.max(pre, axis=-1).transpose(1, 0, 2, 3))
  own = jnp.exp(own - peak[..., None])
  total = jnp.sum(own, axis=-1)  # [B,KVH,T,G]
  out = jnp.einsum("bktgs,bksd->bktgd", own.astype(dtype), v_cache, **dot)
  if prefix is not None:
    pre = jnp.exp(pre - peak.transpose(1, 0, 2, 3)[..., None])
    total = total + jnp.sum(pre, axis=-1).transpose(1, 0, 2, 3)
    out = out + jnp.einsum("kbtgp,kpd->kbtgd", pre.astype(dtype), pv, **dot).transpose(
        1, 0, 2, 3, 4
    )
  out = out / total[..., None]  # [B,KVH,T,G,Dh]
  return out.transpose(0, 2, 1, 3, 4).astype(dtype)


class Attention(nn.Module):
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x, cos, sin, caches, layer, write_index, attn_mask, prefix, prefix_mask, deltas=None
  ):
    """x [B, T, D]; caches: (k, v), all layers' stacked [L, B, KVH, S, Dh] with this one at index
    `layer` (scanned), or this layer's own [B, KVH, S, Dh] when `layer` is None (unrolled);
    prefix: this layer's shared (k, v) [1, KVH, P, Dh] or None; deltas: (this layer's
    row_deltas.layer_deltas, index [B]) or None. Returns (out, caches)."""
    cfg = self.config
    b, t, _ = x.shape
    h, kvh, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    project = functools.partial(_project, "attn", self.dtype, self.param_dtype, deltas)
    q = project("q", h * dh, x).reshape(b, t, h, dh)
    k = project("k", kvh * dh, x).reshape(b, t, kvh, dh)
    v = project("v", kvh * dh, x).reshape(b, t, kvh, dh)
    q = rope.apply_rotary(q, cos, sin)
    k = rope.apply_rotary(k, cos, sin)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, T, Dh]: the cache's order
    k_all, v_all = caches
    k_all = _write_slots(k_all, k, layer, write_index)
    v_all = _write_slots(v_all, v, layer, write_index)
    if layer is None:  # this layer's own buffers, written in place
      k_cache, v_cache = k_all.astype(self.dtype), v_all.astype(self.dtype)
    else:
      k_cache = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(self.dtype)
      v_cache = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(self.dtype)
    q = q.reshape(b, t, kvh, h // kvh, dh)
    out = _attend(q, k_cache, v_cache, attn_mask, prefix, prefix_mask, self.dtype)  # [B,T,KVH,G,Dh]
    out = project("o", cfg.hidden_size, out.reshape(b, t, h * dh))
    return out, (k_all, v_all)


def _write_slots(buffer, new, layer, write_index):
  """`new` [B, KVH, T, Dh] written into `buffer` ([B, KVH, S, Dh] when layer is None, else all
  layers' [L, B, KVH, S, Dh] at `layer`) at slots [w, w + T): write_index [] for every row (one
  in-place slice update), or [B] a slot of each row's own (a scatter; rows carried between
  decode batches are at different steps, engine/decode.py). Slots past S are dropped."""
  new = new.astype(buffer.dtype)
  if jnp.ndim(write_index) == 0:
    if layer is None:
      return jax.lax.dynamic_update_slice(buffer, new, (0, 0, write_index, 0))
    return jax.lax.dynamic_update_slice(buffer, new[None], (layer, 0, 0, write_index, 0))
  b, _, t, _ = new.shape
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]  # [B, 1]
  slots = write_index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B, T]
  values = new.transpose(0, 2, 1, 3)  # [B, T, KVH, Dh]: the advanced indices' axes first
  if layer is None:
    return buffer.at[rows, :, slots, :].set(values, mode="drop")
  return buffer.at[layer, rows, :, slots, :].set(values, mode="drop")


class MLP(nn.Module):
  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deltas=None):
    f = self.config.intermediate_size
    project = functools.partial(_project, "mlp", self.dtype, self.param_dtype, deltas)
    gate = project("gate", f, x)
    up = project("up", f, x)
    return project("down", self.config.hidden_size, nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  """One block, scanned over layers or one of the unrolled chain. The carry is (residual stream
  x [B, T, D], all layers' KV caches, layer index); the other input is this layer's slice of the
  shared prefix KV. `unrolled_index`: this layer's index in the unrolled chain (None: scanned, the
  carry's layer index), where each row's own weight delta is looked up (row_deltas.py)."""

  config: LlamaConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  unrolled_index: int | None = None

  @nn.compact
  def __call__(self, carry, prefix, cos, sin, write_index, attn_mask, prefix_mask, deltas=None):
    cfg = self.config
    x, caches, layer = carry
    this_layer = None  # (this layer's deltas by projection, each row's edit [B])
    if deltas is not None:
      at = layer if self.unrolled_index is None else self.unrolled_index
      this_layer = (row_deltas.layer_deltas(deltas, at, cfg.num_layers), deltas.index)
    normed = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_norm")(x)
    attn_out, caches = Attention(cfg, self.dtype, self.param_dtype, name="attn")(
        normed, cos, sin, caches, layer, write_index, attn_mask, prefix, prefix_mask, this_layer
    )
    x = x + attn_out
    normed = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attn_norm")(x)
    x = x + MLP(cfg, self.dtype, self.param_dtype, name="mlp")(normed, this_layer)
    return (x, caches, None if layer is None else layer + 1), None


class Llama(nn.Module):
  config: LlamaConfig
  dtype: Any = jnp.float32  # activations / compute
  param_dtype: Any = jnp.float32
  scan_layers: bool = True  # False: layers unrolled, params per layer (see layer_layout.py)

  @nn.compact
  def __call__(
      self,
      tokens,
      positions,
      cache: KVCache,
      write_index,
      attn_mask,
      logits_index=None,
      prefix: KVCache | None = None,
      prefix_mask=None,
      deltas: row_deltas.RowDeltas | None = None,
  ):
    cfg = self.config
    embed = nn.Embed(
        cfg.vocab_size,
        cfg.hidden_size,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="embed",
    )
    x = embed(tokens)  # [B, T, D]
    cos, sin = rope.rotary_tables(positions, rope.inverse_frequencies(cfg))
    shared = None if prefix is None else (prefix.k, prefix.v)
    if shared is not None and prefix_mask is None:
      prefix_mask = jnp.ones((prefix.length,), bool)
    for name, kv in (("cache", cache), ("prefix", prefix)):
      if kv is not None and kv.per_layer == self.scan_layers:
        raise ValueError(
            f"{name}: a {'per-layer' if kv.per_layer else 'stacked'} KVCache for a model with "
            f"{'scanned' if self.scan_layers else 'unrolled'} layers (KVCache.zeros(per_layer="
            f"{not self.scan_layers}))"
        )
    if self.scan_layers:
      layers = nn.scan(
          DecoderLayer,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(0,) + (nn.broadcast,) * 6,
          length=cfg.num_layers,
      )(cfg, self.dtype, self.param_dtype, name=layer_layout.STACKED)
      carry = (x, (cache.k, cache.v), jnp.zeros((), jnp.int32))
      (x, (k, v), _), _ = layers(
          carry, shared, cos, sin, write_index, attn_mask, prefix_mask, deltas
      )
    else:
      ks, vs = list(cache.k), list(cache.v)  # one buffer per layer, each written in place
      for i in range(cfg.num_layers):
        layer = DecoderLayer(cfg, self.dtype, self.param_dtype, i, name=layer_layout.layer_name(i))
        own = None if prefix is None else prefix.layer(i)
        (x, (ks[i], vs[i]), _), _ = layer(
            (x, (ks[i], vs[i]), None), own, cos, sin, write_index, attn_mask, prefix_mask, deltas
        )
      k, v = tuple(ks), tuple(vs)
    if isinstance(logits_index, tuple):  # (rows [B'], positions [B']): one position each
      x = x[logits_index[0], logits_index[1]]  # [B', D]
    elif logits_index is not None:
      x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)[:, 0]  # [B, D]
    x = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="final_norm")(x)
    if cfg.tie_word_embeddings:  # embed.attend, at the model's matmul precision
      logits = jnp.einsum(
          "...d,vd->...v",
          x,
          embed.embedding.astype(self.dtype),
          precision=matmul_precision(self.dtype),
      )
    else:
      logits = _dense(cfg.vocab_size, "lm_head", self.dtype, self.param_dtype)(x)
    return logits.astype(jnp.float32), KVCache(k=k, v=v)


def causal_forward(model: Llama, params, tokens: jax.Array) -> jax.Array:
  """Logits [B, T, V] of a plain causal pass over `tokens` [B, T] (no padding); for tests."""
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  cache = KVCache.zeros(model.config, b, t, model.dtype, per_layer=not model.scan_layers)
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  logits, _ = model.apply({"params": params}, tokens, positions, cache, 0, mask)
  return logits


def init_params(config: LlamaConfig, seed: int = 0, dtype=jnp.float32, scan_layers: bool = True):
  """Randomly initialised params (shapes for conversion checks and synthetic benchmarks), in the
  stacked layout, or per layer with scan_layers=False."""
  model = Llama(config, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
  tokens = jnp.zeros((1, 1), jnp.int32)
  cache = KVCache.zeros(config, 1, 1, dtype, per_layer=not scan_layers)
  mask = jnp.ones((1, 1, 1), bool)
  return model.init(jax.random.PRNGKey(seed), tokens, tokens, cache, 0, mask)["params"]
