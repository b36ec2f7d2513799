"""Importing the tools modules that tests import, then the runner's and convert's flags, raises no
DuplicateFlagError: absl flags are global, and a tool's --dtype or --output defined at import
collided with the runner's and convert's in the same test process (CI failed on exactly that).
A tool's own flags are defined when it runs as a command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every tools module some test imports
IMPORTED_BY_TESTS = (
    "tools.fidelity",
    "tools.llama3_files",
    "tools.paths",
    "tools.random_checkpoint",
    "tools.reference_hf",
    "tools.sweep_plan",
    "tools.tables",
    "tools.bench.gpu",
)


@pytest.mark.parametrize("command", ["bmike_jax.convert", "bmike_jax.main", "bmike_jax.report"])
def test_tools_flags_do_not_collide_with_the_commands(command):
  code = (
      "import importlib\n"
      f"for name in {IMPORTED_BY_TESTS!r}:\n"
      "  importlib.import_module(name)\n"
      f"importlib.import_module({command!r})\n"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
