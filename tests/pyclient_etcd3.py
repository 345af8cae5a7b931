"""Drive a cluster with the unmodified ``etcd3`` client (python-etcd3 0.12); print what it saw.

Run by tests/test_kv_grpc_pyclients.py in a child process (see pyclient_aetcd.py, which records
the same observations with aetcd): etcd3 0.12's generated protobuf modules load only with
protobuf's pure-Python implementation (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``, set here
before anything imports protobuf), which must not be forced on the test process; and a client's
generated modules register etcd's message names in protobuf's default pool, where they collide
with the store's own (examples/kvstore/proto) in one process.

    python tests/pyclient_etcd3.py WRITER_HOST:PORT READER_HOST:PORT PREFIX   # JSON on stdout
    python tests/pyclient_etcd3.py --probe                                   # exit 0 if usable

Each step records its observation under its own key; a step that raises records
``"error: <class>: <gRPC details>"`` instead, so one incompatibility does not hide the others.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

CONTENDED_LOCK_SKIP = (
    "etcd3 0.12's Lock.acquire of a held lock calls tenacity's wait with the arguments of "
    "tenacity < 8 (TypeError, against etcd too)"
)


def probe() -> int:
    try:
        import etcd3  # noqa: F401
    except Exception as exc:  # any import failure is the reason to report
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def describe(exc: BaseException) -> str:
    """``error: <class>: <details>``, the gRPC details found on the exception or what it wraps."""
    seen: BaseException | None = exc
    while seen is not None:
        details = getattr(seen, "details", None)
        if callable(details):
            return f"error: {type(exc).__name__}: {details()}"
        seen = seen.__cause__ or seen.__context__
    return f"error: {type(exc).__name__}: {exc}"


def run(writer_endpoint: str, reader_endpoint: str, ns: str) -> dict[str, Any]:
    import etcd3

    def client(endpoint: str) -> Any:
        host, _, port = endpoint.rpartition(":")
        return etcd3.client(host, int(port), timeout=10)

    writer, reader = client(writer_endpoint), client(reader_endpoint)
    seen: dict[str, Any] = {"client": "etcd3"}

    def step(name: str, fn: Callable[[], Any]) -> None:
        try:
            seen[name] = fn()
        except Exception as exc:
            seen[name] = describe(exc)

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode()

    # KV: put, get, range by prefix (and a plain range), delete.
    step("put_revision", lambda: writer.put(ns + "a", "1").header.revision)
    step("put_prev", lambda: text(writer.put(ns + "a", "2", prev_kv=True).prev_kv.value))
    writer.put(ns + "b", "3")
    step("get", lambda: text(reader.get(ns + "a")[0]))
    step("get_missing", lambda: text(reader.get(ns + "missing")[0]))
    step("prefix", lambda: [[text(m.key), text(v)] for v, m in reader.get_prefix(ns)])
    step("range", lambda: [text(m.key) for _, m in reader.get_range(ns + "a", ns + "b")])
    step("delete_prev", lambda: [text(kv.value) for kv in writer.delete(ns + "a", True, True).prev_kvs])
    step("delete_again", lambda: writer.delete(ns + "a", return_response=True).deleted)
    step("after_delete", lambda: [text(m.key) for _, m in reader.get_prefix(ns)])

    # A transaction: the compare picks the branch; replace() is a transaction too.
    t = writer.transactions

    def txn() -> list[Any]:
        ok, responses = writer.transaction(
            compare=[t.value(ns + "b") == "3", t.version(ns + "b") > 0],
            success=[t.put(ns + "b", "from-success"), t.get(ns + "b")],
            failure=[t.put(ns + "b", "from-failure")],
        )
        return [ok, len(responses)]

    step("txn_success", txn)
    step("txn_failure", txn)
    step("txn_value", lambda: text(reader.get(ns + "b")[0]))
    step("replace", lambda: writer.replace(ns + "b", "from-failure", "r"))
    step("replace_stale", lambda: writer.replace(ns + "b", "from-failure", "again"))

    # A watch on the reader (a follower) sees a put made through the writer.
    def watch() -> list[Any]:
        events, cancel = reader.watch_prefix(ns + "w/")
        timer = threading.Timer(0.5, lambda: writer.put(ns + "w/k", "watched"))
        timer.start()
        try:
            for event in events:
                kind = {"PutEvent": "PUT", "DeleteEvent": "DELETE"}[type(event).__name__]
                return [kind, text(event.key), text(event.value)]
            return []
        finally:
            timer.join()
            cancel()

    step("watch", watch)

    # Lease: grant, put with it, time-to-live through the reader, revoke: the key goes.
    lease = writer.lease(30)
    step("lease_ttl", lambda: lease.ttl)

    def put_with_lease() -> bool:
        writer.put(ns + "leased", "v", lease=lease)
        return bool(reader.get(ns + "leased")[1].lease_id == lease.id)

    step("lease_put_lease", put_with_lease)
    step("lease_keys", lambda: [text(k) for k in reader.get_lease_info(lease.id).keys])
    step("lease_granted_ttl", lambda: reader.get_lease_info(lease.id).grantedTTL)
    step("lease_refresh_ttl", lambda: [r.TTL for r in reader.refresh_lease(lease.id)])
    step("lease_revoke", lambda: writer.revoke_lease(lease.id) is None)
    step("lease_key_after_revoke", lambda: text(reader.get(ns + "leased")[0]))
    step("lease_ttl_after_revoke", lambda: reader.get_lease_info(lease.id).TTL)
    step("lease_revoke_again", lambda: writer.revoke_lease(lease.id))

    # An uncontended lock (see CONTENDED_LOCK_SKIP) and the member list.
    def lock() -> list[Any]:
        lk = writer.lock(ns.strip("/").replace("/", "-") + "-lock", ttl=20)
        acquired = lk.acquire(timeout=5)
        held = lk.is_acquired()
        released = lk.release()
        return [acquired, held, released, lk.is_acquired()]

    step("lock", lock)
    seen["lock_contended"] = CONTENDED_LOCK_SKIP
    members = list(reader.members)
    step("members", lambda: sorted([m.name, list(m.client_urls), list(m.peer_urls)] for m in members))
    step("status_leader_listed", lambda: reader.status().leader.id in {m.id for m in members})
    step("member_update_unknown", lambda: writer.update_member(0x1234ABCD, ["http://127.0.0.1:1"]))
    step("member_update_taken", lambda: writer.update_member(members[0].id, list(members[1].peer_urls)))
    for c in (writer, reader):
        c.close()
    return seen


def main(argv: list[str]) -> int:
    if argv[1:] == ["--probe"]:
        return probe()
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(run(argv[1], argv[2], argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
