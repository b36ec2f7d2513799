"""One code style: the tree is pyink-formatted with pyproject.toml's settings (CI runs this)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tree_is_pyink_formatted():
  if shutil.which("pyink", path=os.path.dirname(sys.executable)) is None:
    pytest.skip("pyink not installed (the `test` extra installs it)")
  proc = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--diff", "bmike_jax", "tests", "tools"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, "run `pyink bmike_jax tests tools`:\n" + proc.stdout[-3000:]
