"""FT-L: fine-tune one layer's `down` projection on the edit (the reference's FT with its
Llama-3.2-3B file: layer 21 `down_proj`, 25 Adam steps at lr 5e-4, a step skipped when the loss
is below 1e-2).

The reference's objective ("prompt_last") reads every target token's log-probability at the LAST
PROMPT POSITION: the loss is the mean of -log p(t_k | prompt) over the target tokens t_k, all
predicted from the same position, not teacher-forced one after another (a quirk, kept as
`objective="prompt_last"`). Its target ids come from `tokenizer(" " + target)`, which for Llama
puts BOS first, so BOS is one of the "target tokens" (`target_bos=True`, a second quirk).
`objective="teacher_forced"` is the corrected loss: each target token predicted from the prompt
and the target tokens before it (what later EasyEdit versions do).
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

OBJECTIVES = ("prompt_last", "teacher_forced")
PATH = "mlp/down/kernel"


@dataclasses.dataclass(frozen=True)
class FTConfig:
  layer: int = 21
  steps: int = 25
  lr: float = 5e-4
  stop_loss: float = 1e-2
  objective: str = "prompt_last"
  target_bos: bool = True

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(
          f"FT objective must be one of {', '.join(OBJECTIVES)}, " f"got {self.objective!r}"
      )


def prepare(
    tokenizer, request: EditRequest, hp: FTConfig, *, length: int, max_targets: int
) -> dict:
  """Fixed-shape arrays of one edit: tokens [length]; read positions, labels, mask
  [max_targets]."""
  prompt_ids = tokenizer.encode(request.prompt)
  target_text = " " + request.target
  if hp.objective == "prompt_last":
    targets = tokenizer.encode(target_text, add_bos=hp.target_bos)
    tokens, reads = prompt_ids, [len(prompt_ids) - 1] * len(targets)
  else:
    tokens = tokenizer.encode(request.prompt + target_text)
    targets = tokens[len(prompt_ids) :]
    reads = list(range(len(prompt_ids) - 1, len(tokens) - 1))
  if len(targets) > max_targets:
    raise ValueError(
        f"{request.name}: {len(targets)} target tokens exceed max_targets " f"{max_targets}"
    )
  pad = max_targets - len(targets)
  return {
      "tokens": pad_rows([tokens], length)[0],
      "reads": np.array(reads + [0] * pad, np.int32),
      "labels": np.array(list(targets) + [0] * pad, np.int32),
      "mask": np.array([1] * len(targets) + [0] * pad, np.int32),
  }


def prepare_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    hp: FTConfig,
    length: int | None = None,
    max_targets: int | None = None,
) -> dict:
  longest = max(len(tokenizer.encode(r.prompt + " " + r.target)) for r in requests)
  length = round_up(longest) if length is None else length
  if max_targets is None:
    max_targets = max(
        len(tokenizer.encode(" " + r.target, add_bos=hp.target_bos))
        if hp.objective == "prompt_last"
        else len(tokenizer.encode(r.prompt + " " + r.target)) - len(tokenizer.encode(r.prompt))
        for r in requests
    )
  return stack_prepared(
      [prepare(tokenizer, r, hp, length=length, max_targets=max_targets) for r in requests]
  )


def loss_of(config: LlamaConfig, params, hp: FTConfig, prepared: dict):
  """The loss of one edit as a function of the `down` kernel's delta [F, D]."""

  def loss(d):
    edited = delta_lib.apply_delta(params, {PATH: {hp.layer: d}})
    logits = logits_only(config, edited, prepared["tokens"][None])[0]
    return target_nll(logits, prepared["reads"], prepared["labels"], prepared["mask"])

  return loss


def edit_one(config: LlamaConfig, params, hp: FTConfig, prepared: dict):
  """(delta, losses [steps], final loss) of one prepared edit (pure; vmapped by `edit`)."""
  kernel = params["layers"]["mlp"]["down"]["kernel"]
  init = jnp.zeros(kernel.shape[1:], jnp.float32)
  d, losses, final = adam_steps(
      loss_of(config, params, hp, prepared), init, lr=hp.lr, steps=hp.steps, stop_loss=hp.stop_loss
  )
  return {PATH: {hp.layer: d}}, losses, final


def edit(config: LlamaConfig, params, hp: FTConfig, prepared: dict):
  """A batch of edits ([R]-leading prepared arrays) -> (batched delta, losses [R, steps],
  final losses [R]): one optimisation per row, vmapped."""
  return batched_program(config, hp)(params, {k: jnp.asarray(v) for k, v in prepared.items()})


@functools.lru_cache(maxsize=None)
def batched_program(config: LlamaConfig, hp: FTConfig):
  """The jitted batch of edits (edit_one vmapped over the requests): what `edit` runs and
  editing/batch_size compiles to read its memory."""
  return jax.jit(jax.vmap(lambda params, p: edit_one(config, params, hp, p), in_axes=(None, 0)))
