"""Hugging Face hub ids (`org/name`) as --checkpoint / --tokenizer: resolved from the local HF
cache only (HF_HUB_CACHE / HF_HOME); bmike-jax never downloads."""

from __future__ import annotations

import os
import re

from bmike_jax import paths
from bmike_jax.checkpoints.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def looks_like_hub_id(value: str) -> bool:
  """org/name that is not an existing local path (a local folder of that name wins)."""
  return bool(_HUB_ID.match(value)) and not os.path.exists(value)


def resolve(value: str | None, *, flag: str) -> str | None:
  """A local or gs:// path unchanged; a hub id -> its snapshot folder in the local HF cache."""
  if not value or paths.is_remote(value) or not looks_like_hub_id(value):
    return value
  from huggingface_hub import constants, snapshot_download
  from huggingface_hub.errors import LocalEntryNotFoundError

  try:
    return snapshot_download(repo_id=value, local_files_only=True)
  except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
    raise CheckpointError(
        f"--{flag}={value}: no such local path, and no Hugging Face model {value!r} in the local "
        f"cache ({constants.HF_HUB_CACHE}); download it first (`hf download {value}`): "
        "bmike-jax never downloads"
    ) from None
