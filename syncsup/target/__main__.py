"""``python3 -P -m syncsup.target ROOT``: the same as ``syncsup-target ROOT``.

Use ``-P`` (or the installed ``syncsup-target`` script): without it Python
puts the working directory first on the module path, and a forced command's
working directory is the account's home, which may be inside ROOT.
"""

import sys

from syncsup.target._command import main

sys.exit(main())
