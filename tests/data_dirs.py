"""Where tests find BMIKE-53: the full data of tools/paths.py (beside the repository, or
$BMIKE53_DIR), if present."""

from __future__ import annotations

import pytest

from tools import paths

REAL_DIR = paths.FULL_DATA_DIR
HAS_REAL = paths.has_full_data()
needs_real = pytest.mark.skipif(not HAS_REAL, reason=f"full data not found at {REAL_DIR}")
