"""IKE prompts exactly as the reference (MultiKnow `icl.py`) builds them.

Prompt = demonstrations + query, no BOS text (the tokenizer adds BOS by default).
A demonstration is `entry.new_fact + "\\n" + entry[lang] + "\\n\\n"` (pool lines say
`New fact:`, lower-case f); the query says `New Fact:`.
"""

from __future__ import annotations

import random
from typing import Sequence

from bmike_jax.data import Demonstration, Record, check_query_type
from bmike_jax.languages import normalize_lang

SETUPS = ("zero_shot", "one_shot", "few_shot_mixed", "few_shot_specific")

ONE_SHOT_SEED = 42
MIXED_POOL_SIZE = 8
# 1-based pool entries of the metric-specific 8-shot setup, in prompt order.
METRIC_SPECIFIC_ENTRIES = {
    "reliability": (1, 2, 9, 10, 17, 18, 25, 26),
    "generality": (1, 2, 9, 10, 17, 18, 25, 26),
    "locality": (5, 6, 13, 14, 21, 22, 29, 30),
    "portability": (7, 8, 15, 16, 23, 24, 31, 32),
}


def one_shot_index(seed: int = ONE_SHOT_SEED) -> int:
  """The reference's `random.seed(42); random.randint(0, 7)` on a local generator (-> 1)."""
  return random.Random(seed).randint(0, MIXED_POOL_SIZE - 1)


_INDICES_BY_SETUP = {
    "zero_shot": lambda query_type: (),
    "one_shot": lambda query_type: (one_shot_index(),),
    "few_shot_mixed": lambda query_type: tuple(reversed(range(MIXED_POOL_SIZE))),
    "few_shot_specific": lambda query_type: tuple(
        i - 1 for i in METRIC_SPECIFIC_ENTRIES[query_type]
    ),
}


def check_setup(setup: str) -> str:
  if setup not in _INDICES_BY_SETUP:
    raise ValueError(f"unknown setup {setup!r}; valid: {', '.join(SETUPS)}")
  return setup


def demonstration_indices(setup: str, query_type: str) -> tuple[int, ...]:
  """0-based pool positions of the demonstrations, in prompt order."""
  return _INDICES_BY_SETUP[check_setup(setup)](check_query_type(query_type))


def render_demonstrations(pool: Sequence[Demonstration], indices: Sequence[int], lang: str) -> str:
  code = normalize_lang(lang)
  if indices and max(indices) >= len(pool):
    raise ValueError(f"pool has {len(pool)} entries, demonstrations need entry {max(indices) + 1}")
  return "".join(f"{pool[i].new_fact}\n{pool[i].line(code)}\n\n" for i in indices)


QUERY_START = 'New Fact: "'  # the demonstrations' lines say `New fact:`


def query_text(record: Record, query_type: str) -> str:
  return f'{QUERY_START}{record.en.src} {record.en.alt}"\nQuestion: "{record.query(query_type)}" Answer: "'


def strip_demonstrations(prompt: str) -> str:
  """The query of a built prompt: the text from its `New Fact: "` on."""
  start = prompt.find(QUERY_START)
  if start < 0:
    raise ValueError(f"not a BMIKE-53 prompt (no {QUERY_START!r}): {prompt[:80]!r}")
  return prompt[start:]


def build_prompt(
    pool: Sequence[Demonstration], setup: str, lang: str, record: Record, query_type: str
) -> str:
  code = normalize_lang(lang)
  if code != record.lang:
    raise ValueError(
        f"prompt language {code!r} differs from the record's target language {record.lang!r}"
    )
  indices = demonstration_indices(setup, query_type)
  return render_demonstrations(pool, indices, code) + query_text(record, query_type)
