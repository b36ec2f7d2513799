"""Subprocess of test_engine_sharding: runs the engine on several meshes of fake CPU devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before jax is imported, so this runs
in its own interpreter (`python -m tests.engine_mesh_worker`) and prints one JSON document.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from bmike_jax.engine import Engine, make_mesh
from tests import engine_tiny

MESHES = ((1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4))


def _spec(engine, *path) -> list:
  leaf = engine.params
  for key in path:
    leaf = leaf[key]
  return [None if a is None else str(a) for a in leaf.sharding.spec]


def run(config, meshes) -> dict:
  params = engine_tiny.tiny_params(config)
  # 6 prompts: one batch of 8 (2 dummy rows) on every mesh, so each mesh compiles 4 programs.
  prompts = engine_tiny.group_prompts(seed=11, n=6, prefix_len=40, suffix_range=(1, 30))
  rng = np.random.default_rng(12)
  conts = [rng.integers(3, engine_tiny.VOCAB, n).tolist() for n in (3, 1, 7, 0, 5, 9)]
  out = {}
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    engine = Engine(config, params, engine_tiny.FakeTokenizer(), mesh=mesh, batch_size=8)
    results = engine.generate(prompts)
    logprobs = engine.continuation_logprobs(prompts, conts)
    out[f"{data}x{model}"] = {
        "ids": [list(r.ids) for r in results],
        "logprobs": [lp.tolist() for lp in logprobs],
        "q": _spec(engine, "layers", "attn", "q", "kernel"),
        "k": _spec(engine, "layers", "attn", "k", "kernel"),
        "down": _spec(engine, "layers", "mlp", "down", "kernel"),
        "embed": _spec(engine, "embed", "embedding"),
        "norm": _spec(engine, "final_norm", "scale"),
        "batch_buckets": list(engine.batch_buckets),
    }
    # No prefix reuse and 0 not a prefix bucket: the prompts run on an empty prefix region of
    # 64 slots (a zero KV placed on the mesh, every slot masked), sharded.
    engine = Engine(
        config,
        params,
        engine_tiny.FakeTokenizer(),
        mesh=mesh,
        batch_size=8,
        prefix_reuse=False,
        prefix_buckets=(64,),
    )
    out[f"{data}x{model}"]["empty_prefix_ids"] = [list(r.ids) for r in engine.generate(prompts)]
    out[f"{data}x{model}"]["empty_prefix_logprobs"] = [
        lp.tolist() for lp in engine.continuation_logprobs(prompts, conts)
    ]
    out[f"{data}x{model}"]["empty_prefix_buckets"] = sorted(
        {k[2] for k in engine.programs.compiles}
    )
  # Layers unrolled over per-layer params (the accelerator default): same answers, and each
  # layer's params follow the table without the stacked [L] axis.
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    engine = Engine(
        config, params, engine_tiny.FakeTokenizer(), mesh=mesh, batch_size=8, scan_layers=False
    )
    run_ = out[f"{data}x{model}"]
    run_["unrolled_ids"] = [list(r.ids) for r in engine.generate(prompts)]
    # scored off the kept prompt KV, in the per-layer cache layout, sharded
    run_["unrolled_logprobs"] = [lp.tolist() for lp in engine.continuation_logprobs(prompts, conts)]
    run_["unrolled_q"] = _spec(engine, "layers_1", "attn", "q", "kernel")
    run_["unrolled_down"] = _spec(engine, "layers_0", "mlp", "down", "kernel")
  # Record stems run once per batch (a block of stem rows over the data axis, gathered into the
  # rows of other devices), against the same prompts run whole on one device.
  records = engine_tiny.record_prompts(seed=14, records=4, prefix_len=40)
  stem_conts = [[5 + k % 7, 9] for k in range(len(records))]
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    run_ = out[f"{data}x{model}"]
    for stems in (True, False) if (data, model) == (1, 1) else (True,):
      engine = Engine(
          config, params, engine_tiny.FakeTokenizer(), mesh=mesh, batch_size=16, stem_reuse=stems
      )
      name = "stem" if stems else "whole"
      run_[f"{name}_ids"] = [list(r.ids) for r in engine.generate(records)]
      run_[f"{name}_logprobs"] = [
          lp.tolist() for lp in engine.continuation_logprobs(records, stem_conts)
      ]
      run_[f"{name}_programs"] = sum(k[0] == "generate_stemmed" for k in engine.programs.compiles)
    # Packed suffix rows: R packed rows over the data axis, each prompt's KV gathered into its
    # decode row (on another device where the packing put it elsewhere); then packed scoring
    # rests, two a prompt, a block's rows over the data axis, each gathering its kept row.
    engine = Engine(
        config,
        params,
        engine_tiny.FakeTokenizer(),
        mesh=mesh,
        batch_size=16,
        length_buckets=(64, 128),
        suffix_packing=True,
        packed_length=128,
        rest_packing=True,
        rest_row_length=32,  # K = 2 prompts a packed row
    )
    other_conts = [[4 + k % 5] * (1 + k % 3) for k in range(len(records))]
    scored = (records * 2, stem_conts + other_conts)
    # announced to generate: the rests scored inside the generate program, before decode
    run_["packed_ids"] = [list(r.ids) for r in engine.generate(records, scoring=scored)]
    run_["in_program_logprobs"] = [lp.tolist() for lp in engine.continuation_logprobs(*scored)]
    run_["in_program_rest_programs"] = sum(k[0] == "score_packed" for k in engine.programs.compiles)
    # not announced: scored after it, off the kept copy, by the score_packed program
    engine.generate(records)
    run_["packed_logprobs"] = [lp.tolist() for lp in engine.continuation_logprobs(*scored)]
    run_["packed_programs"] = sum(k[0] == "generate_packed" for k in engine.programs.compiles)
    run_["rest_programs"] = sum(k[0] == "score_packed" for k in engine.programs.compiles)
    # Record stems as segments of the packed rows: a prompt's KV gathered from its stem's slots
    # and its rest's, both in its packed row (on any device), then scored off it.
    engine = Engine(
        config,
        params,
        engine_tiny.FakeTokenizer(),
        mesh=mesh,
        batch_size=16,
        length_buckets=(64, 128),
        suffix_packing=True,
        packed_length=128,
        stem_reuse=True,
    )
    run_["packed_stem_ids"] = [list(r.ids) for r in engine.generate(records)]
    run_["packed_stem_logprobs"] = [
        lp.tolist() for lp in engine.continuation_logprobs(records, stem_conts)
    ]
    run_["packed_stem_tokens"] = engine.stats.stem_tokens
  # Rows of 3 edited models in shared batches, each with its own weight delta (the tables
  # replicated, each row's edit index over the data axis); unrolled on the largest mesh only.
  from bmike_jax.editing import delta as delta_lib

  tables = delta_lib.row_tables(engine_tiny.random_deltas(config, 3, seed=4), config.num_layers)
  edited = engine_tiny.group_prompts(seed=15, n=10, prefix_len=6)
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    for scan in (True, False) if (data, model) == meshes[-1] else (True,):
      engine = Engine(
          config, params, engine_tiny.FakeTokenizer(), mesh=mesh, batch_size=8, scan_layers=scan
      )
      got = engine.generate(edited, tables=tables, prompt_edits=[i % 3 for i in range(10)])
      name = "delta_ids" if scan else "unrolled_delta_ids"
      out[f"{data}x{model}"][name] = [list(r.ids) for r in got]
      if (data, model) == (1, 1):
        out["1x1"]["delta_unedited_ids"] = [list(r.ids) for r in engine.generate(edited)]
  # A batch of 16 whose decode loop shrinks to 8 and 4 rows (rows gathered across data devices).
  many = engine_tiny.group_prompts(seed=13, n=14, prefix_len=40, suffix_range=(1, 30))
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    for halvings in ((0, 2) if (data, model) == (1, 1) else (2,)):
      engine = Engine(
          config,
          params,
          engine_tiny.FakeTokenizer(),
          mesh=mesh,
          batch_size=16,
          decode_halvings=halvings,
      )
      out[f"{data}x{model}"][f"shrink{halvings}_ids"] = [list(r.ids) for r in engine.generate(many)]
  # Decode rows carried from batch to batch (decode_carry): 4 batches of 4 rows of one program,
  # the running rows handed on over the data axis (C = 2, or the data axis); unrolled on the
  # largest mesh too.
  for data, model in meshes:
    mesh = make_mesh(data, model, devices=jax.devices()[: data * model])
    for scan in (True, False) if (data, model) == meshes[-1] else (True,):
      engine = Engine(
          config,
          params,
          engine_tiny.FakeTokenizer(),
          mesh=mesh,
          batch_size=4,
          batch_shapes="fixed",
          length_buckets=(128,),
          decode_carry=0.5,
          scan_layers=scan,
      )
      name = "carry_ids" if scan else "unrolled_carry_ids"
      out[f"{data}x{model}"][name] = [list(r.ids) for r in engine.generate(many)]
      out[f"{data}x{model}"]["carry_steps"] = engine.stats.decode_steps
  return out


def main() -> None:
  assert len(jax.devices()) == 4, jax.devices()
  doc = {
      "divisible": run(engine_tiny.tiny_config(num_heads=8, num_kv_heads=4), MESHES),
      # KV heads 2 on a model axis of 4: k / v and the KV cache fall back to replication.
      "fallback": run(engine_tiny.tiny_config(num_heads=4, num_kv_heads=2), ((1, 1), (1, 4))),
  }
  json.dump(doc, sys.stdout)


if __name__ == "__main__":
  main()
