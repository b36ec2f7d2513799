"""LoRA: low-rank adapters on the `q` and `v` projections of every layer, trained on the edit
(the reference's Llama-3.2-3B file: rank 8, alpha 32, q_proj and v_proj of all layers, 70 Adam
steps at lr 5e-3).

This is PLAIN LoRA: W' = W + (alpha / rank) · A B, A [in, r] initialised as peft does
(Kaiming-uniform, bound 1/sqrt(in)) from a fixed seed, B [r, out] zeros, no dropout. The fork
uses peft's AdaLoRA instead, which differs: the update is P·diag(E)·Q (SVD form) with E starting
at zero, its initial rank is AdaLoRA's `init_r` (12), an orthogonality penalty on P and Q (weight
0.5) is added to the loss, and its dropout is 0.1; the fork never calls `update_and_allocate`, so
AdaLoRA's rank reallocation does not run. The loss is the fork's: the causal-LM loss on
`prompt + " " + target + suffix` with the prompt's tokens masked (teacher-forced, mean over the
target tokens); its suffix is the literal text " <|endoftext|>" (`suffix`, a quirk: not a special
token of Llama 3), and it does not stop early (`stop_loss=None`; a float skips steps below it as
FT-L does).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.forward import logits_only
from bmike_jax.editing.optimise import adam_steps, target_nll
from bmike_jax.editing.request import EditRequest, pad_rows, round_up, stack_prepared
from bmike_jax.model.config import LlamaConfig

TARGET_PATHS = {
    "q": "attn/q/kernel",
    "k": "attn/k/kernel",
    "v": "attn/v/kernel",
    "o": "attn/o/kernel",
    "gate": "mlp/gate/kernel",
    "up": "mlp/up/kernel",
    "down": "mlp/down/kernel",
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 32.0
  targets: tuple[str, ...] = ("q", "v")
  layers: tuple[int, ...] | None = None  # None: every layer
  steps: int = 70
  lr: float = 5e-3
  stop_loss: float | None = None
  suffix: str = " <|endoftext|>"
  seed: int = 0

  def __post_init__(self):
    unknown = [t for t in self.targets if t not in TARGET_PATHS]
    if unknown:
      raise ValueError(f"LoRA targets {unknown} unknown; valid: {', '.join(TARGET_PATHS)}")


def prepare(
    tokenizer, request: EditRequest, hp: LoRAConfig, *, length: int, max_targets: int
) -> dict:
  prompt_ids = tokenizer.encode(request.prompt)
  tokens = tokenizer.encode(f"{request.prompt} {request.target}{hp.suffix}")
  n = len(tokens) - len(prompt_ids)
  if n > max_targets:
    raise ValueError(f"{request.name}: {n} target tokens exceed max_targets {max_targets}")
  pad = max_targets - n
  return {
      "tokens": pad_rows([tokens], length)[0],
      "reads": np.array(list(range(len(prompt_ids) - 1, len(tokens) - 1)) + [0] * pad, np.int32),
      "labels": np.array(tokens[len(prompt_ids) :] + [0] * pad, np.int32),
      "mask": np.array([1] * n + [0] * pad, np.int32),
  }


def prepare_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    hp: LoRAConfig,
    length: int | None = None,
    max_targets: int | None = None,
) -> dict:
  longest = max(len(tokenizer.encode(f"{r.prompt} {r.target}{hp.suffix}")) for r in requests)
  length = round_up(longest) if length is None else length
  if max_targets is None:
    max_targets = max(
        len(tokenizer.encode(f"{r.prompt} {r.target}{hp.suffix}")) - len(tokenizer.encode(r.prompt))
        for r in requests
    )
  return stack_prepared(
      [prepare(tokenizer, r, hp, length=length, max_targets=max_targets) for r in requests]
  )


def init_factors(config: LlamaConfig, params, hp: LoRAConfig) -> dict:
  """{target: (A [L, in, r], B [L, r, out])}: A Kaiming-uniform (peft's), B zeros."""
  key = jax.random.PRNGKey(hp.seed)
  out = {}
  for name in hp.targets:
    kernel = delta_lib._get(params["layers"], TARGET_PATHS[name])
    layers, fan_in, fan_out = kernel.shape
    key, sub = jax.random.split(key)
    bound = 1.0 / np.sqrt(fan_in)
    a = jax.random.uniform(sub, (layers, fan_in, hp.rank), jnp.float32, -bound, bound)
    out[name] = (a, jnp.zeros((layers, hp.rank, fan_out), jnp.float32))
  return out


def to_delta(config: LlamaConfig, hp: LoRAConfig, factors: dict) -> dict:
  """The delta of trained factors: (alpha/rank · A·mask, B) on every layer (mask: the chosen
  layers)."""
  scale = hp.alpha / hp.rank
  mask = np.ones(config.num_layers, np.float32)
  if hp.layers is not None:
    mask = np.zeros(config.num_layers, np.float32)
    mask[list(hp.layers)] = 1.0
  return {
      TARGET_PATHS[name]: {delta_lib.ALL_LAYERS: (a * (scale * mask)[:, None, None], b)}
      for name, (a, b) in factors.items()
  }


def edit_one(config: LlamaConfig, params, hp: LoRAConfig, prepared: dict):
  def loss(factors):
    edited = delta_lib.apply_delta(params, to_delta(config, hp, factors))
    logits = logits_only(config, edited, prepared["tokens"][None])[0]
    return target_nll(logits, prepared["reads"], prepared["labels"], prepared["mask"])

  factors, losses, final = adam_steps(
      loss, init_factors(config, params, hp), lr=hp.lr, steps=hp.steps, stop_loss=hp.stop_loss
  )
  return to_delta(config, hp, factors), losses, final


def edit(config: LlamaConfig, params, hp: LoRAConfig, prepared: dict):
  """A batch of edits -> (batched delta, losses [R, steps], final losses [R])."""
  return batched_program(config, hp)(params, {k: jnp.asarray(v) for k, v in prepared.items()})


@functools.lru_cache(maxsize=None)
def batched_program(config: LlamaConfig, hp: LoRAConfig):
  """The jitted batch of edits (edit_one vmapped over the requests): what `edit` runs and
  editing/batch_size compiles to read its memory."""
  return jax.jit(jax.vmap(lambda params, p: edit_one(config, params, hp, p), in_axes=(None, 0)))
