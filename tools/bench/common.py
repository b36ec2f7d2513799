"""What both benchmark entry points share: progress lines, the command line, the output files."""

from __future__ import annotations

import json
import os
import shlex
import sys


def log(msg: str) -> None:
  print(f"bench: {msg}", file=sys.stderr, flush=True)


def command_line(module: str) -> str:
  """The command that ran, as a reader would retype it (`python -m tools.bench_cpu ...`)."""
  return f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def output_paths(output: str) -> tuple[str, str]:
  """(markdown path, json path) of --output (with or without a .md / .json suffix)."""
  stem = (
      output[:-5]
      if output.endswith(".json")
      else (output[:-3] if output.endswith(".md") else output)
  )
  return stem + ".md", stem + ".json"


def write_outputs(*, md: str, raw: dict, output: str | None) -> None:
  """Prints the markdown; with `output` also writes it and the raw numbers beside it."""
  print(md)
  if not output:
    return
  md_path, json_path = output_paths(output)
  os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(md)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(raw, f, ensure_ascii=False, indent=1)
  log(f"wrote {md_path} and {json_path}")
