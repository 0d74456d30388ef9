"""``python -m syncsup.collator CONFIG SYNC RUN_ID``: run one sync's collator."""

import sys

from syncsup.collator._main import main

sys.exit(main(sys.argv[1:]))
