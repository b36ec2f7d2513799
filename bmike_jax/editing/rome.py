"""ROME: a rank-one update of one layer's `down` projection (the reference's Llama-3.2-3B file:
layer 5, subject-last token, 25 value-search steps at lr 0.5, loss on the final logits (its
`v_loss_layer` 27 is the last layer), weight decay 1e-3, clamp factor 4, KL factor 0.0625 on
"{} is a", early stop at 5e-2, no second-moment adjustment).

- key (`u`): the mean over the context templates of the `down` input at the subject's last token
  of `context.format(prompt)`, normalised to unit length. With `mom2_adjustment=False` (the
  reference's 3B setting) there is no C⁻¹ (identity covariance): no corpus is needed.
- value: `v = v0 + δ`, where v0 is the `down` output at the subject's last token of the first
  rewriting prompt and δ (added to that output at the subject's last token of every prompt) is
  found by Adam on: mean over the rewriting prompts `context.format(prompt) + decode(target[:-1])`
  of the mean -log p(target tokens) (teacher-forced), + kl_factor · KL(p_δ ‖ p_0) of the next-token
  distribution at the subject's last token of "{subject} is a" (torch's `kl_div(init, cur,
  log_target=True)`: the current distribution is the first argument), + weight_decay ·
  ‖δ‖ / ‖v0‖²; before each step it stops when the loss is below `stop_loss`, the last of the
  `steps` iterations only evaluates (so at most steps - 1 updates), and after each update δ is
  clamped to norm ≤ clamp_norm_factor · ‖v0‖.
- update: W += u (v - W k*)ᵀ / (k*·u), with k*, W k* the `down` input and output at the subject's
  last token of the bare prompt: the edited layer maps k* to v exactly.

Context templates: "{}" plus the caller's list (`context_templates`); `templates.py` generates
them with the model. The subject's last token is the last token of `tokenizer(prefix + subject)`
(prefix: the text before the subject), counted in the tokenization of the whole prompt; the
reference tokenises prefix, subject and suffix separately. The reference runs float16; this runs
float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing.forward import MlpPatch, forward
from bmike_jax.editing.optimise import adam_steps
from bmike_jax.editing.request import (
    EditRequest,
    SUBJECT_SLOT,
    fill,
    pad_rows,
    round_up,
    stack_prepared,
    subject_template,
)
from bmike_jax.model.config import LlamaConfig

PATH = "mlp/down/kernel"


@dataclasses.dataclass(frozen=True)
class ValueSearchConfig:
  """The value search's hyper-parameters (ROME's, which MEMIT reuses for its last layer)."""

  steps: int = 25
  lr: float = 0.5
  weight_decay: float = 1e-3
  clamp_norm_factor: float = 4.0
  kl_factor: float = 0.0625
  kl_prompt: str = "{} is a"
  stop_loss: float = 5e-2
  context_templates: tuple[str, ...] = ()  # besides "{}"; each holds one "{}"

  @property
  def contexts(self) -> tuple[str, ...]:
    return (SUBJECT_SLOT,) + tuple(self.context_templates)


@dataclasses.dataclass(frozen=True)
class ROMEConfig(ValueSearchConfig):
  layer: int = 5


def _norm(x: jax.Array) -> jax.Array:
  """‖x‖ whose gradient at x = 0 is 0, as torch's (jnp.linalg.norm's is NaN there, and δ starts
  at 0)."""
  sq = jnp.sum(x * x)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _subject_last(tokenizer, template: str, subject: str) -> int:
  prefix = template[: template.index(SUBJECT_SLOT)]
  return len(tokenizer.encode(prefix + subject)) - 1


def prepare(
    tokenizer, request: EditRequest, hp: ROMEConfig, *, length: int, max_targets: int
) -> dict:
  """Fixed-shape arrays of one edit. Rows: the rewriting prompts (one per context), then the KL
  prompt, then the key prompts (one per context, no target), then the bare prompt."""
  prompt = subject_template(request)
  for c in hp.contexts:
    if c.count(SUBJECT_SLOT) != 1:
      raise ValueError(f"ROME context template {c!r} must hold exactly one {SUBJECT_SLOT}")
  target = tokenizer.encode(" " + request.target, add_bos=False)
  if not target or len(target) > max_targets:
    raise ValueError(f"{request.name}: {len(target)} target tokens (need 1..{max_targets})")
  tail = tokenizer.decode(target[:-1])
  rewriting = [fill(c, prompt) + tail for c in hp.contexts]
  keys = [fill(c, prompt) for c in hp.contexts]
  templates = rewriting + [hp.kl_prompt] + keys + [prompt]
  rows = [tokenizer.encode(fill(t, request.subject)) for t in templates]
  lookup = [_subject_last(tokenizer, t, request.subject) for t in templates]
  n_ctx, k = len(hp.contexts), len(target)
  reads = np.zeros((n_ctx, max_targets), np.int32)
  for i, ids in enumerate(rows[:n_ctx]):  # logits at n-k .. n-1 predict the k target tokens
    reads[i, :k] = np.arange(len(ids) - k, len(ids))
  pad = max_targets - k
  return {
      "tokens": pad_rows(rows, length),
      "lookup": np.array(lookup, np.int32),
      "reads": reads,
      "labels": np.array(target + [0] * pad, np.int32),
      "mask": np.array([1] * k + [0] * pad, np.int32),
  }


def prepare_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    hp: ROMEConfig,
    length: int | None = None,
    max_targets: int | None = None,
) -> dict:
  texts = [fill(c, r.prompt) + " " + r.target for r in requests for c in hp.contexts]
  texts += [fill(hp.kl_prompt, r.subject) for r in requests]
  longest = max(len(tokenizer.encode(t)) for t in texts)
  length = round_up(longest) if length is None else length
  if max_targets is None:  # the logits read are [contexts, max_targets, V]: keep it tight
    max_targets = max(len(tokenizer.encode(" " + r.target, add_bos=False)) for r in requests)
  return stack_prepared(
      [prepare(tokenizer, r, hp, length=length, max_targets=max_targets) for r in requests]
  )


def value_search(
    config: LlamaConfig,
    params,
    hp,
    prepared: dict,
    *,
    layer: int,
    v0: jax.Array,
    kl_init: jax.Array,
):
  """The δ of the value search (module docstring), added to layer `layer`'s `down` output (the
  same as adding it to that layer's output) at the subject's last token of the rewriting and KL
  rows. `hp` holds the search's fields (ROMEConfig's; MEMITConfig has the same). Returns
  (δ, losses [steps - 1], final loss)."""
  n_ctx = len(hp.contexts)
  n_opt = n_ctx + 1  # rewriting prompts + the KL prompt
  opt_tokens, opt_lookup = prepared["tokens"][:n_opt], prepared["lookup"][:n_opt]
  reads, labels = prepared["reads"], prepared["labels"]
  mask = prepared["mask"].astype(jnp.float32)
  max_norm = hp.clamp_norm_factor * jnp.linalg.norm(v0)

  def loss(d):
    patch = MlpPatch(
        layer=layer, position=opt_lookup, out_add=jnp.broadcast_to(d, (n_opt, d.shape[0]))
    )
    logits, _ = forward(config, params, opt_tokens, patch=patch)
    logp = jax.nn.log_softmax(
        jnp.take_along_axis(logits[:n_ctx], reads[:, :, None], axis=1), axis=-1
    )  # [C, K, V]
    picked = jnp.take_along_axis(logp, jnp.broadcast_to(labels, reads.shape)[:, :, None], axis=-1)[
        ..., 0
    ]  # [C, K]
    nll = jnp.mean(-jnp.sum(picked * mask, axis=1) / jnp.sum(mask))
    kl_cur = jax.nn.log_softmax(logits[n_ctx, opt_lookup[n_ctx]])
    kl = jnp.sum(jnp.exp(kl_cur) * (kl_cur - kl_init))
    decay = hp.weight_decay * (_norm(d) / jnp.linalg.norm(v0) ** 2)
    return nll + hp.kl_factor * kl + decay

  def clamp(d):
    norm = jnp.linalg.norm(d)
    return jnp.where(norm > max_norm, d * max_norm / norm, d)

  return adam_steps(
      loss,
      jnp.zeros_like(v0),
      lr=hp.lr,
      steps=max(hp.steps - 1, 0),
      stop_loss=hp.stop_loss,
      project=clamp,
  )


def edit_one(config: LlamaConfig, params, hp: ROMEConfig, prepared: dict):
  """(delta {down: {layer: (u [F, 1], right [1, D])}}, info) of one prepared edit. info holds
  the key k* [F], the value v [D], v0 [D], losses [steps - 1], final loss."""
  n_ctx = len(hp.contexts)
  n_opt = n_ctx + 1
  tokens, lookup = prepared["tokens"], prepared["lookup"]
  rows = jnp.arange(tokens.shape[0])
  # Unedited pass over every row: keys, v0, the KL prompt's initial distribution.
  logits0, trace = forward(config, params, tokens, capture_layer=hp.layer)
  down_in = trace.down_in[rows, lookup]  # [N, F]
  down_out = trace.down_out[rows, lookup]  # [N, D]
  v0 = down_out[0]
  kl_init = jax.nn.log_softmax(logits0[n_ctx, lookup[n_ctx]])
  u = jnp.mean(down_in[n_opt : n_opt + n_ctx], axis=0)
  u = u / jnp.linalg.norm(u)
  k_star, w_k_star = down_in[-1], down_out[-1]
  d, losses, final = value_search(
      config, params, hp, prepared, layer=hp.layer, v0=v0, kl_init=kl_init
  )
  value = v0 + d
  right = (value - w_k_star) / jnp.dot(k_star, u)
  info = {"key": k_star, "value": value, "v0": v0, "losses": losses, "final_loss": final}
  return {PATH: {hp.layer: (u[:, None], right[None, :])}}, info


def edit(config: LlamaConfig, params, hp: ROMEConfig, prepared: dict):
  """A batch of edits ([R]-leading prepared arrays) -> (batched delta, batched info)."""
  return batched_program(config, hp)(params, {k: jnp.asarray(v) for k, v in prepared.items()})


@functools.lru_cache(maxsize=None)
def batched_program(config: LlamaConfig, hp: ROMEConfig):
  """The jitted batch of edits (edit_one vmapped over the requests): what `edit` runs and
  editing/batch_size compiles to read its memory."""
  return jax.jit(jax.vmap(lambda params, p: edit_one(config, params, hp, p), in_axes=(None, 0)))
