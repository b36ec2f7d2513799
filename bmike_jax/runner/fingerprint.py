"""Fingerprints of what a run read, for results.json and the resume check.

Data files (a few MB each) are hashed whole (sha256), as lm-evaluation-harness hashes its tasks.
A model is often many GB: its fingerprint is a sha256 over every file's relative path, size, and
first and last MiB (it catches another checkpoint or a re-conversion, not a flipped bit in the
middle of a weight file).
"""

from __future__ import annotations

import hashlib
import os

from bmike_jax import paths

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with paths.open_read(os.fspath(path), "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def _head_tail(path: str, digest) -> None:
  size = paths.size(path)
  digest.update(f"{size}\0".encode())
  with paths.open_read(path, "rb") as f:
    digest.update(f.read(CHUNK))
    if size > 2 * CHUNK:
      f.seek(size - CHUNK)
      digest.update(f.read(CHUNK))
    elif size > CHUNK:
      digest.update(f.read())


def short(fingerprint: str, n: int = 16) -> str:
  """The first `n` hex digits of a fingerprint (its digest, without the 'kind:' label): a file
  name part."""
  return fingerprint.rsplit(":", 1)[-1][:n]


def model_fingerprint(source: str) -> str:
  """'sha256-headtail:<hex>' of a checkpoint file or directory (see the module docstring)."""
  digest = hashlib.sha256()
  if paths.isfile(source):
    _head_tail(source, digest)
  else:
    for relative in paths.walk_files(source):  # local or gs://
      digest.update(relative.encode() + b"\0")
      _head_tail(paths.join(source, *relative.split("/")), digest)
  return "sha256-headtail:" + digest.hexdigest()
