"""Where a bf16 decode step's time goes on an accelerator: one script, several variants, one table.

  python -m tools.decode_probe [--model=llama3_8b|smollm2|tiny] [--batch=64] [--slots=64]

Variants, each timed as `steps` decode steps in one jitted fori_loop (median of --repeats):
- read_all_params: a reduction over every parameter byte (the measured HBM floor of a step);
- layer_chain: the decoder's matmuls with per-layer weight arrays, layers unrolled in Python (what
  a step costs when nothing but the weights is read);
- model_scanned / model_unrolled: the real model (`Llama.apply`, T=1, KV cache carried and
  donated) with the layers scanned over stacked params, or unrolled over per-layer params
  (model/layer_layout.py).
Also writes each model variant's optimized HLO to --hlo_dir, when given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

from absl import app
from absl import flags

flags.DEFINE_enum("model", "llama3_8b", ["llama3_8b", "smollm2", "tiny"], "Model shape.")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Params and compute dtype.")
flags.DEFINE_integer("batch", 64, "Rows per step.")
flags.DEFINE_integer("slots", 64, "KV cache slots per row.")
flags.DEFINE_integer("steps", 8, "Decode steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median kept).")
flags.DEFINE_list("layouts", ["scanned", "unrolled"], "Model variants.")
flags.DEFINE_string("hlo_dir", None, "Write each model variant's optimized HLO here.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def _time(fn, *args) -> float:
  import jax

  jax.block_until_ready(fn(*args))  # compile + warm
  runs = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from tools.bench import gpu
  from bmike_jax.model import KVCache, Llama, init_params
  from bmike_jax.model import layer_layout

  cfg = {"llama3_8b": gpu.llama31_8b_config, "tiny": gpu.tiny_config}.get(FLAGS.model)
  cfg = (
      cfg()
      if cfg
      else dataclasses.replace(  # SmolLM2-135M's shapes
          gpu.tiny_config(),
          vocab_size=49152,
          hidden_size=576,
          intermediate_size=1536,
          num_layers=30,
          num_heads=9,
          num_kv_heads=3,
          head_dim=64,
          tie_word_embeddings=False,
      )
  )
  dtype = jnp.dtype(FLAGS.dtype)
  b, s, n = FLAGS.batch, FLAGS.slots, FLAGS.steps
  params = jax.jit(lambda: init_params(cfg, seed=0, dtype=dtype))()
  param_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  res = {
      "device": jax.devices()[0].device_kind,
      "param_bytes": param_bytes,
      "batch": b,
      "slots": s,
      "variants": {},
  }

  read_all = jax.jit(
      lambda p: sum(jnp.sum(x, dtype=jnp.float32) for x in jax.tree_util.tree_leaves(p))
  )
  res["variants"]["read_all_params"] = _time(read_all, params)

  split = layer_layout.unstack_layers(params, cfg.num_layers)
  per_layer = jax.block_until_ready(
      [split[layer_layout.layer_name(i)] for i in range(cfg.num_layers)]
  )
  del split
  head = params["lm_head"]["kernel"] if "lm_head" in params else params["embed"]["embedding"].T

  def chain(layers, head, x):  # x [B, D]
    def one(_, x):
      for w in layers:
        a, m = w["attn"], w["mlp"]
        q = x @ a["q"]["kernel"]
        k = x @ a["k"]["kernel"]
        v = x @ a["v"]["kernel"]
        o = (q + jnp.sum(k) + jnp.sum(v)) @ a["o"]["kernel"]
        o = o[:, : cfg.hidden_size]
        x = x + o
        h = jax.nn.silu(x @ m["gate"]["kernel"]) * (x @ m["up"]["kernel"])
        x = (x + h @ m["down"]["kernel"]) * 0.5
      return x + (x @ head)[:, : cfg.hidden_size] * 1e-3

    return jax.lax.fori_loop(0, n, one, x)

  x0 = jax.random.normal(jax.random.PRNGKey(1), (b, cfg.hidden_size), dtype)
  res["variants"]["layer_chain"] = _time(jax.jit(chain), per_layer, head, x0) / n
  del per_layer

  for layout in FLAGS.layouts:
    scanned = layout == "scanned"
    model = Llama(cfg, dtype=dtype, param_dtype=dtype, scan_layers=scanned)
    variant_params = (
        params
        if scanned
        else jax.block_until_ready(layer_layout.unstack_layers(params, cfg.num_layers))
    )

    def steps(params, cache, tok, model=model):
      def one(i, carry):
        cache, tok = carry
        mask = jnp.broadcast_to(jnp.arange(s) <= i, (b, 1, s))
        pos = jnp.full((b, 1), i, jnp.int32)
        logits, cache = model.apply(
            {"params": params}, tok, pos, cache, i, mask, logits_index=jnp.zeros((b,), jnp.int32)
        )
        return cache, jnp.argmax(logits, axis=-1).astype(jnp.int32)[:, None]

      return jax.lax.fori_loop(0, n, one, (cache, tok))

    fn = jax.jit(steps, donate_argnums=(1,))
    tok = jnp.ones((b, 1), jnp.int32)
    name = f"model_{layout}"
    t0 = time.perf_counter()
    compiled = fn.lower(
        variant_params, KVCache.zeros(cfg, b, s, dtype, per_layer=not scanned), tok
    ).compile()
    res.setdefault("compile_seconds", {})[name] = time.perf_counter() - t0
    if FLAGS.hlo_dir:
      os.makedirs(FLAGS.hlo_dir, exist_ok=True)
      with open(os.path.join(FLAGS.hlo_dir, f"{name}.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    cache = KVCache.zeros(cfg, b, s, dtype, per_layer=not scanned)
    cache, _ = compiled(variant_params, cache, tok)
    runs = []
    for _ in range(FLAGS.repeats):
      t0 = time.perf_counter()
      cache, out = compiled(variant_params, cache, tok)
      jax.block_until_ready(out)
      runs.append(time.perf_counter() - t0)
    res["variants"][name] = statistics.median(runs) / n
    del variant_params, compiled, cache

  spec = gpu.flops.lookup_device(res["device"])
  hbm_floor = param_bytes / spec.hbm_bytes_per_s if spec else res["variants"]["read_all_params"]
  # FLOP floor of one step: every row through the decoder's and the head's matmuls (the embedding
  # is a lookup) and attention over all `slots` cache slots, at the table's dense bf16 peak.
  embed_params = cfg.vocab_size * cfg.hidden_size
  matmul_params = cfg.num_params - (0 if cfg.tie_word_embeddings else embed_params)
  attention_flops = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * s
  flop_floor = b * (2 * matmul_params + attention_flops) / spec.bf16_flops if spec else 0.0
  floor = max(hbm_floor, flop_floor)
  res["floors"] = {"hbm_seconds": hbm_floor, "flop_seconds": flop_floor, "max_seconds": floor}
  print(
      f"{res['device']}: params {param_bytes / 1e9:.2f} GB, batch {b}, slots {s}; "
      f"floor {floor * 1e3:.3f} ms = max(weight read {hbm_floor * 1e3:.3f}, "
      f"FLOPs {flop_floor * 1e3:.3f}) ({'table' if spec else 'read_all_params'})"
  )
  print(f"{'variant':28s} {'ms/step':>9s} {'x floor':>8s}")
  for k, v in res["variants"].items():
    print(f"{k:28s} {v * 1e3:9.3f} {v / floor:8.2f}")
  print("compile seconds:", {k: round(v, 1) for k, v in res.get("compile_seconds", {}).items()})
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  app.run(main)
