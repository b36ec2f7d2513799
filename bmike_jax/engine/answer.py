"""Answer extraction, exactly as the reference does it (SPEC: "Generation and answer extraction")."""

from __future__ import annotations

from typing import Sequence


def cut_at_quote(text: str) -> str:
  """The text before its first `"` (all of it when there is none); kept as is, no strip."""
  return text.split('"', 1)[0]


def answer_text(tokenizer, ids: Sequence[int]) -> str:
  """Decode the generated ids (special tokens skipped) and cut at the first `"`."""
  return cut_at_quote(tokenizer.decode(list(ids)))
