"""Second moments of the `down` projection's inputs over a text corpus (MEMIT's C = E[k kᵀ]),
computed once per model, layers and corpus, stored as .npz and reused.

The fork uses 100k Wikipedia samples; here the corpus is a local file the user gives: `.txt` (one
text per non-empty line) or `.jsonl` (a "text" field per line). Every real token position of
every text (tokenised with BOS, cut at `max_length`) contributes one key.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.editing.forward import forward
from bmike_jax.editing.request import pad_rows
from bmike_jax.model.config import LlamaConfig


class CorpusError(ValueError):
  """A corpus file that cannot be read (names the file, line and the fault)."""


def read_corpus(path: str, limit: int | None = None) -> list[str]:
  if not os.path.isfile(path):
    raise CorpusError(
        f"{path}: no such corpus file (MEMIT's second moments need a .txt or " ".jsonl corpus)"
    )
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if limit is not None and len(texts) >= limit:
        break
      if not line.strip():
        continue
      if path.endswith(".jsonl"):
        try:
          item = json.loads(line)
        except json.JSONDecodeError as err:
          raise CorpusError(f"{path}: line {number}: not JSON ({err.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
          raise CorpusError(f"{path}: line {number}: no string field 'text'")
        texts.append(item["text"])
      else:
        texts.append(line.rstrip("\n"))
  if not texts:
    raise CorpusError(f"{path}: the corpus holds no text")
  return texts


def second_moments(
    config: LlamaConfig,
    params,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    max_length: int = 128,
    batch_size: int = 8,
) -> np.ndarray:
  """[len(layers), F, F] float32: the mean of k kᵀ over every real token's `down` input k."""
  f = config.intermediate_size
  sums = np.zeros((len(layers), f, f), np.float64)
  count = 0
  keys = jax.jit(
      lambda p, t, layer: forward(config, p, t, capture_layer=layer)[1].down_in, static_argnums=2
  )
  for start in range(0, len(texts), batch_size):
    ids = [tokenizer.encode(t)[:max_length] for t in texts[start : start + batch_size]]
    tokens = jnp.asarray(pad_rows(ids, max_length))
    real = np.zeros((len(ids), max_length), bool)
    for i, row in enumerate(ids):
      real[i, : len(row)] = True
    count += int(real.sum())
    for j, layer in enumerate(layers):
      k = np.asarray(keys(params, tokens, int(layer)), np.float64)[real]  # [n, F]
      sums[j] += k.T @ k
  if count < f:
    logging.warning(
        "MEMIT's second moments from %d corpus tokens, fewer than the %d inputs of down_proj: "
        "the matrix has rank <= %d, so MEMIT's solve is ill-conditioned and its answers may "
        "change with --edit_batch_size (the reference uses 100,000 Wikipedia texts); give a "
        "larger --memit_corpus",
        count,
        f,
        count,
    )
  return (sums / max(count, 1)).astype(np.float32)


def load_or_compute(
    cache_path: str | None,
    *,
    corpus_path: str,
    corpus_sha256: str,
    model_name: str,
    config: LlamaConfig,
    params,
    tokenizer,
    layers: Sequence[int],
    limit: int | None = None,
    max_length: int = 128,
) -> np.ndarray:
  """The second moments of `layers`, read from `cache_path` when it was computed from the same
  model name, layers, corpus file (`corpus_sha256`, the caller's hash of `corpus_path`), limit
  and max_length; else computed and stored there, whole or not at all (a temporary file renamed;
  a file that cannot be read is computed again). cache_path None: computed, not stored."""
  meta = {
      "model": model_name,
      "layers": [int(x) for x in layers],
      "corpus_sha256": corpus_sha256,
      "limit": limit,
      "max_length": max_length,
  }
  if cache_path and os.path.isfile(cache_path):
    try:
      with np.load(cache_path) as stored:
        if json.loads(str(stored["meta"])) == meta:
          return stored["moments"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
      logging.warning(
          "MEMIT second moments %s unreadable (%s): computing them again", cache_path, err
      )
  texts = read_corpus(corpus_path, limit)
  moments = second_moments(config, params, tokenizer, texts, layers, max_length=max_length)
  if not cache_path:
    return moments
  folder = os.path.dirname(os.path.abspath(cache_path))
  os.makedirs(folder, exist_ok=True)
  # processes sharing the folder (a pod's hosts on one disk) each rename a whole file into place
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(cache_path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, moments=moments, meta=np.array(json.dumps(meta)))
    os.chmod(tmp, 0o644)  # as a file np.savez creates (mkstemp's is private)
    os.replace(tmp, cache_path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return moments
