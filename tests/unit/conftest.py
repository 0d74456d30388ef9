"""Unit tests: pure logic, real files in tmp_path, no daemon.

The repository root goes first on ``sys.path`` so that ``syncsup`` and
``tests.helpers`` are this checkout's, whatever else is installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
