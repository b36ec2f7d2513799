"""MEMIT on a tiny random Llama: second moments from a local corpus (stored and reused), each
layer's update solves MEMIT's regularised least squares, the base params stay bit-exact, and no
second moments means a clear error."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from bmike_jax.editing import methods, stats
from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.memit import MEMITConfig
from bmike_jax.editing.request import EditRequest
from bmike_jax.runner import fingerprint
from tests.editing_tiny import CharTokenizer
from tests.engine_tiny import tiny_config, tiny_params

REQUEST = EditRequest(prompt="Where was Mozart born?", target="Oslo", subject="Mozart", name="r0")


def test_memit_update_solves_its_least_squares(tmp_path):
  config, tok = tiny_config(), CharTokenizer()
  params = tiny_params(config)
  saved = jax.tree_util.tree_map(np.array, params)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("The cat sat on the mat.\n\nParis is in France.\nA quick brown fox.\n")
  hp = MEMITConfig(layers=(0, 1), update_weight=10.0, context_templates=("So. {}",))
  cache = str(tmp_path / "moments.npz")
  kw = dict(
      corpus_path=str(corpus),
      corpus_sha256=fingerprint.file_sha256(corpus),
      model_name="tiny",
      config=config,
      params=params,
      tokenizer=tok,
      layers=hp.layers,
      max_length=32,
  )
  moments = stats.load_or_compute(cache, **kw)
  assert moments.shape == (2, config.intermediate_size, config.intermediate_size)
  stamp = os.stat(cache).st_mtime_ns
  np.testing.assert_array_equal(stats.load_or_compute(cache, **kw), moments)  # reused
  assert os.stat(cache).st_mtime_ns == stamp
  with open(cache, "wb") as f:  # a torn or foreign file: computed and stored again
    f.write(b"not an npz")
  np.testing.assert_array_equal(stats.load_or_compute(cache, **kw), moments)
  np.testing.assert_array_equal(np.load(cache)["moments"], moments)
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
  # C is the mean of k kᵀ over every real token of the 3 texts
  np.testing.assert_allclose(moments[0], moments[0].T, atol=1e-7)
  assert np.all(np.linalg.eigvalsh(moments[0].astype(np.float64)) > -1e-6)

  with pytest.raises(ValueError, match="MEMIT needs the second moments"):
    methods.edit("memit", config, params, tok, [REQUEST], hp)
  delta, info = methods.edit(
      "memit", config, params, tok, [REQUEST], hp, second_moments=moments, length=48, max_targets=8
  )
  for j, layer in enumerate(hp.layers):
    a, r = delta["mlp/down/kernel"][layer]
    update = np.asarray(delta_lib.dense((a[0], r[0])), np.float64)
    k = np.asarray(info["keys"][0, j], np.float64)
    resid = np.asarray(info["residuals"][0, j], np.float64)
    lhs = (hp.update_weight * moments[j].astype(np.float64) + np.outer(k, k)) @ update
    rhs = np.outer(k, resid)
    # Normwise: the float32 solve of a system this ill-conditioned (a 63-token corpus, cond ~1e12)
    # leaves entries of ~1e-3 off by ~1% on some CPUs (seen 2026-12-06), while the residual of
    # the whole system stays ~1e-5 of the right side; a wrong update leaves ~1.
    assert np.linalg.norm(lhs - rhs) <= 1e-3 * np.linalg.norm(rhs), layer
  assert not np.allclose(info["residuals"][0, 0], 0)
  jax.tree_util.tree_map(np.testing.assert_array_equal, saved, params)


def test_corpus_errors(tmp_path):
  with pytest.raises(stats.CorpusError, match="no such corpus file"):
    stats.read_corpus(str(tmp_path / "missing.txt"))
  bad = tmp_path / "c.jsonl"
  bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
  with pytest.raises(stats.CorpusError, match="line 2: no string field 'text'"):
    stats.read_corpus(str(bad))


def test_a_corpus_smaller_than_the_layer_width_is_warned_about(caplog):
  """Fewer corpus tokens than down_proj's inputs leave the second moments rank-deficient (the
  runner's MEMIT answers then moved with the edit batch size): said in the log, not silently."""
  config, tok = tiny_config(), CharTokenizer()
  params = tiny_params(config)
  f = config.intermediate_size
  warned = lambda: [r for r in caplog.records if "fewer than the" in r.getMessage()]
  stats.second_moments(config, params, tok, ["ab"], [0], max_length=8)
  assert len(warned()) == 1 and f"fewer than the {f} inputs" in warned()[0].getMessage()
  caplog.clear()
  texts = ["x" * 60] * (f // 60 + 2)  # more real tokens than f
  stats.second_moments(config, params, tok, texts, [0], max_length=64)
  assert not warned()
