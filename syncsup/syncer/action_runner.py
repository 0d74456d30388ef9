"""``python -m syncsup.syncer.action_runner CONFIG SYNC TARGET BATCH_FILE``:
run one command-mode batch (see :mod:`syncsup.syncer.actions`).

A module of its own so that ``syncsup.syncer.actions`` is imported under its
real name: run as ``__main__`` it would be a second copy, and user classes
subclassing ``syncsup.syncer.actions.Action`` would not be recognised.
"""

import sys

from syncsup.syncer.actions import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
