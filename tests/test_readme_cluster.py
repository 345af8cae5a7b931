"""The README's "Running a cluster by hand" works as written: the same shell lines, run by bash.

The README uses etcd's usual fixed ports (2379/2380 and +10000, +20000), so this test skips
when any of them is taken on the machine rather than rewrite the commands it checks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

REPO = Path(__file__).resolve().parents[1]
PORTS = [base + n * 10000 for n in range(3) for base in (2379, 2380)]


def readme_blocks() -> tuple[str, str]:
    """The start command (run once per member, with N set) and the client commands."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Running a cluster by hand") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the README lost its by-hand cluster commands"
    start, client = blocks[0], blocks[1]
    assert "N=0;" in start, start
    return start, client


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def bash(script: str, cwd: Path, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
        start_new_session=True, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


def start_member(start: str, n: int, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    script = start.replace("N=0;", f"N={n};", 1).replace("python -m", "exec python -m", 1)
    log = open(tmp_path / f"member{n}.log", "a")  # noqa: SIM115 - closed with the process
    return bash(script, tmp_path, env, stdout=log, stderr=subprocess.STDOUT)


def run_clients(client: str, tmp_path: Path, env: dict[str, str]) -> str:
    deadline = time.monotonic() + 30
    while True:
        p = bash(client, tmp_path, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
        if p.returncode == 0 or time.monotonic() > deadline:
            assert p.returncode == 0, (out, err)
            return out
        time.sleep(0.5)  # no leader yet


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in the member's terminal
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_readme_cluster_by_hand_starts_serves_and_restarts_a_member(tmp_path: Path) -> None:
    if not all(port_free(p) for p in PORTS):
        pytest.skip(f"one of the README's ports {PORTS} is in use on this machine")
    if shutil.which("curl") is None:
        pytest.skip("the README's client commands use curl")
    start, client = readme_blocks()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python"  # the README says `python`: this one, with its packages
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))
    members = [start_member(start, n, tmp_path, env) for n in range(3)]
    try:
        out = run_clients(client, tmp_path, env)
        lines = out.splitlines()
        assert lines[0] == "OK", out
        status = [line for line in lines if line.startswith("http://127.0.0.1:")]
        assert len(status) == 3, out
        assert sum(", true, false, " in line for line in status) == 1, out  # exactly one leader
        assert '"value":"YmFy"' in lines[-1], out  # curl's range of foo through a follower

        # Ctrl-C one member, write without it, start it again with the same command: it catches up.
        stop(members[0])
        members[0] = start_member(start, 0, tmp_path, env)
        run_clients(client, tmp_path, env)
        status_cmd = next(line for line in client.splitlines() if "endpoint status" in line)
        deadline = time.monotonic() + 20
        while True:
            out = run_clients(f"{client.splitlines()[0]}\n{status_cmd}", tmp_path, env)
            indexes = {line.split(", ")[7] for line in out.splitlines() if line.startswith("http://")}
            if len(indexes) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(indexes) == 1, out  # the restarted member has every entry the others have
    finally:
        for p in members:
            stop(p)
    logs = "".join((tmp_path / f"member{n}.log").read_text() for n in range(3))
    assert "Traceback" not in logs, logs
