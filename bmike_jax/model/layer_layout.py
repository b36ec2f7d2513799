"""The two layouts of the decoder layers' params, and the conversion between them.

stacked (checkpoints, `Llama(scan_layers=True)`): params["layers"][...] with a leading
    [num_layers] axis on every leaf, one scanned layer body. Compiles once per layer body.
per-layer (`Llama(scan_layers=False)`): params["layers_0"] ... params["layers_{L-1}"], the layers
    unrolled in the program. On GPU a scanned layer first copies its slice of every stacked weight
    (XLA materialises the slice before the matmul), so a weight-bound decode step moves each weight
    three times (read, write, read again); per-layer buffers are read once. BENCHMARKS.md has the
    measurement.

Checkpoints always hold the stacked layout; the engine converts once, before placing the params.
"""

from __future__ import annotations

from typing import Any, Mapping

STACKED = "layers"


def layer_name(i: int) -> str:
  return f"{STACKED}_{i}"


def is_stacked(params: Mapping[str, Any]) -> bool:
  return STACKED in params


def default_scan_layers(platform: str) -> bool:
  """Scanned on CPU (compiles ~5x faster, a step there is compute-bound either way); unrolled on
  GPU / TPU, where decode steps are weight-bandwidth-bound."""
  return platform == "cpu"


def unstack_layers(params: Mapping[str, Any], num_layers: int, consume: bool = False) -> dict:
  """Stacked -> per-layer. Slices of numpy leaves are views (no copy); of jax arrays, copies on
  the same devices (sharding kept). consume=True deletes each stacked jax array once it is sliced,
  so the extra device memory is one leaf, not the whole model (the caller must not use `params`
  afterwards)."""
  import jax

  if not is_stacked(params):
    raise ValueError(f"params have no '{STACKED}' entry: not in the stacked layout")

  def split(a):
    parts = [a[i] for i in range(num_layers)]
    if consume and isinstance(a, jax.Array):
      jax.block_until_ready(parts)
      a.delete()
    return parts

  stacked = jax.tree_util.tree_map(split, params[STACKED])
  out = {k: v for k, v in params.items() if k != STACKED}
  for i in range(num_layers):
    out[layer_name(i)] = jax.tree_util.tree_map(
        lambda parts, i=i: parts[i], stacked, is_leaf=lambda x: isinstance(x, list)
    )
  return out


def stack_layers(params: Mapping[str, Any], num_layers: int) -> dict:
  """Per-layer -> stacked (numpy on host for numpy leaves, else jax)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  names = [layer_name(i) for i in range(num_layers)]
  missing = [n for n in names if n not in params]
  if missing:
    raise ValueError(f"params lack layer(s) {', '.join(missing)}: not in the per-layer layout")
  out = {k: v for k, v in params.items() if k not in names}
  stack = lambda *xs: (
      np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)
  )
  out[STACKED] = jax.tree_util.tree_map(stack, *[params[n] for n in names])
  return out
