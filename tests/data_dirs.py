"""Where tests find BMIKE-53: the full data beside the repository (or $BMIKE53_DIR), if present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_DIR = Path(os.environ.get("BMIKE53_DIR") or Path(__file__).resolve().parents[2] / "shared" / "bmike53")
HAS_REAL = (REAL_DIR / "zsRE" / "zsre_test_he.json").is_file()
needs_real = pytest.mark.skipif(not HAS_REAL, reason=f"full data not found at {REAL_DIR}")
