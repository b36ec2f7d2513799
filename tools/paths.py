"""Where the full BMIKE-53 data of this workspace is: the one rule tools and tests share."""

from __future__ import annotations

import os
from pathlib import Path

from bmike_jax import data as data_lib

REPO_ROOT = Path(__file__).resolve().parents[1]
# $BMIKE53_DIR, else the `shared/bmike53` folder beside the repository (this workspace's layout).
FULL_DATA_DIR = Path(
    os.environ.get(data_lib.DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "bmike53"
)


def has_full_data() -> bool:
  """Whether FULL_DATA_DIR holds the full data (a file the sample lacks: Hebrew zsRE)."""
  return (FULL_DATA_DIR / "zsRE" / "zsre_test_he.json").is_file()


def default_data_dir() -> str:
  """The full data when present, else the package's default ($BMIKE53_DIR or the sample)."""
  return str(FULL_DATA_DIR) if FULL_DATA_DIR.is_dir() else str(data_lib.default_data_dir())
