"""MEMIT: spread one edit over several layers' `down` projections (the fork's Llama-3.2-3B file:
layers 4-8, second moments of the `down` inputs over 100k Wikipedia samples, update weight
15000).

- target z: the output of the last edited layer at the subject's last token, found by ROME's
  value search (rome.value_search) with δ added to that layer's output.
- then for each layer l in order, on the model updated by the layers before it (their updates
  added as factors beside the base weights, forward's `down_add`, so a vmapped batch of edits
  shares the base weights instead of each edit copying the stacked `down` kernel): the key k (the
  mean `down` input at the subject's last token over the context templates; the fork averages
  within template groups first), the residual r = (z - z_cur) / (layers left), z_cur the last
  edited layer's output on the bare prompt, and the update Δ = a rᵀ with
  (λ C_l + k kᵀ) a = k: Δ minimises ‖kᵀΔ - rᵀ‖² + λ tr(Δᵀ C_l Δ), C_l the second moments
  (stats.py). The fork solves in float64; this in float32.
Without second moments there is no MEMIT: `edit` raises an error naming what is missing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing import rome
from bmike_jax.editing.forward import forward
from bmike_jax.editing.request import EditRequest
from bmike_jax.model.config import LlamaConfig

PATH = "mlp/down/kernel"
# How the updates of the layers before enter the keys and residuals of the next (run.json's
# weight_edits.memit.update_form): "factors", beside the base weights (forward's down_add), since
# 2026-12-06; before, each added to a copy of the kernel. Equal up to float32 round-off, which an
# ill-conditioned C (a small corpus) can amplify, so a folder of the earlier form is not resumed.
UPDATE_FORM = "factors"


@dataclasses.dataclass(frozen=True)
class MEMITConfig(rome.ValueSearchConfig):
  """ROME's value search at the last of `layers`, its residual spread over all of them."""

  layers: tuple[int, ...] = (4, 5, 6, 7, 8)
  update_weight: float = 15000.0


def prepare_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    hp: MEMITConfig,
    length: int | None = None,
    max_targets: int | None = None,
) -> dict:
  """The same rows as ROME's (rome.prepare)."""
  return rome.prepare_batch(tokenizer, requests, hp, length=length, max_targets=max_targets)


def edit_one(config: LlamaConfig, params, hp: MEMITConfig, prepared: dict, moments):
  """(delta {down: {l: (a [F, 1], r [1, D]) for each layer}}, info: z [D], keys [n, F],
  residuals [n, D], losses, final loss). `moments` [n, F, F], one per layer of hp.layers."""
  n_ctx = len(hp.contexts)
  n_opt = n_ctx + 1
  z_layer = hp.layers[-1]
  tokens, lookup = prepared["tokens"], prepared["lookup"]
  logits0, trace = forward(config, params, tokens[:n_opt], capture_layer=z_layer)
  z0 = trace.layer_out[0, lookup[0]]
  kl_init = jax.nn.log_softmax(logits0[n_ctx, lookup[n_ctx]])
  d, losses, final = rome.value_search(
      config, params, hp, prepared, layer=z_layer, v0=z0, kl_init=kl_init
  )
  z = z0 + d
  key_rows, key_lookup = tokens[n_opt : n_opt + n_ctx], lookup[n_opt : n_opt + n_ctx]
  bare, bare_lookup = tokens[-1:], lookup[-1]
  # the updates made so far, as factors beside the base params (forward's down_add): slot idx of
  # layer hp.layers[idx] holds a_idx r_idxᵀ, the other slots and layers zeros
  n, f, dim = len(hp.layers), config.intermediate_size, config.hidden_size
  made = (
      jnp.zeros((config.num_layers, f, n), jnp.float32),  # [L, F, n]
      jnp.zeros((config.num_layers, n, dim), jnp.float32),  # [L, n, D]
  )
  delta, keys, resids = {}, [], []
  for idx, layer in enumerate(hp.layers):
    _, tk = forward(config, params, key_rows, capture_layer=layer, down_add=made)
    k = jnp.mean(tk.down_in[jnp.arange(n_ctx), key_lookup], axis=0)
    _, tz = forward(config, params, bare, capture_layer=z_layer, down_add=made)
    r = (z - tz.layer_out[0, bare_lookup]) / (len(hp.layers) - idx)
    a = jnp.linalg.solve(hp.update_weight * moments[idx] + jnp.outer(k, k), k)
    delta[layer] = (a[:, None], r[None, :])
    made = (made[0].at[layer, :, idx].set(a), made[1].at[layer, idx, :].set(r))
    keys.append(k)
    resids.append(r)
  info = {
      "z": z,
      "keys": jnp.stack(keys),
      "residuals": jnp.stack(resids),
      "losses": losses,
      "final_loss": final,
  }
  return {PATH: delta}, info


def edit(
    config: LlamaConfig,
    params,
    hp: MEMITConfig,
    prepared: dict,
    second_moments: np.ndarray | None = None,
):
  """A batch of edits -> (batched delta, batched info). `second_moments` [len(hp.layers), F, F]
  (stats.load_or_compute) is required."""
  if second_moments is None:
    raise ValueError(
        "MEMIT needs the second moments of the down-projection inputs over a "
        "corpus: compute them with editing.stats.load_or_compute from a local "
        ".txt or .jsonl corpus"
    )
  moments = jnp.asarray(second_moments, jnp.float32)
  want = (len(hp.layers), config.intermediate_size, config.intermediate_size)
  if moments.shape != want:
    raise ValueError(
        f"MEMIT second moments have shape {moments.shape}, need {want} "
        f"(one [F, F] per layer of {hp.layers})"
    )
  return batched_program(config, hp)(
      params, {k: jnp.asarray(v) for k, v in prepared.items()}, moments
  )


@functools.lru_cache(maxsize=None)
def batched_program(config: LlamaConfig, hp: MEMITConfig):
  """The jitted batch of edits (edit_one vmapped over the requests): what `edit` runs and
  editing/batch_size compiles to read its memory."""
  return jax.jit(
      jax.vmap(lambda params, p, m: edit_one(config, params, hp, p, m), in_axes=(None, 0, None))
  )
