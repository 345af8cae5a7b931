"""An etcd-compatible key-value store built on raftlib's public API.

Layers (below HTTP, deterministic): :mod:`.errors` (etcd's error bodies and
codes), :mod:`.codec` (etcd's JSON gateway parsing and rendering),
:mod:`.mvcc` (revisions, history, ranges, txns), :mod:`.lease` (replicated
leases and the leader-local expiry clock) and :mod:`.machine` (the raftlib
state machine the server proposes to). See docs/kvstore-data.md.
"""
