"""KN (knowledge neurons): attribute the answer to the MLP gate activations at the prompt's last
token by integrated gradients, then edit the `down` rows of the neurons found (the reference's
Llama-3.2-3B file: 1 integrated-gradients step, adaptive threshold 0.2, every layer).

Attribution (for each layer l, the other layers untouched): the `gate` output g_l (before SiLU) at
the last position is replaced by α·g_l for α in linspace(0, 1, steps); the score is
g_l · Σ_α ∂p(y)/∂(α g_l) / steps, averaged over the answer's tokens y_i, where token i is asked
after the prompt extended by the model's own greedy tokens 1..i-1. With the reference's 1 step
linspace(0, 1, 1) = [0]: the gradient is taken at a zeroed activation. Neurons with a score above
adaptive_threshold × the largest score (over all layers) are chosen.

Edit: for each chosen neuron (layer l, index f), row f of layer l's `down` kernel [F, D] (a
column of torch's `down_proj.weight`) gets Σ E[target ids] − Σ E[greedy ids] added, with E the
input embeddings and as many greedy tokens of the unedited model as target ids (the greedy
embedding counted twice when there is one id, as the fork does).

The fork's quirks, kept under `attribution="reference"` / `target_bos=True`:
- the "ground truth" it attributes is the record's `loc_ans` (the locality question's answer,
  unrelated to the edited fact); `attribution="prediction"` (corrected) attributes the model's own
  greedy answer to the prompt, the fact the edit replaces, with as many tokens as the target;
- `tokenizer.encode(answer)` puts Llama's BOS first, so BOS is the first "answer token" both in
  the attribution and in the target embeddings; `target_bos=False` leaves it out.
The reference extends the prompt by re-tokenising decoded text; this appends the greedy ids.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.forward import MlpPatch, forward, logits_only
from bmike_jax.editing.request import EditRequest, pad_rows, round_up, stack_prepared
from bmike_jax.model.config import LlamaConfig

PATH = "mlp/down/kernel"
ATTRIBUTIONS = ("reference", "prediction")


@dataclasses.dataclass(frozen=True)
class KNConfig:
  steps: int = 1
  adaptive_threshold: float = 0.2
  attribution: str = "reference"
  target_bos: bool = True

  def __post_init__(self):
    if self.attribution not in ATTRIBUTIONS:
      raise ValueError(
          f"KN attribution must be one of {', '.join(ATTRIBUTIONS)}, " f"got {self.attribution!r}"
      )


def prepare(tokenizer, request: EditRequest, hp: KNConfig, *, length: int, max_answer: int) -> dict:
  """prompt [length] (its length `n_prompt`), the target ids and the attributed answer ids
  ([max_answer] each, with masks; answer ids of `attribution="prediction"` are filled in by
  `edit_one` from the model's greedy tokens)."""
  prompt = tokenizer.encode(request.prompt)
  target = tokenizer.encode(request.target, add_bos=hp.target_bos)
  answer = (
      tokenizer.encode(request.ground_truth, add_bos=hp.target_bos)
      if hp.attribution == "reference"
      else [0] * len(target)
  )
  for name, ids in (("target", target), ("attributed answer", answer)):
    if not ids or len(ids) > max_answer:
      raise ValueError(f"{request.name}: {len(ids)} {name} tokens (need 1..{max_answer})")
  if len(prompt) + max_answer > length:
    raise ValueError(f"{request.name}: prompt + answer exceed the padded length {length}")

  def padded(ids):
    return (
        np.array(list(ids) + [0] * (max_answer - len(ids)), np.int32),
        np.array([1] * len(ids) + [0] * (max_answer - len(ids)), np.int32),
    )

  (target_ids, target_mask), (answer_ids, answer_mask) = padded(target), padded(answer)
  return {
      "tokens": pad_rows([prompt], length)[0],
      "n_prompt": np.int32(len(prompt)),
      "target": target_ids,
      "target_mask": target_mask,
      "answer": answer_ids,
      "answer_mask": answer_mask,
  }


def prepare_batch(
    tokenizer,
    requests: Sequence[EditRequest],
    hp: KNConfig,
    length: int | None = None,
    max_answer: int | None = None,
) -> dict:
  if max_answer is None:  # every answer slot costs L forward + backward passes: keep it tight
    max_answer = max(
        len(tokenizer.encode(t, add_bos=hp.target_bos))
        for r in requests
        for t in (r.target, r.ground_truth)
    )
  longest = max(len(tokenizer.encode(r.prompt)) for r in requests) + max_answer
  length = round_up(longest) if length is None else length
  return stack_prepared(
      [prepare(tokenizer, r, hp, length=length, max_answer=max_answer) for r in requests]
  )


def greedy_extend(config: LlamaConfig, params, tokens: jax.Array, n_prompt, steps: int):
  """The row `tokens` [T] with `steps` greedy tokens written after its first n_prompt tokens
  (one full forward per token), and those tokens [steps]."""

  def step(row, i):
    logits = logits_only(config, params, row[None])[0]
    tok = jnp.argmax(logits[n_prompt + i - 1]).astype(jnp.int32)
    return row.at[n_prompt + i].set(tok), tok

  return jax.lax.scan(step, tokens, jnp.arange(steps))


def scores(
    config: LlamaConfig, params, hp: KNConfig, row: jax.Array, n_prompt, answer, answer_mask
) -> jax.Array:
  """Attribution scores [L, F]: `row` holds the prompt then the greedy tokens; answer token i is
  asked at position n_prompt - 1 + i."""
  alphas = jnp.linspace(0.0, 1.0, hp.steps)

  def for_token(i):
    pos = (n_prompt - 1 + i)[None]
    _, trace = forward(config, params, row[None], gate_position=pos)
    base = trace.gate_at[:, 0]  # [L, F]

    def for_layer(layer):
      def prob(g):
        patch = MlpPatch(layer=layer, position=pos, gate=g[None])
        logits, _ = forward(config, params, row[None], patch=patch)
        return jax.nn.softmax(logits[0, pos[0]])[answer[i]]

      grads = jax.vmap(lambda a: jax.grad(prob)(a * base[layer]))(alphas)
      return jnp.sum(grads, axis=0) * base[layer] / hp.steps

    return jax.lax.map(for_layer, jnp.arange(config.num_layers))

  per_token = jax.lax.map(for_token, jnp.arange(answer.shape[0]))  # [A, L, F]
  weights = answer_mask.astype(jnp.float32)
  return jnp.einsum("a,alf->lf", weights, per_token) / jnp.sum(weights)


def edit_one(config: LlamaConfig, params, hp: KNConfig, prepared: dict):
  """(delta {down: {ALL: (chosen [L, F, 1], vec [L, 1, D])}}, info {scores, chosen, greedy})."""
  n_prompt, max_answer = prepared["n_prompt"], prepared["answer"].shape[0]
  row, greedy = greedy_extend(config, params, prepared["tokens"], n_prompt, max_answer)
  answer, answer_mask = prepared["answer"], prepared["answer_mask"]
  if hp.attribution == "prediction":
    answer, answer_mask = jnp.where(prepared["target_mask"] > 0, greedy, 0), prepared["target_mask"]
  s = scores(config, params, hp, row, n_prompt, answer, answer_mask)
  chosen = s > jnp.max(s) * hp.adaptive_threshold  # [L, F]
  embed = params["embed"]["embedding"].astype(jnp.float32)
  t_mask = prepared["target_mask"].astype(jnp.float32)
  # the fork indexes the embeddings with the greedy id itself when there is one (a vector, which
  # it subtracts twice) but with the target's id list (a matrix, each row added once)
  twice = jnp.where(jnp.sum(t_mask) == 1, 2.0, 1.0)
  vec = t_mask @ embed[prepared["target"]] - twice * (t_mask @ embed[greedy])  # [D]
  layers = config.num_layers
  delta = {
      PATH: {
          delta_lib.ALL_LAYERS: (
              chosen.astype(jnp.float32)[:, :, None],
              jnp.broadcast_to(vec, (layers, 1, vec.shape[0])),
          )
      }
  }
  return delta, {"scores": s, "chosen": chosen, "greedy": greedy}


def edit(config: LlamaConfig, params, hp: KNConfig, prepared: dict):
  """A batch of edits ([R]-leading prepared arrays) -> (batched delta, batched info)."""
  return batched_program(config, hp)(params, {k: jnp.asarray(v) for k, v in prepared.items()})


@functools.lru_cache(maxsize=None)
def batched_program(config: LlamaConfig, hp: KNConfig):
  """The jitted batch of edits (edit_one vmapped over the requests): what `edit` runs and
  editing/batch_size compiles to read its memory."""
  return jax.jit(jax.vmap(lambda params, p: edit_one(config, params, hp, p), in_axes=(None, 0)))
