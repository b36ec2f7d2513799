"""The batched HF transformers baseline: `model.generate` on left-padded batches (pad token set,
attention mask), greedy, answers extracted as the reference does (decode the new tokens with
special tokens skipped, cut at the first `"`).

Within a group the prompts are sorted by length before batching (less padding), and the answers are
put back in the group's order: the best a careful user of `generate` would do.
"""

from __future__ import annotations

from typing import Sequence

from bmike_jax.engine.answer import cut_at_quote


def pad_id_of(model, hf_tokenizer) -> int:
  pad = model.generation_config.pad_token_id
  if pad is None:
    pad = getattr(hf_tokenizer, "pad_token_id", None)
  if pad is None:
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, (list, tuple)) else eos
  return int(pad)


def eos_ids_of(model) -> set[int]:
  eos = model.generation_config.eos_token_id
  if eos is None:
    return set()
  return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def generated_count(new_ids: Sequence[int], eos: set[int]) -> int:
  """Tokens a row really generated: up to and including its first EOS (the rest is padding)."""
  for i, t in enumerate(new_ids):
    if t in eos:
      return i + 1
  return len(new_ids)


def generate_batch(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int):
  """New token ids [len(prompt_ids)][max_new_tokens or fewer] of one left-padded batch."""
  import torch

  width = max(len(p) for p in prompt_ids)
  ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
  mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
  for r, p in enumerate(prompt_ids):
    ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
    mask[r, width - len(p) :] = 1
  with torch.no_grad():
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
  return [row[width:].tolist() for row in out]


def batched_answers(
    model,
    hf_tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    batch_size: int,
    max_new_tokens: int = 15,
):
  """(answers, generated token counts) for one group, in the group's order."""
  pad = pad_id_of(model, hf_tokenizer)
  eos = eos_ids_of(model)
  order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
  answers: list[str | None] = [None] * len(prompt_ids)
  counts = [0] * len(prompt_ids)
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    new = generate_batch(model, [prompt_ids[i] for i in rows], max_new_tokens, pad)
    for i, ids in zip(rows, new):
      n = generated_count(ids, eos)
      counts[i] = n
      answers[i] = cut_at_quote(hf_tokenizer.decode(ids[:n], skip_special_tokens=True))
  return answers, counts
