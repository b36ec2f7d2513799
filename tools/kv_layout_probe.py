"""Which KV-cache layout a decode step's attention reads fastest: one script, four variants, one table.

  python -m tools.kv_layout_probe [--batch=256] [--slots=640] [--output=FILE.json]

Attention alone (no weights): per step and layer, one new K/V entry written into the cache at the
step's slot, then one query token per row attends all `slots` (grouped heads, float32 scores and
accumulation, as `model/llama.py`'s `_attend`). Llama-3.1-8B's attention shapes (32 layers, 32
heads, 8 KV heads, head dim 128), bf16. Variants:
- `bskd_stacked`: the model's layout today, [L, B, S, KVH, Dh] in one buffer per K and V;
- `bksd_stacked`: [L, B, KVH, S, Dh]: batch and KV head lead, so neither einsum needs its operand
  transposed (on CPU, today's layout shows a transpose of every layer's cache slice per step in
  the optimized HLO);
- `bskd_per_layer`, `bksd_per_layer`: the same with one buffer per layer (as the weights are on
  accelerators, model/layer_layout.py).
Floor: the cache bytes one step must read (every slot's K and V, every layer) / HBM bandwidth.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app
from absl import flags

flags.DEFINE_integer("batch", 256, "Rows.")
flags.DEFINE_integer("slots", 640, "Cache slots per row.")
flags.DEFINE_integer("layers", 32, "Layers.")
flags.DEFINE_integer("heads", 32, "Query heads.")
flags.DEFINE_integer("kv_heads", 8, "KV heads.")
flags.DEFINE_integer("head_dim", 128, "Head dim.")
flags.DEFINE_integer("steps", 8, "Decode steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median kept).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

VARIANTS = ("bskd_stacked", "bksd_stacked", "bskd_per_layer", "bksd_per_layer")


def _step_fn(layout: str, per_layer: bool, n_layers: int, groups: int):
  import jax
  import jax.numpy as jnp

  dot = dict(preferred_element_type=jnp.float32)

  def attend(q, k, v, slot):  # q [B, KVH, G, Dh]; k, v one layer's cache
    if layout == "bskd":  # [B, S, KVH, Dh]
      s = jnp.einsum("bkgd,bskd->bkgs", q, k, **dot)
    else:  # [B, KVH, S, Dh]
      s = jnp.einsum("bkgd,bksd->bkgs", q, k, **dot)
    mask = jnp.arange(s.shape[-1]) <= slot
    s = jnp.where(mask, s, -1e30)
    p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    if layout == "bskd":
      return jnp.einsum("bkgs,bskd->bkgd", p, v, **dot)
    return jnp.einsum("bkgs,bksd->bkgd", p, v, **dot)

  def write(cache, new, slot):  # new [B, KVH, Dh] -> one slot of one layer's cache
    if layout == "bskd":
      return jax.lax.dynamic_update_slice(cache, new[:, None], (0, slot, 0, 0))
    return jax.lax.dynamic_update_slice(cache, new[:, :, None], (0, 0, slot, 0))

  def step(i, carry):
    ks, vs, x = carry  # x [B, KVH, G, Dh]: the stream standing in for the residual
    slot = i
    new_ks, new_vs = [], []
    for layer in range(n_layers):
      new = x[:, :, 0].astype(x.dtype)  # [B, KVH, Dh]
      if per_layer:
        k, v = write(ks[layer], new, slot), write(vs[layer], new, slot)
        new_ks.append(k)
        new_vs.append(v)
      else:
        k = write(ks[layer], new, slot)  # ks[layer]: a slice of the stacked buffer
        v = write(vs[layer], new, slot)
        ks = jax.lax.dynamic_update_index_in_dim(ks, k, layer, 0)
        vs = jax.lax.dynamic_update_index_in_dim(vs, v, layer, 0)
        k, v = ks[layer], vs[layer]
      x = (x + attend(x, k, v, slot).astype(x.dtype)) * 0.5
    if per_layer:
      ks, vs = new_ks, new_vs
    return ks, vs, x

  def steps(ks, vs, x, n):
    return jax.lax.fori_loop(0, n, step, (ks, vs, x))

  return steps


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from tools.bench import flops

  b, s, n_layers = FLAGS.batch, FLAGS.slots, FLAGS.layers
  kvh, dh, groups = FLAGS.kv_heads, FLAGS.head_dim, FLAGS.heads // FLAGS.kv_heads
  dtype = jnp.bfloat16
  cache_bytes = 2 * n_layers * b * s * kvh * dh * 2
  res = {
      "device": jax.devices()[0].device_kind,
      "batch": b,
      "slots": s,
      "layers": n_layers,
      "cache_bytes": cache_bytes,
      "variants": {},
      "compile_seconds": {},
  }
  for name in VARIANTS:
    layout, per_layer = name.split("_", 1)[0], name.endswith("per_layer")
    shape = (b, s, kvh, dh) if layout == "bskd" else (b, kvh, s, dh)
    key = jax.random.PRNGKey(0)
    if per_layer:
      ks = [jax.random.normal(key, shape, dtype) for _ in range(n_layers)]
      vs = [jax.random.normal(key, shape, dtype) for _ in range(n_layers)]
    else:
      ks = jax.random.normal(key, (n_layers, *shape), dtype)
      vs = jax.random.normal(key, (n_layers, *shape), dtype)
    x = jax.random.normal(key, (b, kvh, groups, dh), dtype)
    fn = jax.jit(
        _step_fn(layout, per_layer, n_layers, groups), static_argnums=3, donate_argnums=(0, 1)
    )
    t0 = time.perf_counter()
    compiled = fn.lower(ks, vs, x, FLAGS.steps).compile()
    res["compile_seconds"][name] = round(time.perf_counter() - t0, 2)
    ks, vs, x = compiled(ks, vs, x)
    runs = []
    for _ in range(FLAGS.repeats):
      t0 = time.perf_counter()
      ks, vs, x = compiled(ks, vs, x)
      jax.block_until_ready(x)
      runs.append(time.perf_counter() - t0)
    res["variants"][name] = statistics.median(runs) / FLAGS.steps
    del ks, vs, x, compiled
  spec = flops.lookup_device(res["device"])
  floor = cache_bytes / spec.hbm_bytes_per_s if spec else None
  res["floor_seconds"] = floor
  print(
      f"{res['device']}: batch {b}, slots {s}, {n_layers} layers; cache {cache_bytes / 1e9:.2f} GB"
      + (f", read floor {floor * 1e3:.3f} ms" if floor else "")
  )
  for k, v in res["variants"].items():
    print(f"{k:18s} {v * 1e3:9.3f} ms/step" + (f" {v / floor:6.2f}x floor" if floor else ""))
  print("compile seconds:", res["compile_seconds"])
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  app.run(main)
