"""Tokenizer: ids in, text out, exactly as the model's HF tokenizer does it (fast `tokenizers` backend).

Sources (`load_tokenizer`):
  - a directory with `tokenizer.json`: read with the `tokenizers` library; `tokenizer_config.json`
    `add_bos_token` / `add_eos_token`, when present, rebuild the post-processor as transformers does;
  - a directory with only `tokenizer.model` (sentencepiece): converted to a fast tokenizer by
    transformers (`AutoTokenizer`, or `LlamaTokenizer` when no `tokenizer_config.json` names a
    class); BOS is added when the config says so, else when the sentencepiece model defines one
    (the sentencepiece Llama default, as llama.cpp and transformers' own GGUF reader assume);
  - a `.gguf` file: its own tokenizer (`tokenizer.ggml.*` metadata), via transformers' converter.

  - a directory with only Meta's original tiktoken `tokenizer.model` (Llama 3.x: one
    `base64(token bytes) rank` per line): rebuilt as the byte-level BPE of its HF `tokenizer.json`
    (same ids), with Meta's 256 special tokens and BOS `<|begin_of_text|>` added, as Llama 3.1 does.

`encode(text, add_bos=True)` applies the post-processor (the tokenizer's own BOS rule: SmolLM2 adds
none, Llama-3 `<|begin_of_text|>`, Llama-2 `<s>`); `add_bos=False` applies none. transformers is
used for conversion only; encoding and decoding run in `tokenizers`.

Decode clean-up (`DECODE_CLEANUPS`, SPEC "Generation and answer extraction"): `tokenizer_config.json`
may ask for `clean_up_tokenization_spaces` (Llama-3.x does). The reference decoded with transformers
4.x, which applied that clean-up (` .` -> `.`, ` 's` -> `'s`, ...) to every tokenizer model, BPE
included; transformers >= 5.7 no longer does for BPE. `decode_cleanup="reference"` reproduces the
reference; `"plain"` never cleans up (the decoded text as is). The config's own flag is kept
(`config_clean_up`) and written back unchanged by `save`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Sequence

import numpy as np
import tokenizers
from absl import logging
from tokenizers import processors

from bmike_jax.checkpoints.errors import CheckpointError

QUOTE = '"'
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
CONFIG_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
# name -> what it does; the first is the default (the reference's behaviour).
DECODE_CLEANUPS = {
    "reference": "transformers 4.x decode, as the reference: the tokenizer config's "
    "clean_up_tokenization_spaces applied whatever the tokenizer model (BPE too)",
    "plain": "no clean-up: the decoded text as is (transformers >= 5.7 for BPE tokenizers)",
}


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the few facts of its HF wrapper (BOS/EOS tokens, clean-up)."""

  def __init__(
      self,
      backend: tokenizers.Tokenizer,
      bos_token: str | None,
      eos_token: str | None,
      source: str = "",
      config_clean_up: bool = False,
      decode_cleanup: str = "reference",
  ):
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
    if decode_cleanup not in DECODE_CLEANUPS:
      raise ValueError(
          f"decode_cleanup must be one of {', '.join(DECODE_CLEANUPS)}, " f"got {decode_cleanup!r}"
      )
    self.config_clean_up = config_clean_up  # what tokenizer_config.json asks for
    self.decode_cleanup = decode_cleanup
    self.clean_up_spaces = decode_cleanup == "reference" and config_clean_up

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
    config = {
        "tokenizer_class": "TokenizersBackend",
        "add_bos_token": self.adds_bos,
        "add_eos_token": self.adds_eos,
        "bos_token": self.bos_token,
        "eos_token": self.eos_token,
        "clean_up_tokenization_spaces": self.config_clean_up,
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)


def clean_up_tokenization(text: str) -> str:
  """transformers 4.x `clean_up_tokenization`, replacements in its order."""
  for before, after in (
      (" .", "."),
      (" ?", "?"),
      (" !", "!"),
      (" ,", ","),
      (" ' ", "'"),
      (" n't", "n't"),
      (" 'm", "'m"),
      (" 's", "'s"),
      (" 've", "'ve"),
      (" 're", "'re"),
  ):
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
  pair = (
      f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
  )
  special = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos else [])
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _from_config(
    backend: tokenizers.Tokenizer,
    config: dict,
    *,
    bos: str | None,
    eos: str | None,
    source: str,
    decode_cleanup: str,
    add_bos_default: bool | None,
) -> Tokenizer:
  """A Tokenizer over `backend` as tokenizer_config.json describes it: its add_bos_token /
  add_eos_token rebuild the post-processor as transformers does (`add_bos_default` when the config
  is silent; None: keep the backend's own post-processor then, if it has one), and its
  clean_up_tokenization_spaces is kept."""
  configured = "add_bos_token" in config or "add_eos_token" in config
  if configured or add_bos_default is not None or backend.post_processor is None:
    backend.post_processor = _template(
        bos,
        None if bos is None else backend.token_to_id(bos),
        eos,
        None if eos is None else backend.token_to_id(eos),
        bool(config.get("add_bos_token", bool(add_bos_default))),
        bool(config.get("add_eos_token", False)),
    )
  return Tokenizer(
      backend,
      bos,
      eos,
      source=source,
      config_clean_up=bool(config.get("clean_up_tokenization_spaces", False)),
      decode_cleanup=decode_cleanup,
  )


def from_tokenizer_json(directory: str, decode_cleanup: str = "reference") -> Tokenizer:
  path = os.path.join(directory, "tokenizer.json")
  try:
    backend = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
    raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from e
  config = {
      **_read_json(os.path.join(directory, "special_tokens_map.json")),
      **_read_json(os.path.join(directory, "tokenizer_config.json")),
  }
  bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
  return _from_config(
      backend,
      config,
      bos=bos,
      eos=eos,
      source=directory,
      decode_cleanup=decode_cleanup,
      add_bos_default=None,
  )


def from_transformers(hf_tokenizer, source: str, decode_cleanup: str = "reference") -> Tokenizer:
  """Wraps the fast backend of a transformers tokenizer (after its BOS/EOS set-up)."""
  backend = getattr(hf_tokenizer, "backend_tokenizer", None)
  if backend is None:
    raise CheckpointError(f"{source}: transformers built no fast tokenizer")
  return Tokenizer(
      backend,
      hf_tokenizer.bos_token,
      hf_tokenizer.eos_token,
      source=source,
      config_clean_up=bool(getattr(hf_tokenizer, "clean_up_tokenization_spaces", False)),
      decode_cleanup=decode_cleanup,
  )


def gguf_cache_entry(path: str, cache_dir: str | None) -> str | None:
  """The folder `from_gguf` keeps `path`'s converted tokenizer in under `cache_dir` (None: no
  cache): named by the file (absolute path, size, mtime) and the converter's versions
  (transformers, tokenizers), so a changed file or converter converts again."""
  if not cache_dir:
    return None
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  stat = os.stat(path)
  key = "\0".join(
      [
          os.path.abspath(path),
          str(stat.st_size),
          str(stat.st_mtime_ns),
          metadata.version("transformers"),  # without importing it: a kept tokenizer needs none
          tokenizers.__version__,
      ]
  )
  return os.path.join(
      os.path.expanduser(cache_dir), hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
  )


def from_gguf(
    path: str, decode_cleanup: str = "reference", cache_dir: str | None = None
) -> Tokenizer:
  """The GGUF's tokenizer, converted by transformers' GGUF converter (which parses the file's
  metadata: ~8 s for SmolLM2's 49k-token vocabulary). With `cache_dir`, the converted tokenizer is
  kept there (`Tokenizer.save`: tokenizer.json + tokenizer_config.json, tested to read back to
  the same tokenizer) and read back by later runs (gguf_cache_entry); an unreadable entry is
  converted again, and a cache that cannot be written is skipped with a warning."""
  entry = gguf_cache_entry(path, cache_dir)
  if entry is not None and os.path.isdir(entry):
    try:
      cached = from_tokenizer_json(entry, decode_cleanup)
      cached.source = path
      return cached
    except (CheckpointError, OSError, ValueError) as e:
      logging.warning("%s: unreadable cached tokenizer, converting again (%s)", entry, e)
  import transformers  # pylint: disable=import-outside-toplevel  (conversion only; no torch)

  try:
    hf = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path)
    )
  except (ValueError, OSError, KeyError) as e:
    raise CheckpointError(f"{path}: cannot build the GGUF's tokenizer ({e})") from e
  tok = from_transformers(hf, path, decode_cleanup)
  if entry is not None:
    _write_cache_entry(tok, entry)
  return tok


def _write_cache_entry(tok: Tokenizer, entry: str) -> None:
  """`tok.save` into `entry`, made whole in a scratch folder and renamed into place (a reader
  never sees half an entry; a concurrent writer's entry wins)."""
  scratch = f"{entry}.tmp{os.getpid()}"
  try:
    shutil.rmtree(scratch, ignore_errors=True)
    tok.save(scratch)
    if os.path.isdir(entry):
      shutil.rmtree(entry)  # an unreadable entry (a good one was read above)
    os.replace(scratch, entry)
  except OSError as e:
    logging.warning("%s: cannot keep the converted tokenizer (%s)", entry, e)
    shutil.rmtree(scratch, ignore_errors=True)


def from_sentencepiece(directory: str, decode_cleanup: str = "reference") -> Tokenizer:
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
  return from_transformers(hf, directory, decode_cleanup)


# Meta's Llama 3 tokenizer (its reference `tokenizer.py`): the pre-tokenizer pattern and the 256
# special tokens that follow the 128,000 BPE ranks.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} \d+")


def is_tiktoken_file(path: str) -> bool:
  """Meta's tiktoken format: text lines `base64(token bytes) rank` (a sentencepiece model is a
  binary protobuf)."""
  try:
    with open(path, "rb") as f:
      first = f.readline().rstrip(b"\r\n")
  except OSError:
    return False
  return bool(TIKTOKEN_LINE.fullmatch(first))


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
  printable = (
      list(range(ord("!"), ord("~") + 1))
      + list(range(ord("¡"), ord("¬") + 1))
      + list(range(ord("®"), ord("ÿ") + 1))
  )
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _read_tiktoken_ranks(path: str) -> dict[bytes, int]:
  import base64  # pylint: disable=import-outside-toplevel

  ranks: dict[bytes, int] = {}
  with open(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      if not TIKTOKEN_LINE.fullmatch(line):
        raise CheckpointError(f"{path}: line {number} is not `base64 rank` (a tiktoken file)")
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise CheckpointError(f"{path}: ranks are not 0 .. {len(ranks) - 1} without gaps")
  return ranks


def from_tiktoken(directory: str, decode_cleanup: str = "reference") -> Tokenizer:
  """Meta's original Llama 3 `tokenizer.model`, as the byte-level BPE of its HF tokenizer.json.

  Every token of rank r gets the merges (left, right) of its splits into two tokens that exist,
  ordered by r (then by the parts' ranks): with `ignore_merges` a pre-token that is itself in the
  vocabulary maps to it directly, so BPE over these merges gives tiktoken's ids. BOS is added
  (Llama 3.1's post-processor); `tokenizer_config.json`, when present, may rename BOS/EOS and asks
  for the clean-up.
  """
  import tokenizers.decoders  # pylint: disable=import-outside-toplevel
  import tokenizers.models  # pylint: disable=import-outside-toplevel
  import tokenizers.pre_tokenizers  # pylint: disable=import-outside-toplevel

  path = os.path.join(directory, "tokenizer.model")
  ranks = _read_tiktoken_ranks(path)
  chars = _bytes_to_unicode()
  text = {token: "".join(chars[b] for b in token) for token in ranks}
  merges = []
  for token, rank in ranks.items():
    splits = [
        (token[:i], token[i:])
        for i in range(1, len(token))
        if token[:i] in ranks and token[i:] in ranks
    ]
    splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
    merges.extend((rank, text[l], text[r]) for l, r in splits)
  merges.sort(key=lambda m: m[0])
  model = tokenizers.models.BPE(
      {text[t]: r for t, r in ranks.items()}, [(l, r) for _, l, r in merges], ignore_merges=True
  )
  backend = tokenizers.Tokenizer(model)
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
      [
          tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
          tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
  )
  backend.decoder = tokenizers.decoders.ByteLevel()
  backend.add_special_tokens(
      [tokenizers.AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS]
  )
  config = _read_json(os.path.join(directory, "tokenizer_config.json"))
  bos = _token_text(config.get("bos_token")) or LLAMA3_SPECIAL_TOKENS[0]
  eos = _token_text(config.get("eos_token")) or LLAMA3_SPECIAL_TOKENS[1]
  return _from_config(
      backend,
      config,
      bos=bos,
      eos=eos,
      source=directory,
      decode_cleanup=decode_cleanup,
      add_bos_default=True,  # Llama 3.1's post-processor
  )


def load_tokenizer(
    source: str, decode_cleanup: str = "reference", gguf_cache_dir: str | None = None
) -> Tokenizer:
  """From a directory with tokenizer.json or tokenizer.model (sentencepiece or Meta's tiktoken),
  or from a .gguf file (converted once per file into `gguf_cache_dir` when given: from_gguf).
  `decode_cleanup`: a key of DECODE_CLEANUPS."""
  if decode_cleanup not in DECODE_CLEANUPS:
    raise ValueError(
        f"decode_cleanup must be one of {', '.join(DECODE_CLEANUPS)}, " f"got {decode_cleanup!r}"
    )
  source = os.fspath(source)
  if os.path.isfile(source) and source.endswith(".gguf"):
    return from_gguf(source, decode_cleanup, cache_dir=gguf_cache_dir)
  if os.path.isdir(source):
    if os.path.isfile(os.path.join(source, "tokenizer.json")):
      return from_tokenizer_json(source, decode_cleanup)
    model = os.path.join(source, "tokenizer.model")
    if os.path.isfile(model):
      if is_tiktoken_file(model):
        return from_tiktoken(source, decode_cleanup)
      return from_sentencepiece(source, decode_cleanup)
    raise CheckpointError(f"{source}: no tokenizer.json or tokenizer.model in this directory")
  raise CheckpointError(
      f"{source}: no such tokenizer (expected a directory with tokenizer.json / "
      "tokenizer.model, or a .gguf file)"
  )
