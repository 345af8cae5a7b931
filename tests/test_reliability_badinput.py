"""Bad input on the client and peer ports of a running `examples.kvstore` cluster
(docs/reliability.md, "Bad input").

Client side: malformed JSON, wrong types, bad base64, negative and absurd limits, huge keys and
values, unknown paths and methods get etcd-shaped errors (`{"error","message","code"}`) with the
status codes of /work/shared/etcd-gateway-api.md section 5, and nothing is written (the revision
does not move). Peer side: a member started with another --initial-cluster-token (so another
cluster id), or with an unknown member name, is refused by the others, and the refusal is logged.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kvcluster import KVCluster, free_ports


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def raw(url: str, data: bytes | None, method: str = "POST", timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    c = KVCluster("raftlib", tmp_path_factory.mktemp("badinput"))
    c.start(timeout=60)
    try:
        yield c
    finally:
        c.stop()


def revision(c: KVCluster) -> int:
    code, body = raw(c.url(0, "/v3/kv/range"), json.dumps({"key": b64("probe")}).encode())
    assert code == 200, body
    return int(json.loads(body)["header"]["revision"])


def etcd_error(body: bytes) -> dict[str, Any]:
    err = json.loads(body)
    assert set(err) == {"error", "message", "code"}, err
    assert err["error"] == err["message"] and isinstance(err["code"], int), err
    return err


# (name, path, body bytes, expected HTTP status, expected gRPC code)
BIG = 3 * 1024 * 1024
CASES: list[tuple[str, str, bytes, int, int]] = [
    ("malformed json", "/v3/kv/put", b'{"key": "YQ==", ', 400, 3),
    ("not json at all", "/v3/kv/put", b"\x00\xff garbage", 400, 3),
    ("array instead of object", "/v3/kv/put", b"[1, 2]", 400, 3),
    ("number key", "/v3/kv/put", b'{"key": 123, "value": "eA=="}', 400, 3),
    ("object value", "/v3/kv/put", b'{"key": "YQ==", "value": {"a": 1}}', 400, 3),
    ("bad base64 key", "/v3/kv/put", b'{"key": "!!!not base64", "value": "eA=="}', 400, 3),
    ("bad base64 value", "/v3/kv/put", b'{"key": "YQ==", "value": "abc"}', 400, 3),
    ("missing key", "/v3/kv/put", b'{"value": "eA=="}', 400, 3),
    ("lease not a number", "/v3/kv/put", b'{"key": "YQ==", "value": "eA==", "lease": "abc"}', 400, 3),
    ("unknown lease", "/v3/kv/put", b'{"key": "YQ==", "value": "eA==", "lease": 12345}', 404, 5),
    ("absurd limit", "/v3/kv/range", b'{"key": "YQ==", "limit": 99999999999999999999999}', 400, 3),
    ("string limit", "/v3/kv/range", b'{"key": "YQ==", "limit": "ten"}', 400, 3),
    ("future revision", "/v3/kv/range", b'{"key": "YQ==", "revision": 999999999}', 400, 11),
    ("bad txn compare", "/v3/kv/txn", b'{"compare": [{"result": "EQUALS", "key": "YQ=="}]}', 400, 3),
    ("txn wrong type", "/v3/kv/txn", b'{"success": "nope"}', 400, 3),
    ("deleterange bad base64", "/v3/kv/deleterange", b'{"key": "%%%"}', 400, 3),
    ("lease grant bad TTL", "/v3/lease/grant", b'{"TTL": "forever"}', 400, 3),
    ("lease grant absurd TTL", "/v3/lease/grant", b'{"TTL": 99999999999}', 400, 11),
    ("lease revoke unknown", "/v3/lease/revoke", b'{"ID": 424242}', 404, 5),
    ("compaction in the future", "/v3/kv/compaction", b'{"revision": 999999999}', 400, 11),
    ("huge value", "/v3/kv/put", json.dumps({"key": b64("huge"), "value": b64(b"v" * BIG)}).encode(), 0, 0),
    ("huge key", "/v3/kv/put", json.dumps({"key": b64(b"k" * BIG), "value": b64("v")}).encode(), 0, 0),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_requests_get_etcd_errors_and_write_nothing(
    cluster: KVCluster, name: str, path: str, body: bytes, status: int, code: int
) -> None:
    before = revision(cluster)
    got_status, got = raw(cluster.url(1, path), body)
    if status == 0:  # too large: etcd answers 400 (request is too large) or 429 (over the gRPC limit)
        assert got_status in (400, 413, 429), (got_status, got[:200])
        err = etcd_error(got)
        assert err["code"] in (3, 8), err
    else:
        assert got_status == status, (got_status, got[:300])
        err = etcd_error(got)
        assert err["code"] == code, err
    time.sleep(0.05)
    assert revision(cluster) == before, f"{name} changed the revision"


def test_negative_limit_is_no_error_and_writes_nothing(cluster: KVCluster) -> None:
    before = revision(cluster)
    code, body = raw(cluster.url(0, "/v3/kv/range"), b'{"key": "YQ==", "limit": -5}')
    # etcd treats limit <= 0 as "no limit"
    assert code in (200, 400), body
    if code == 400:
        etcd_error(body)
    assert revision(cluster) == before


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("POST", "/v3/kv/nope", 404, "Not Found"),
        ("POST", "/v3alpha/kv/put", 404, "404 page not found"),
        ("GET", "/v3/kv/put", 405, "Method Not Allowed"),
        ("PUT", "/v3/kv/range", 405, "Method Not Allowed"),
        ("DELETE", "/v3/kv/deleterange", 405, "Method Not Allowed"),
    ],
)
def test_unknown_paths_and_methods(
    cluster: KVCluster, method: str, path: str, status: int, text: str
) -> None:
    before = revision(cluster)
    code, body = raw(
        cluster.url(2, path), b'{"key": "YQ==", "value": "eA=="}' if method != "GET" else None, method
    )
    assert code == status and body.decode().strip() == text, (code, body[:200])
    assert revision(cluster) == before


def test_the_cluster_still_serves(cluster: KVCluster) -> None:
    before = revision(cluster)
    code, body = raw(cluster.url(0, "/v3/kv/put"), json.dumps({"key": b64("ok"), "value": b64("1")}).encode())
    assert code == 200, body
    assert revision(cluster) == before + 1
    assert all(m.alive() for m in cluster.members)


# ---------------------------------------------------------------------------------- refusals


def start_intruder(c: KVCluster, tmp: Path, name: str, token: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A member process that lists the real members plus itself, with `token`."""
    cport, pport = free_ports(2)
    initial = c.initial_cluster + f",{name}=http://127.0.0.1:{pport}"
    log = tmp / f"{name}.log"
    argv = [
        sys.executable, "-m", "examples.kvstore",
        "--name", name, "--data-dir", str(tmp / f"{name}.data"),
        "--listen-client-urls", f"http://127.0.0.1:{cport}",
        "--advertise-client-urls", f"http://127.0.0.1:{cport}",
        "--listen-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
        "--initial-cluster", initial, "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
    ]  # fmt: skip
    repo = Path(__file__).resolve().parent.parent
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def member_logs(c: KVCluster) -> str:
    return "\n".join(m.log_path.read_text(errors="replace") for m in c.members)


@pytest.mark.parametrize("case", ["other token", "unknown member"])
def test_foreign_members_are_refused_and_logged(cluster: KVCluster, tmp_path: Path, case: str) -> None:
    token = "another-cluster" if case == "other token" else cluster.token
    name = "intruder-" + case.replace(" ", "-")
    before_logs = len(member_logs(cluster))
    before = revision(cluster)
    proc, log = start_intruder(cluster, tmp_path, name, token)
    try:
        deadline = time.monotonic() + 20
        refused = ""
        while time.monotonic() < deadline:
            new = member_logs(cluster)[before_logs:]
            if "refusing connection" in new:
                refused = new
                break
            time.sleep(0.2)
        assert refused, "no member logged a refusal\n" + log.read_text(errors="replace")[-2000:]
        line = next(ln for ln in refused.splitlines() if "refusing connection" in ln)
        assert (
            ("cluster id mismatch" in line)
            if case == "other token"
            else ("unknown sender" in line or "cluster id mismatch" in line)
        ), line
    finally:
        proc.kill()
        proc.wait(10)
    assert revision(cluster) == before
    assert all(m.alive() for m in cluster.members)
    # ... and visible in the members' metrics.
    refusals = 0.0
    for m in cluster.members:
        with urllib.request.urlopen(m.client_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for ln in text.splitlines():
            if ln.startswith("raftlib_transport_rejected_handshakes_total "):
                refusals += float(ln.split()[1])
    assert refusals >= 1
