"""``python -m raftlib``: the admin command line (see :mod:`raftlib.admin` and docs/admin.md)."""

import sys

from raftlib.admin import main

if __name__ == "__main__":
    sys.exit(main())
