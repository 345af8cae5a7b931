"""DiskStorage.save() throughput with fsync on: batches of 1, 64 and 1024 entries of 100 bytes.

    python benchmarks/bench_storage.py [--dir DIR] [--seconds S]

Prints saves/s, entries/s and MB/s per batch size (and the fsync=False figure for comparison).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from raftlib.core import Entry, HardState
from raftlib.storage import DiskStorage


def run(directory: str, batch: int, seconds: float, fsync: bool) -> tuple[int, int, float]:
    s = DiskStorage(directory, fsync=fsync)
    s.load()
    payload = b"x" * 100
    nxt = 1
    saves = 0
    start = time.perf_counter()
    while True:
        entries = [Entry(i, 1, payload) for i in range(nxt, nxt + batch)]
        s.save(HardState(1, "n1", nxt - 1), entries)
        nxt += batch
        saves += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    s.close()
    return saves, nxt - 1, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"{'batch':>6} {'fsync':>6} {'saves/s':>10} {'entries/s':>12} {'MB/s':>8} {'ms/save':>8}")
    for fsync in (True, False):
        for batch in (1, 64, 1024):
            with tempfile.TemporaryDirectory(dir=args.dir) as d:
                saves, n, t = run(d, batch, args.seconds, fsync)
            print(
                f"{batch:>6} {fsync!s:>6} {saves / t:>10.0f} {n / t:>12.0f} "
                f"{n * 100 / t / 1e6:>8.2f} {t / saves * 1e3:>8.3f}"
            )


if __name__ == "__main__":
    main()
