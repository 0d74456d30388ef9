"""``python -m syncsup`` is the same as the ``syncsup`` command."""

import sys

from syncsup.cli import main

sys.exit(main())
