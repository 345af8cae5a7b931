"""The operator's command line: ``python -m raftlib``.

One module per concern, each adding its subcommands to the parser built in
:mod:`raftlib.admin.cli`:

* :mod:`raftlib.admin.datadir`: opening a node's data directory safely (checks, read-only load).
* :mod:`raftlib.admin.wal`: ``wal inspect``, ``wal verify``, ``wal dump`` (offline, read-only).
* :mod:`raftlib.admin.recover`: ``recover``, disaster recovery after a permanent quorum loss.
* :mod:`raftlib.admin.online`: ``status``, ``members``, ``transfer-leader``, ``snapshot``
  against a running node, through the admin endpoint a node opens when
  ``NodeConfig.admin_address`` is set (:mod:`raftlib.admin.endpoint`).
"""

from raftlib.admin.cli import main
from raftlib.admin.errors import AdminError, ExitCode

__all__ = ["AdminError", "ExitCode", "main"]
