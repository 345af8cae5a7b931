"""The demo timeline (python -m raftlib.testing.demo) runs and tells the story it promises."""

from __future__ import annotations

import io
import re

from raftlib.testing import demo


def test_demo_timeline() -> None:
    out = io.StringIO()
    assert demo.main([], out=out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert 25 <= len(lines) <= 50
    assert all(re.match(r"\[t= *\d+\.\d\] ", line) for line in lines[1:] if line.startswith("[t="))
    assert "CRASH" in text and "RESTART" in text and "catches up" in text
    assert "logs identical on all nodes: True" in text
    assert "state machines identical:    True" in text
    # The two leaders are different nodes, in consecutive terms.
    wins = re.findall(r"(n\d) wins (?:the election for )?term (\d+)", text)
    assert len(wins) == 2 and wins[0][0] != wins[1][0] and int(wins[1][1]) > int(wins[0][1])


def test_demo_is_deterministic_per_seed() -> None:
    a, b, c = io.StringIO(), io.StringIO(), io.StringIO()
    demo.main(["--seed", "3"], out=a)
    demo.main(["--seed", "3"], out=b)
    demo.main(["--seed", "4"], out=c)
    assert a.getvalue() == b.getvalue() != c.getvalue()
