"""A character tokenizer for the editing tests on tiny random models (vocab 256 of
tests/engine_tiny.py): one id per character, BOS 1, EOS 2; ids 3..255 stand for characters."""

from __future__ import annotations

import numpy as np

from tests.engine_tiny import BOS, EOS, VOCAB

OFFSET = 3


class CharTokenizer:
  bos_id = BOS
  eos_ids = (EOS,)
  vocab_size = VOCAB

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    ids = [OFFSET + ord(c) % (VOCAB - OFFSET) for c in text]
    return [BOS] + ids if add_bos else ids

  def decode(self, ids) -> str:
    return "".join(chr(int(i) - OFFSET) for i in ids if int(i) >= OFFSET)

  def quote_token_mask(self, size: int | None = None) -> np.ndarray:
    mask = np.zeros(size or VOCAB, bool)
    mask[OFFSET + ord('"')] = True
    return mask
