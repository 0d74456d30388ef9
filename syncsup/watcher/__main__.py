"""``python -m syncsup.watcher CONFIG SYNC``: run one sync's watcher."""

import sys

from syncsup.watcher._main import main

sys.exit(main(sys.argv[1:]))
