"""Examples built on raftlib's public API."""
