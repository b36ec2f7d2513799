"""Tokenizer: ids in, text out, exactly as the model's HF tokenizer does it (fast `tokenizers` backend).

Sources (`load_tokenizer`):
  - a directory with `tokenizer.json`: read with the `tokenizers` library; `tokenizer_config.json`
    `add_bos_token` / `add_eos_token`, when present, rebuild the post-processor as transformers does;
  - a directory with only `tokenizer.model` (sentencepiece): converted to a fast tokenizer by
    transformers (`AutoTokenizer`, or `LlamaTokenizer` when no `tokenizer_config.json` names a
    class); BOS is added when the config says so, else when the sentencepiece model defines one
    (the sentencepiece Llama default, as llama.cpp and transformers' own GGUF reader assume);
  - a `.gguf` file: its own tokenizer (`tokenizer.ggml.*` metadata), via transformers' converter.

`encode(text, add_bos=True)` applies the post-processor (the tokenizer's own BOS rule: SmolLM2 adds
none, Llama-3 `<|begin_of_text|>`, Llama-2 `<s>`); `add_bos=False` applies none. transformers is
used for conversion only; encoding and decoding run in `tokenizers`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import numpy as np
import tokenizers
from tokenizers import processors

from bmike_jax.checkpoints.errors import CheckpointError

QUOTE = '"'
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model", "chat_template.jinja")


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the few facts of its HF wrapper (BOS/EOS tokens, clean-up)."""

  def __init__(self, backend: tokenizers.Tokenizer, bos_token: str | None, eos_token: str | None,
               source: str = "", clean_up_spaces: bool = False):
    self.backend = backend
    self.backend.no_truncation()
    self.backend.no_padding()
    self.source = source
    self.bos_token, self.eos_token = bos_token, eos_token
    self.bos_id = None if bos_token is None else backend.token_to_id(bos_token)
    eos_id = None if eos_token is None else backend.token_to_id(eos_token)
    self.eos_ids: tuple[int, ...] = () if eos_id is None else (eos_id,)
    added = backend.get_added_tokens_decoder()  # id -> AddedToken
    self.special_ids = frozenset(i for i, tok in added.items() if tok.special)
    vocab = backend.get_vocab(with_added_tokens=True)  # token -> id
    self.vocab_size = max(vocab.values()) + 1  # ids this tokenizer can produce: [0, vocab_size)
    # transformers skips its clean-up for BPE models (it corrupts them).
    self.clean_up_spaces = clean_up_spaces and type(backend.model).__name__ != "BPE"

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    return self.backend.encode(text, add_special_tokens=add_bos).ids

  def encode_batch(self, texts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
    return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_bos)]

  def decode(self, ids: Sequence[int]) -> str:
    """Special tokens skipped; bytes of a cut multi-byte character become U+FFFD, as in HF."""
    text = self.backend.decode([int(i) for i in ids], skip_special_tokens=True)
    return clean_up_tokenization(text) if self.clean_up_spaces else text

  @property
  def adds_bos(self) -> bool:
    """Whether `encode(..., add_bos=True)` puts BOS first (read off the post-processor)."""
    with_special = self.encode("a", add_bos=True)
    plain = self.encode("a", add_bos=False)
    return self.bos_id is not None and with_special[:1] == [self.bos_id] != plain[:1]

  @property
  def adds_eos(self) -> bool:
    with_special = self.encode("a", add_bos=True)
    plain = self.encode("a", add_bos=False)
    return bool(self.eos_ids) and with_special[-1:] == [self.eos_ids[0]] != plain[-1:]

  def quote_token_mask(self, size: int | None = None) -> np.ndarray:
    """[size or vocab_size] bool: True for tokens whose decoded bytes contain `"`.

    Byte-level BPE: a token's characters map one to one onto bytes, and only the character `"`
    stands for byte 0x22 (a token outside that alphabet decodes as its UTF-8 bytes, where the
    same holds). Sentencepiece: a piece decodes to its text (`▁` -> space), and with byte
    fallback `<0x22>` decodes to the byte 0x22. Special tokens are skipped by `decode`: False.
    """
    size = self.vocab_size if size is None else size
    mask = np.zeros(max(size, self.vocab_size), bool)  # [V]
    byte_fallback = "ByteFallback" in json.dumps(_component(self.backend, "decoder"))
    for token, i in self.backend.get_vocab(with_added_tokens=True).items():
      if i in self.special_ids:
        continue
      byte = BYTE_TOKEN.fullmatch(token) if byte_fallback else None
      mask[i] = (int(byte.group(1), 16) == ord(QUOTE)) if byte else QUOTE in token
    return mask[:size]

  def save(self, directory: str) -> None:
    """tokenizer.json + tokenizer_config.json that both this loader and AutoTokenizer read back
    to the same tokenizer."""
    os.makedirs(directory, exist_ok=True)
    self.backend.save(os.path.join(directory, "tokenizer.json"))
    config = {"tokenizer_class": "TokenizersBackend", "add_bos_token": self.adds_bos,
              "add_eos_token": self.adds_eos, "bos_token": self.bos_token,
              "eos_token": self.eos_token, "clean_up_tokenization_spaces": self.clean_up_spaces}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)


def clean_up_tokenization(text: str) -> str:
  """transformers' `clean_up_tokenization` (only for non-BPE models that ask for it)."""
  for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                        (" 're", "'re")):
    text = text.replace(before, after)
  return text


def _component(backend: tokenizers.Tokenizer, name: str) -> Any:
  return json.loads(backend.to_str()).get(name)


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _template(bos: str | None, bos_id, eos: str | None, eos_id, add_bos: bool, add_eos: bool):
  """The TemplateProcessing transformers' `update_post_processor` builds."""
  add_bos, add_eos = add_bos and bos_id is not None, add_eos and eos_id is not None
  single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
  pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
  special = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos else [])
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def from_tokenizer_json(directory: str) -> Tokenizer:
  path = os.path.join(directory, "tokenizer.json")
  try:
    backend = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
    raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from e
  config = {**_read_json(os.path.join(directory, "special_tokens_map.json")),
            **_read_json(os.path.join(directory, "tokenizer_config.json"))}
  bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
  if "add_bos_token" in config or "add_eos_token" in config or backend.post_processor is None:
    backend.post_processor = _template(
        bos, None if bos is None else backend.token_to_id(bos),
        eos, None if eos is None else backend.token_to_id(eos),
        bool(config.get("add_bos_token", False)), bool(config.get("add_eos_token", False)))
  return Tokenizer(backend, bos, eos, source=directory,
                   clean_up_spaces=bool(config.get("clean_up_tokenization_spaces", False)))


def from_transformers(hf_tokenizer, source: str) -> Tokenizer:
  """Wraps the fast backend of a transformers tokenizer (after its BOS/EOS set-up)."""
  backend = getattr(hf_tokenizer, "backend_tokenizer", None)
  if backend is None:
    raise CheckpointError(f"{source}: transformers built no fast tokenizer")
  return Tokenizer(backend, hf_tokenizer.bos_token, hf_tokenizer.eos_token, source=source,
                   clean_up_spaces=bool(getattr(hf_tokenizer, "clean_up_tokenization_spaces", False)))


def from_gguf(path: str) -> Tokenizer:
  import transformers  # pylint: disable=import-outside-toplevel  (conversion only; no torch)
  try:
    hf = transformers.AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                    gguf_file=os.path.basename(path))
  except (ValueError, OSError, KeyError) as e:
    raise CheckpointError(f"{path}: cannot build the GGUF's tokenizer ({e})") from e
  return from_transformers(hf, path)


def from_sentencepiece(directory: str) -> Tokenizer:
  import sentencepiece  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  model = os.path.join(directory, "tokenizer.model")
  config = _read_json(os.path.join(directory, "tokenizer_config.json"))
  try:
    has_bos = sentencepiece.SentencePieceProcessor(model_file=model).bos_id() >= 0
  except (OSError, RuntimeError) as e:
    raise CheckpointError(f"{model}: not a sentencepiece model ({e})") from e
  kwargs = {} if "add_bos_token" in config else {"add_bos_token": has_bos}
  try:
    if config.get("tokenizer_class"):
      hf = transformers.AutoTokenizer.from_pretrained(directory, **kwargs)
    else:
      hf = transformers.LlamaTokenizer.from_pretrained(directory, **kwargs)
  except (ValueError, OSError, KeyError) as e:
    raise CheckpointError(f"{model}: cannot convert the sentencepiece model ({e})") from e
  return from_transformers(hf, directory)


def load_tokenizer(source: str) -> Tokenizer:
  """From a directory with tokenizer.json or tokenizer.model, or from a .gguf file."""
  source = os.fspath(source)
  if os.path.isfile(source) and source.endswith(".gguf"):
    return from_gguf(source)
  if os.path.isdir(source):
    if os.path.isfile(os.path.join(source, "tokenizer.json")):
      return from_tokenizer_json(source)
    if os.path.isfile(os.path.join(source, "tokenizer.model")):
      return from_sentencepiece(source)
    raise CheckpointError(f"{source}: no tokenizer.json or tokenizer.model in this directory")
  raise CheckpointError(f"{source}: no such tokenizer (expected a directory with tokenizer.json / "
                        "tokenizer.model, or a .gguf file)")
