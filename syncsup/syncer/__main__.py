"""``python -m syncsup.syncer CONFIG SYNC``: run one sync's syncer."""

import sys

from syncsup.syncer._main import main

sys.exit(main(sys.argv[1:]))
