"""Drive a cluster with the unmodified ``aetcd`` client (asyncio); print what it saw.

Run by tests/test_kv_grpc_pyclients.py in a child process, and records the same observations as
pyclient_etcd3.py. A child process because aetcd's generated protobuf modules register etcd's
message names (``authpb.UserAddOptions``, ...) in protobuf's default pool, where they collide
with the store's own modules (examples/kvstore/proto) in one process: whichever comes second
fails to import.

    python tests/pyclient_aetcd.py WRITER_HOST:PORT READER_HOST:PORT PREFIX   # JSON on stdout
    python tests/pyclient_aetcd.py --probe                                   # exit 0 if usable

Each step records its observation under its own key; a step that raises records
``"error: <class>: <message>"`` instead, so one incompatibility does not hide the others.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any


def probe() -> int:
    try:
        import aetcd  # noqa: F401
    except Exception as exc:  # any import failure is the reason to report
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


async def run(writer_endpoint: str, reader_endpoint: str, ns: str) -> dict[str, Any]:
    import aetcd

    def client(endpoint: str) -> Any:
        host, _, port = endpoint.rpartition(":")
        return aetcd.Client(host, int(port), timeout=10)

    seen: dict[str, Any] = {"client": "aetcd"}

    async def step(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            seen[name] = await fn()
        except Exception as exc:
            seen[name] = f"error: {type(exc).__name__}: {exc}"

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode()

    def key(k: str) -> bytes:
        return (ns + k).encode()

    async with client(writer_endpoint) as writer, client(reader_endpoint) as reader:

        async def value(k: str) -> str | None:
            got = await reader.get(key(k))
            return None if got is None else text(got.value)

        # KV: put, get, range by prefix (and a plain range), delete.
        await step("put_revision", lambda: _attr(writer.put(key("a"), b"1"), "header.revision"))
        await step("put_prev", lambda: _attr(writer.put(key("a"), b"2", prev_kv=True), "prev_kv.value", text))
        await writer.put(key("b"), b"3")
        await step("get", lambda: value("a"))
        await step("get_missing", lambda: value("missing"))

        async def prefix() -> list[list[str | None]]:
            return [[text(kv.key), text(kv.value)] for kv in await reader.get_prefix(ns.encode())]

        await step("prefix", prefix)

        async def ranged() -> list[str | None]:
            return [text(kv.key) for kv in await reader.get_range(key("a"), key("b"))]

        await step("range", ranged)

        async def delete_prev() -> list[str | None]:
            deleted = await writer.delete(key("a"), prev_kv=True)
            return [text(deleted.prev_kv.value)]

        await step("delete_prev", delete_prev)

        async def delete_again() -> int:
            deleted = await writer.delete(key("a"))
            return 0 if deleted is None else int(deleted.deleted)

        await step("delete_again", delete_again)

        async def after_delete() -> list[str | None]:
            return [text(kv.key) for kv in await reader.get_prefix(ns.encode())]

        await step("after_delete", after_delete)

        # A transaction: the compare picks the branch; replace() is a transaction too.
        t = writer.transactions

        async def txn() -> list[Any]:
            ok, responses = await writer.transaction(
                compare=[t.value(key("b")) == b"3", t.version(key("b")) > 0],
                success=[t.put(key("b"), b"from-success"), t.get(key("b"))],
                failure=[t.put(key("b"), b"from-failure")],
            )
            return [ok, len(responses)]

        await step("txn_success", txn)
        await step("txn_failure", txn)
        await step("txn_value", lambda: value("b"))
        await step("replace", lambda: writer.replace(key("b"), b"from-failure", b"r"))
        await step("replace_stale", lambda: writer.replace(key("b"), b"from-failure", b"again"))

        # A watch on the reader (a follower) sees a put made through the writer.
        async def watch() -> list[Any]:
            events = await reader.watch_prefix(key("w/"))
            try:
                await writer.put(key("w/k"), b"watched")

                async def first() -> list[Any]:
                    async for event in events:
                        return [str(event.kind), text(event.kv.key), text(event.kv.value)]
                    return []

                return await asyncio.wait_for(first(), 10)
            finally:
                await events.cancel()

        await step("watch", watch)

        # Lease: grant, put with it, time-to-live through the reader, revoke: the key goes.
        lease = await writer.lease(30)
        seen["lease_ttl"] = lease.ttl

        async def put_with_lease() -> bool:
            await writer.put(key("leased"), b"v", lease=lease)
            return bool((await reader.get(key("leased"))).lease == lease.id)

        await step("lease_put_lease", put_with_lease)
        await step("lease_keys", lambda: _attr(reader.get_lease_info(lease.id), "keys", _texts))
        await step("lease_granted_ttl", lambda: _attr(reader.get_lease_info(lease.id), "grantedTTL"))
        await step("lease_refresh_ttl", lambda: _attr(reader.refresh_lease(lease.id), "TTL", lambda v: [v]))
        await step("lease_revoke", lambda: _attr(writer.revoke_lease(lease.id), "", lambda v: v is None))
        await step("lease_key_after_revoke", lambda: value("leased"))
        await step("lease_ttl_after_revoke", lambda: _attr(reader.get_lease_info(lease.id), "TTL"))
        await step("lease_revoke_again", lambda: writer.revoke_lease(lease.id))

        # A lock, then a second contender that waits until the first releases, and the members.
        async def lock() -> list[Any]:
            lk = writer.lock(key("lock"), ttl=20)
            acquired = await lk.acquire(timeout=5)
            held = await lk.is_acquired()
            released = await lk.release()
            return [acquired, held, released, await lk.is_acquired()]

        await step("lock", lock)

        async def contended() -> list[Any]:
            first = writer.lock(key("contended"), ttl=20)
            second = reader.lock(key("contended"), ttl=20)
            got_first = await first.acquire(timeout=5)
            second_while_held = await second.acquire(timeout=1)
            waiting = asyncio.ensure_future(second.acquire(timeout=10))
            await asyncio.sleep(0.3)
            waited = not waiting.done()
            await first.release()
            got_second = await asyncio.wait_for(waiting, 10)
            await second.release()
            return [got_first, second_while_held, waited, got_second]

        await step("lock_contended", contended)
        members = [m async for m in reader.members()]

        async def listed() -> list[Any]:
            return sorted([m.name, list(m.client_urls), list(m.peer_urls)] for m in members)

        await step("members", listed)

        async def leader_listed() -> bool:
            status = await reader.status()
            return status.leader is not None and status.leader.id in {m.id for m in members}

        await step("status_leader_listed", leader_listed)
        await step("member_update_unknown", lambda: writer.update_member(0x1234ABCD, ["http://127.0.0.1:1"]))
        taken = list(members[1].peer_urls)
        await step("member_update_taken", lambda: writer.update_member(members[0].id, taken))
    return seen


def _texts(values: Any) -> list[str]:
    return [v.decode() for v in values]


async def _attr(call: Awaitable[Any], path: str, then: Callable[[Any], Any] | None = None) -> Any:
    """``await call``, then follow the dotted ``path`` ("" = the answer itself) and apply ``then``."""
    out = await call
    for part in path.split(".") if path else ():
        out = getattr(out, part)
    return then(out) if then is not None else out


def main(argv: list[str]) -> int:
    if argv[1:] == ["--probe"]:
        return probe()
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(argv[1], argv[2], argv[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
