"""Drive one member with the unmodified ``etcd3`` client (python-etcd3 0.12) and print what it saw.

Run by tests/test_kv_grpc_pyclients.py in a child process, because etcd3 0.12's generated protobuf
modules load only with protobuf's pure-Python implementation (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION
=python``, set here before anything imports protobuf), which must not be forced on the test process.

    python tests/pyclient_etcd3.py HOST:PORT[,HOST:PORT...] PREFIX   # one JSON object on stdout
    python tests/pyclient_etcd3.py --probe                          # exit 0 when etcd3 imports

Each step records its observation (values, counts, error class names) under its own key; the test
asserts on them. The first endpoint takes the writes, the second (a follower, in a 3-member cluster)
the reads and the watch, so forwarding is exercised too. A failing step records ``"error: ..."``
instead of raising, so one incompatibility does not hide the others.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"


def probe() -> int:
    try:
        import etcd3  # noqa: F401
    except Exception as exc:  # any import failure is the reason to report
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def run(endpoints: list[str], ns: str) -> dict[str, Any]:
    import etcd3

    def client(endpoint: str) -> Any:
        host, _, port = endpoint.rpartition(":")
        return etcd3.client(host, int(port), timeout=10)

    writer = client(endpoints[0])
    reader = client(endpoints[-1])
    seen: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], Any]) -> None:
        try:
            seen[name] = fn()
        except Exception as exc:
            seen[name] = f"error: {type(exc).__name__}: {exc}"

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode()

    # KV: put, get, range by prefix (and a plain range), delete.
    step("put_revision", lambda: writer.put(ns + "a", "1").header.revision)
    step("put_prev", lambda: text(writer.put(ns + "a", "2", prev_kv=True).prev_kv.value))
    writer.put(ns + "b", "3")
    step("get", lambda: text(reader.get(ns + "a")[0]))
    step("get_missing", lambda: list(reader.get(ns + "missing")))
    step("prefix", lambda: [[text(m.key), text(v)] for v, m in reader.get_prefix(ns)])
    step("range", lambda: [text(m.key) for _, m in reader.get_range(ns + "a", ns + "b")])
    step("delete", lambda: writer.delete(ns + "a"))
    step("delete_again", lambda: writer.delete(ns + "a"))
    step("after_delete", lambda: [text(m.key) for _, m in reader.get_prefix(ns)])

    # A transaction: the compare picks the branch; replace() is a txn too.
    t = writer.transactions

    def txn(expect: str) -> list[Any]:
        ok, responses = writer.transaction(
            compare=[t.value(ns + "b") == expect],
            success=[t.put(ns + "b", "from-success"), t.get(ns + "b")],
            failure=[t.put(ns + "b", "from-failure")],
        )
        return [ok, len(responses)]

    step("txn_success", lambda: txn("3"))
    step("txn_failure", lambda: txn("3"))
    step("txn_value", lambda: text(reader.get(ns + "b")[0]))
    step("replace", lambda: writer.replace(ns + "b", "from-failure", "r"))
    step("replace_stale", lambda: writer.replace(ns + "b", "from-failure", "again"))

    # A watch on the follower sees a put made through another member.
    def watch() -> list[Any]:
        events, cancel = reader.watch_prefix(ns + "w/")
        timer = threading.Timer(0.5, lambda: writer.put(ns + "w/k", "watched"))
        timer.start()
        try:
            for event in events:
                return [type(event).__name__, text(event.key), text(event.value)]
            return []
        finally:
            timer.join()
            cancel()

    step("watch", watch)

    # Lease: grant, put with it, time-to-live through the follower, revoke: the key goes.
    lease = writer.lease(30)
    step("lease_put", lambda: writer.put(ns + "leased", "v", lease=lease).header.revision > 0)
    step("lease_keys", lambda: [text(k) for k in reader.get_lease_info(lease.id).keys])
    step("lease_granted_ttl", lambda: reader.get_lease_info(lease.id).grantedTTL)
    step("lease_refresh_ttl", lambda: [r.TTL for r in lease.refresh()])
    step("lease_revoke", lambda: lease.revoke())
    step("lease_key_after_revoke", lambda: list(reader.get(ns + "leased")))
    step("lease_ttl_after_revoke", lambda: reader.get_lease_info(lease.id).TTL)

    # Lock (uncontended: etcd3 0.12's retry loop for a held lock calls tenacity's wait with
    # arguments tenacity >= 8 no longer passes, against etcd too) and the member list.
    def lock() -> list[Any]:
        lk = writer.lock(ns.strip("/").replace("/", "-") + "-lock", ttl=20)
        acquired = lk.acquire(timeout=5)
        held = lk.is_acquired()
        released = lk.release()
        return [acquired, held, released, lk.is_acquired()]

    step("lock", lock)
    step("members", lambda: sorted([m.name, list(m.client_urls)] for m in reader.members))
    step("status_leader_listed", lambda: reader.status().leader.id in {m.id for m in reader.members})
    for c in (writer, reader):
        c.close()
    return seen


def main(argv: list[str]) -> int:
    if argv[1:] == ["--probe"]:
        return probe()
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    seen = run(argv[1].split(","), argv[2])
    seen["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
