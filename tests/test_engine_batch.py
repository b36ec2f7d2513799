"""engine/batch.py: a program's batch is checked against the spec its shardings come from, so two
arrays passed in each other's place fail on one device already, naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax.engine import batch as batch_lib
from bmike_jax.engine import make_mesh
from bmike_jax.engine.batch import ScoreBatch, SuffixBatch

TOKENS = np.arange(12, dtype=np.int32).reshape(4, 3)
LENGTHS = np.array([3, 1, 2, 0], np.int32)
ACTIVE = np.array([True, True, True, False])


def test_a_right_batch_is_placed_row_by_row():
  mesh = make_mesh()
  spec = SuffixBatch.spec(batch=4, suffix_bucket=3)
  rows = batch_lib.place(SuffixBatch(tokens=TOKENS, lengths=LENGTHS, active=ACTIVE), spec, mesh)
  np.testing.assert_array_equal(np.asarray(rows.tokens), TOKENS)
  np.testing.assert_array_equal(np.asarray(rows.lengths), LENGTHS)
  np.testing.assert_array_equal(np.asarray(rows.active), ACTIVE)
  assert rows.tokens.sharding == batch_lib.row_shardings(spec, mesh).tokens


@pytest.mark.parametrize(
    "swapped, field",
    [
        (dict(tokens=LENGTHS, lengths=TOKENS, active=ACTIVE), ".tokens"),  # shape
        (dict(tokens=TOKENS, lengths=ACTIVE, active=LENGTHS), ".lengths"),  # dtype
    ],
)
def test_swapped_fields_fail_on_one_device(swapped, field):
  spec = SuffixBatch.spec(batch=4, suffix_bucket=3)
  with pytest.raises(ValueError, match=rf"SuffixBatch\{field}: .* expected "):
    batch_lib.place(SuffixBatch(**swapped), spec, make_mesh())


def test_score_batch_continuations_and_suffixes_cannot_trade_places():
  cont = np.zeros((4, 5), np.int32)
  spec = ScoreBatch.spec(batch=4, suffix_bucket=3, continuation_bucket=5)
  # (the first field that differs is named)
  with pytest.raises(
      ValueError, match=r"ScoreBatch\.tokens: int32\[4, 5\], expected " r"int32\[4, 3\]"
  ):
    batch_lib.check(
        ScoreBatch(
            tokens=cont, lengths=LENGTHS, continuations=TOKENS, continuation_lengths=LENGTHS
        ),
        spec,
    )
