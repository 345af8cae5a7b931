"""Jepsen-style tests: examples.kvstore members in network namespaces, real partitions, a nemesis."""
