"""ROME's context templates, generated with the model.

The reference samples 20 continuations (top-k sampling) of the starters "The", "Therefore",
"Because", "I", "You": 10 of 5 tokens and 10 of 10 tokens, each turned into "{text}. {}" (braces
in the text replaced by spaces), and adds "{}". Sampling is random; this generates them greedily,
so one starter gives one text per length: 5 starters × 2 lengths = 10 templates (the caller may
pass more starters, or a fixed list to `ROMEConfig.context_templates` instead).
"""

from __future__ import annotations

from typing import Sequence

from bmike_jax.editing import answers
from bmike_jax.model.config import LlamaConfig

STARTERS = ("The", "Therefore", "Because", "I", "You")
LENGTHS = (5, 10)


def template_of(text: str) -> str:
  return text.replace("{", " ").replace("}", " ") + ". {}"


def generate(
    config: LlamaConfig,
    params,
    tokenizer,
    starters: Sequence[str] = STARTERS,
    lengths: Sequence[int] = LENGTHS,
) -> tuple[str, ...]:
  """Greedy templates (without "{}", which ROMEConfig adds): for each length, each starter
  continued by that many tokens (fewer where EOS ends it)."""
  out = []
  for length in lengths:
    for starter, ids in zip(
        starters,
        answers.greedy(
            config, params, tokenizer, starters, max_new_tokens=length, stop_at_quote=False
        ),
    ):
      out.append(template_of(starter + tokenizer.decode(ids)))
  return tuple(out)
