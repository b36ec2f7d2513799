"""The one path layer: every file the runner, the report and `convert` read or write goes through
here, for local paths and Google Cloud Storage (`gs://bucket/...`) alike.

Paths stay plain strings. Local paths use the os module; `gs://` paths use `etils.epath` (gcsfs
underneath; orbax and tensorstore read and write gs:// themselves). Writes are atomic as far as
the storage allows: locally write-then-rename, on GCS one object upload (an object appears whole
when its upload finishes, or not at all). Any other scheme (`s3://`, `foo://`) is an error naming
the flag, never a local folder called `foo:`.

Emulators are reached through the clients' standard variables: STORAGE_EMULATOR_HOST (gcsfs),
TENSORSTORE_GCS_HTTP_URL with GOOGLE_AUTH_TOKEN_FOR_TESTING (tensorstore).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from typing import IO, Iterator

GCS_SCHEME = "gs"
SUPPORTED_SCHEMES = (GCS_SCHEME,)
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):/")

if os.environ.get(EMULATOR_VARIABLE):
  # An emulator has no storage control API: gcsfs's bucket-type probe would only warn.
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


class PathError(ValueError):
  """A path that cannot be used (unknown scheme, no credentials, missing bucket, unreachable
  storage); the message names the flag or file and what is wrong."""


def scheme(path: str | os.PathLike) -> str | None:
  """'gs' for gs://..., None for a local path; any other `xyz:/` prefix is returned as is."""
  match = _SCHEME.match(os.fspath(path))
  if match is None or len(match.group(1)) == 1:  # a Windows drive letter is a local path
    return None
  return match.group(1).lower()


def is_remote(path: str | os.PathLike) -> bool:
  return scheme(path) is not None


def check(path: str | os.PathLike | None, *, flag: str) -> None:
  """Raises PathError when `path` has a scheme other than gs:// (or a malformed gs:// one)."""
  if path is None or path == "":
    return
  path = os.fspath(path)
  kind = scheme(path)
  if kind is None:
    return
  if kind not in SUPPORTED_SCHEMES:
    raise PathError(
        f"--{flag}={path}: unsupported scheme '{kind}://'; use a local path or " "gs://BUCKET/..."
    )
  if not path.startswith("gs://") or not urllib.parse.urlparse(path).netloc:
    raise PathError(f"--{flag}={path}: a GCS path is gs://BUCKET/PATH")


def _epath(path: str):
  from etils import epath

  return epath.Path(path)


def _fs():
  import gcsfs

  return gcsfs.GCSFileSystem()


def join(root: str, *parts: str) -> str:
  if is_remote(root):
    return "/".join([root.rstrip("/"), *parts])
  return os.path.join(root, *parts)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  """A local folder is created; GCS has no folders (objects are written under the prefix)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names (not paths) directly under `path`, sorted."""
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def open_read(path: str, mode: str = "r") -> IO:
  if is_remote(path):
    return _epath(path).open(
        mode if "b" in mode else "r", **({} if "b" in mode else {"encoding": "utf-8"})
    )
  return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_text(path: str) -> str:
  with open_read(path) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_read(path, "rb") as f:
    return f.read()


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO[str]]:
  """A text file that appears at `path` whole when the block ends, or not at all (an exception,
  or kill -9, leaves the old content)."""
  if is_remote(path):
    # Written to a local temporary file, then uploaded as one object (which GCS shows whole
    # once the upload finishes, or not at all).
    fd, tmp = tempfile.mkstemp(prefix=".tmp-bmike-upload-")
    try:
      with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        yield f
      _fs().put_file(tmp, path)
    finally:
      os.unlink(tmp)
    return
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  # ".{name}.XXXX.tmp": a temporary left by kill -9 never ends like the file it stands for, so
  # nothing that lists "*.metrics.json" counts it.
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """`path` holds either its old content or all of `text`, even after kill -9."""
  with atomic_writer(path) as f:
    f.write(text)


def copy_file(src: str, dst: str) -> None:
  """One file, local or gs:// on either side."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    shutil.copy2(src, dst)
    return
  data = read_bytes(src)
  if is_remote(dst):
    _epath(dst).write_bytes(data)
  else:
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    with open(dst, "wb") as f:
      f.write(data)


def remove(path: str) -> None:
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.unlink(path)


# -- clear errors for remote storage --------------------------------------------------------------


def _emulator_endpoint() -> str | None:
  return os.environ.get(EMULATOR_VARIABLE) or None


def _check_reachable(endpoint: str, what: str) -> None:
  url = urllib.parse.urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    with socket.create_connection((url.hostname, port), timeout=5):
      pass
  except OSError as e:
    raise PathError(
        f"{what}: the GCS emulator at {EMULATOR_VARIABLE}={endpoint} is not "
        f"reachable ({e.strerror or e}); start it, or unset "
        f"{EMULATOR_VARIABLE}"
    ) from None


def _check_credentials(what: str) -> None:
  import google.auth
  from google.auth import exceptions

  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError:
    raise PathError(
        f"{what}: no Google Cloud credentials found; run `gcloud auth "
        "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run on a "
        "VM whose service account can use the bucket"
    ) from None


def check_access(path: str | None, *, flag: str) -> None:
  """Fails fast with one clear message when a gs:// path cannot be used: unknown scheme, no
  credentials, emulator down, missing bucket or no permission. Local paths pass untouched."""
  if not path:
    return
  check(path, flag=flag)
  if not is_remote(path):
    return
  what = f"--{flag}={path}"
  endpoint = _emulator_endpoint()
  if endpoint:
    _check_reachable(endpoint, what)
  else:
    _check_credentials(what)
  bucket = urllib.parse.urlparse(path).netloc
  try:
    _fs().info(bucket)
  except FileNotFoundError:
    raise PathError(
        f"{what}: bucket gs://{bucket} does not exist (create it with `gcloud "
        f"storage buckets create gs://{bucket}`)"
    ) from None
  except PermissionError as e:
    raise PathError(f"{what}: no permission to use bucket gs://{bucket} ({e})") from None
  except OSError as e:
    raise PathError(f"{what}: cannot reach Google Cloud Storage ({e})") from None


RUN_PATH_FLAGS = ("output_dir", "data_dir", "checkpoint", "tokenizer", "compilation_cache_dir")


def check_flags(cfg) -> None:
  """Every path flag of a run config (`RUN_PATH_FLAGS`): scheme, and for gs:// access."""
  for flag in RUN_PATH_FLAGS:
    value = getattr(cfg, flag, None)
    check_access(os.fspath(value) if value else None, flag=flag)


def as_path(path: str | os.PathLike):
  """A pathlib-like object for `path`: pathlib.Path locally, etils.epath.Path for gs://."""
  if is_remote(path):
    check(path, flag="path")
    return _epath(os.fspath(path))
  import pathlib

  return pathlib.Path(path)


def local_copy(path: str, names: tuple[str, ...] | None = None) -> str:
  """A local path with the content of `path`: itself when local; for gs:// a fresh temporary
  copy of the file, or of the folder's files (only `names`, those present, when given; not
  recursive). For readers that need the local file system (tokenizers, transformers)."""
  if not is_remote(path):
    return path
  folder = tempfile.mkdtemp(prefix="bmike-jax-")
  if isfile(path):
    target = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
    copy_file(path, target)
    return target
  wanted = listdir(path) if names is None else [n for n in names if isfile(join(path, n))]
  for name in wanted:
    if isfile(join(path, name)):
      copy_file(join(path, name), os.path.join(folder, name))
  return folder


def size(path: str) -> int:
  """A file's size in bytes."""
  if is_remote(path):
    return int(_fs().info(path)["size"])
  return os.path.getsize(path)


def walk_files(root: str) -> list[str]:
  """Every file under `root`, as paths relative to it ('/'-separated), in os.walk's order with
  sorted names: a folder's files first, then its subfolders."""
  if is_remote(root):
    prefix = root.rstrip("/")[len("gs://") :] + "/"
    names = [name[len(prefix) :] for name in _fs().find(root) if name.startswith(prefix)]
  else:
    names = [
        os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
        for folder, _, files in os.walk(root)
        for name in files
    ]
  return sorted(names, key=_walk_order)


def _walk_order(relative: str) -> list[tuple[int, str]]:
  *folders, name = relative.split("/")
  return [(1, folder) for folder in folders] + [(0, name)]
