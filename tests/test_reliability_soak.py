"""Soak (docs/reliability.md, "Soak"): the 2-minute CI version of `make soak` (tests/soak.py).

A 3-member examples.kvstore cluster under mixed load (writes, linearizable reads, watches, lease
churn, compaction) with a leader change every 30 s; no unexpected error, RSS flat within 20% after
warm-up, WAL use bounded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak


@pytest.mark.slow
def test_two_minute_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    status = soak.main(
        [
            "--minutes", "2",
            "--leader-change-every", "30",
            "--base", str(tmp_path / "cluster"),
            "--json", str(out),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert status == 0, json.dumps(report["problems"], indent=2)
    assert report["leader_changes"] >= 3
    assert not report["unexpected_errors"]
    for figures in report["rss"].values():
        assert figures.get("growth", 0.0) <= 0.20, report["rss"]
