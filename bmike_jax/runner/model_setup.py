"""Model, tokenizer, mesh and engine from the run's flags."""

from __future__ import annotations

import dataclasses

import jax
from absl import logging

from bmike_jax import checkpoints, paths
from bmike_jax.checkpoints import hub, orbax_io
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import Engine
from bmike_jax.engine import memory as engine_memory
from bmike_jax.engine import sharding
from bmike_jax.model import layer_layout
from bmike_jax.runner.run_config import FlagError, RunConfig

# Share of one device's memory the weights may take when --mesh_model=auto chooses the model axis;
# the rest holds the KV caches, activations and XLA's workspace.
WEIGHT_MEMORY_SHARE = 0.5


def choose_model_axis(config, dtype: str, devices) -> int:
  """The smallest model-axis size m that divides the device count and the KV heads and leaves each
  device at most WEIGHT_MEMORY_SHARE of its memory in weights; 1 when memory is unknown (CPU).
  The largest such m when none fits (the run may still fail to allocate: said in the log)."""
  memory = engine_memory.device_memory_bytes(devices[0])
  if memory is None:
    return 1
  weight_bytes = engine_memory.weight_bytes(config, dtype)
  candidates = [
      m
      for m in range(1, len(devices) + 1)
      if len(devices) % m == 0 and config.num_kv_heads % m == 0
  ]
  for m in candidates:
    if weight_bytes / m <= WEIGHT_MEMORY_SHARE * memory:
      return m
  logging.warning(
      "weights (%.1f GB) do not fit in %.0f%% of %d device(s) of %.1f GB even when "
      "split %d ways",
      weight_bytes / 1e9,
      100 * WEIGHT_MEMORY_SHARE,
      len(devices),
      memory / 1e9,
      candidates[-1],
  )
  return candidates[-1]


def enable_compilation_cache(path: str) -> None:
  """Compiled programs are kept on disk, keyed by program and shapes; '' leaves it off."""
  if not path:
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def load_params(source: str, dtype: str, mesh, scan_layers: bool = True):
  """(config, params). A converted (orbax) checkpoint is restored straight onto the mesh: each
  device reads only its shards, and no host holds the whole model (an 8B on a pod); HF and GGUF
  sources are read on the host and placed by the engine. scan_layers=False: restored params are
  split per layer here, leaf by leaf, each stacked leaf freed once split (the engine would keep
  both layouts on the devices at once)."""
  if checkpoints.source_kind(source) != "orbax":
    return checkpoints.load_model(source, dtype=dtype)
  config = orbax_io.load_config(source)
  shardings = sharding.param_shardings(orbax_io.abstract_params(source, dtype), mesh, config)
  params = orbax_io.restore_params(source, shardings, dtype)
  if not scan_layers:
    params = layer_layout.unstack_layers(params, config.num_layers, consume=True)
  return config, params


def build_engine(cfg: RunConfig):
  """-> (engine, tokenizer, model_info for results.json)."""
  enable_compilation_cache(cfg.compilation_cache_dir)
  source = hub.resolve(cfg.checkpoint, flag="checkpoint") or checkpoints.default_gguf_path()
  tokenizer_source = hub.resolve(cfg.tokenizer, flag="tokenizer") or source
  config = checkpoints.load_config(source)  # a missing or unknown checkpoint is reported first
  mesh_model = cfg.mesh_model or choose_model_axis(config, cfg.dtype, jax.devices())
  try:
    mesh = sharding.make_mesh(data=cfg.mesh_data, model=mesh_model)
  except ValueError as e:
    raise FlagError(
        f"--mesh_data={cfg.mesh_data} --mesh_model={cfg.mesh_model or 'auto'} "
        f"({mesh_model}): {e} (this process sees {jax.device_count()} "
        "device(s))"
    ) from e
  logging.info("mesh %s over %d device(s)", dict(mesh.shape), mesh.devices.size)
  scan_layers = cfg.scan_layers
  if scan_layers is None:
    scan_layers = layer_layout.default_scan_layers(mesh.devices.flat[0].platform)
  config, params = load_params(source, cfg.dtype, mesh, scan_layers)
  tokenizer = tokenizer_lib.load_tokenizer(
      paths.local_copy(tokenizer_source, tokenizer_lib.CONFIG_FILES),
      decode_cleanup=cfg.decode_cleanup,
      gguf_cache_dir=cfg.tokenizer_cache_dir,
  )
  checkpoints.check_vocab(config, tokenizer, source, tokenizer_source)
  engine = Engine(
      config,
      params,
      tokenizer,
      mesh=mesh,
      batch_size=cfg.batch_size or engine_memory.auto_batch_size(mesh.devices.flat[0].platform),
      length_buckets=cfg.length_buckets,
      prefix_buckets=cfg.prefix_buckets,
      max_new_tokens=cfg.max_new_tokens,
      prefix_reuse=cfg.prefix_reuse,
      stem_reuse=cfg.stem_reuse,
      suffix_packing=cfg.suffix_packing,
      packed_length=cfg.packed_length,
      packed_rows=cfg.packed_rows,
      rest_packing=cfg.rest_packing,
      rest_row_length=cfg.rest_row_length,
      decode_halvings=cfg.decode_halvings,
      decode_carry=cfg.decode_carry,
      batch_shapes=cfg.batch_shapes,
      scan_layers=scan_layers,
      overlong=cfg.overlong,
      dtype=cfg.dtype,
      # What HF generate stops on (generation_config.json wins), as the reference.
      eos_ids=config.eos_token_ids or None,
  )
  model_info = {
      "checkpoint": source,
      "tokenizer": tokenizer_source,
      "dtype": cfg.dtype,
      "num_params": config.num_params,
      "config": dataclasses.asdict(config),
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "scan_layers": scan_layers,
      "tokenizer_config_clean_up": tokenizer.config_clean_up,
      "decode_cleanup_applied": tokenizer.clean_up_spaces,
  }
  return engine, tokenizer, model_info
