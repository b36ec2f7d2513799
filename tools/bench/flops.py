"""Hardware floors: a measured matmul peak, a table of accelerator peaks, FLOP and HBM floors.

Conventions (stated in BENCHMARKS.md):
- prefill FLOP floor = prompt tokens x 2 x parameters / peak FLOP/s (the usual 2N rule; it counts
  the embedding lookup as a matmul and the lm_head at every position, so for a small model with a
  large vocabulary it over-states the work an engine that computes logits at the last position
  only must do); beside it the matmul floor = 2 x (decoder parameters x tokens + lm_head x prompts)
  / peak. Attention's own FLOPs (score and value products) are left out of both;
- decode HBM floor = parameter bytes / HBM bandwidth (every weight is read once per step); the
  KV-cache bytes read per step are reported beside it.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  name: str
  hbm_bytes_per_s: float  # HBM bandwidth, bytes/s
  bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s (no sparsity)


# Matched in order against `device.device_kind` (lower case, substring). Vendor datasheet numbers.
DEVICE_TABLE = (
    ("h200", DeviceSpec("NVIDIA H200 (SXM)", 4.8e12, 989e12)),
    ("gh200", DeviceSpec("NVIDIA GH200", 4.0e12, 989e12)),
    ("h100 pcie", DeviceSpec("NVIDIA H100 PCIe", 2.0e12, 756e12)),
    ("h100 nvl", DeviceSpec("NVIDIA H100 NVL", 3.9e12, 835e12)),
    ("h100", DeviceSpec("NVIDIA H100 SXM", 3.35e12, 989e12)),
    ("a100-sxm4-80gb", DeviceSpec("NVIDIA A100 SXM 80GB", 2.039e12, 312e12)),
    ("a100 80gb pcie", DeviceSpec("NVIDIA A100 PCIe 80GB", 1.935e12, 312e12)),
    ("a100", DeviceSpec("NVIDIA A100 40GB", 1.555e12, 312e12)),
    ("l40s", DeviceSpec("NVIDIA L40S", 0.864e12, 362e12)),
    ("a10g", DeviceSpec("NVIDIA A10G", 0.6e12, 70e12)),
)


def lookup_device(device_kind: str) -> DeviceSpec | None:
  kind = device_kind.lower()
  for key, spec in DEVICE_TABLE:
    if key in kind:
      return spec
  return None


def prefill_flops(tokens: int, num_params: int) -> float:
  return 2.0 * float(num_params) * float(tokens)


def matmul_flops(tokens: int, prompts: int, token_matmul_params: int, lm_head_params: int) -> float:
  """Dense-matmul FLOPs of a prefill: every token through the decoder layers, the lm_head at one
  position per prompt (the embedding is a lookup, not a matmul)."""
  return 2.0 * (float(token_matmul_params) * tokens + float(lm_head_params) * prompts)


def flop_floor_seconds(tokens: int, num_params: int, peak_flops: float) -> float:
  return prefill_flops(tokens, num_params) / peak_flops


def hbm_floor_seconds(num_bytes: float, bandwidth: float) -> float:
  return float(num_bytes) / bandwidth


def matmul_peak(n: int = 2048, dtype: str = "float32", reps: int = 5, warmup: int = 2) -> dict:
  """FLOP/s of the best of `reps` timed `jnp.dot` of two [n, n] matrices on the default device,
  after `warmup` untimed runs (the first compiles)."""
  import jax
  import jax.numpy as jnp

  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(key_b, (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  for _ in range(warmup):
    dot(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  best = min(times)
  return {
      "n": n,
      "dtype": str(dtype),
      "reps": reps,
      "best_seconds": best,
      "median_seconds": sorted(times)[len(times) // 2],
      "flops": 2.0 * n**3 / best,
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.devices()[0].platform,
  }
