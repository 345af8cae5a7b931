"""The README's embedding example works as written: three processes, each prints the counter."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Embedding raftlib") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its embedding example"
    return match.group(1)


def test_readme_embedding_example_runs_as_three_processes(tmp_path: Path) -> None:
    script = tmp_path / "counter.py"
    script.write_text(readme_example())
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), node_id], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for node_id in ("n1", "n2", "n3")
    ]
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        for p in procs:
            assert p.stdout is not None
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if line:
                    lines.append(line.strip())
                    break
                if p.poll() is not None:
                    raise AssertionError(f"exited {p.returncode}: {p.stderr.read() if p.stderr else ''}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    assert len(lines) == 3, lines
    values = sorted(int(re.search(r"value=(\d+)", line).group(1)) for line in lines)  # type: ignore[union-attr]
    assert values == [5, 10, 15], lines  # three proposals of 5, each saw its own result
    assert all(re.search(r"leader=n[123]", line) for line in lines), lines
