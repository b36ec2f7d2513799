"""An edit request (prompt, new target, subject) as the reference builds it from a record, and the
padding of token rows into the fixed shapes that `jax.vmap` batches over."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from bmike_jax.data import Record

SUBJECT_SLOT = "{}"


class EditError(ValueError):
  """An edit that cannot be built from its record (names the record and what is wrong)."""


@dataclasses.dataclass(frozen=True)
class EditRequest:
  """prompt: the English question `en.src`; target: the new answer `en.alt`; subject:
  `en.subject`; ground_truth: `en.loc_ans`, what the fork passes to KN as the fact's current
  answer (a quirk, see kn.py); name: where the request comes from, for messages."""

  prompt: str
  target: str
  subject: str
  ground_truth: str = ""
  name: str = ""


def request_from_record(record: Record) -> EditRequest:
  """The reference's edit of a record: `en.src` -> `en.alt`, subject `en.subject`."""
  en = record.en
  return EditRequest(
      prompt=en.src,
      target=en.alt,
      subject=en.subject,
      ground_truth=en.loc_ans,
      name=f"{record.dataset} record {record.index} (case_id {en.case_id})",
  )


def subject_template(request: EditRequest) -> str:
  """The prompt with its subject replaced by `{}` (ROME's request["prompt"]); an error when the
  subject does not occur exactly once (the reference asserts the same)."""
  count = request.prompt.count(request.subject) if request.subject else 0
  if count != 1:
    raise EditError(
        f"{request.name}: subject {request.subject!r} occurs {count} times in the "
        f"prompt {request.prompt!r} (ROME needs exactly one)"
    )
  return request.prompt.replace(request.subject, SUBJECT_SLOT, 1)


def fill(template: str, text: str) -> str:
  """`template` with its first `{}` replaced by `text` (str.format without brace parsing)."""
  return template.replace(SUBJECT_SLOT, text, 1)


def round_up(n: int, multiple: int = 16) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def pad_rows(
    rows: Sequence[Sequence[int]], length: int | None = None, value: int = 0
) -> np.ndarray:
  """[N, length] int32, each row right-padded with `value` (length: the longest rounded up to a
  multiple of 16)."""
  longest = max((len(r) for r in rows), default=1)
  length = round_up(longest) if length is None else length
  if longest > length:
    raise ValueError(f"a row of {longest} tokens does not fit the padded length {length}")
  out = np.full((len(rows), length), value, np.int32)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


def stack_prepared(items: Sequence[dict]) -> dict:
  """Per-record prepared arrays (same shapes) -> one dict of arrays with a leading [R] axis."""
  return {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}
