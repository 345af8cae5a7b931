"""``python -m examples.kvstore.ctl``: a small etcdctl for the JSON gateway (standard library only).

Works against examples.kvstore and against real etcd 3.4 alike. Output follows
etcdctl's default ("simple") format; ``-w json`` prints the gateway's JSON.
Lease and member IDs are written and read in hexadecimal, as etcdctl does.

    ctl --endpoints http://127.0.0.1:2379 put foo bar [--lease 694d77aa9e38260f]
    ctl get foo [--prefix] [--rev 5] [--keys-only] [--limit 10]
    ctl del foo [--prefix]
    ctl watch foo [--prefix] [--rev 5]              # until Ctrl-C
    ctl txn < ops.txt                                # etcdctl's txn format, see below
    ctl compaction 42
    ctl lease grant 60 | revoke ID | timetolive ID [--keys] | keep-alive ID [--once]
    ctl member list | add NAME --peer-urls URL[,URL] [--learner] | remove ID | promote ID
    ctl member update ID --peer-urls URL[,URL]
    ctl endpoint status | health                     # every --endpoints member
    ctl snapshot save FILE

``txn`` reads etcdctl's format from stdin: compare lines, an empty line, the
success operations, an empty line, the failure operations::

    value("cas") = "v1"
    mod("other") > "3"

    put cas v2
    get other

    get cas

Compares are ``value|version|create|mod|lease("key") =|!=|<|> "arg"``;
operations are ``put KEY VALUE``, ``get KEY [--prefix]`` and ``del KEY [--prefix]``.

``snapshot save`` writes what ``/v3/maintenance/snapshot`` streams: for
examples.kvstore that is the member's state-machine snapshot (member
attributes and the KVMachine's JSON image: every kept key version and the
leases), not a bolt database; ``ReplicatedState.restore`` reads it.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import shlex
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit


class CtlError(Exception):
    """A request failed; the message is what etcdctl would print."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode("utf-8", errors="replace")


def prefix_end(key: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the key with its last byte below 0xff incremented ("\\0" for all)."""
    buf = bytearray(key)
    for i in range(len(buf) - 1, -1, -1):
        if buf[i] < 0xFF:
            buf[i] += 1
            return bytes(buf[: i + 1])
    return b"\0"


class Client:
    """POSTs JSON to the first endpoint that answers."""

    def __init__(
        self, endpoints: list[str], timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ):
        self.endpoints = endpoints
        self.timeout = timeout
        self.ssl = ssl_context

    def call(self, path: str, body: Any, endpoint: str | None = None) -> Any:
        last: Exception | None = None
        tried = [endpoint] if endpoint else self.endpoints
        for ep in tried:
            req = urllib.request.Request(ep.rstrip("/") + path, data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                raw = exc.read()
                try:
                    err = json.loads(raw)
                    message = err.get("error") or err.get("message") or raw.decode()
                except ValueError:
                    message = raw.decode(errors="replace").strip()
                raise CtlError(message) from None
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                continue
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
            return lines[0] if len(lines) == 1 else lines
        raise CtlError(f"cannot reach {', '.join(tried)}: {last}")

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The JSON lines of a streaming response (watch, snapshot), one per message."""
        ep = urlsplit(self.endpoints[0])
        conn_cls = http.client.HTTPSConnection if ep.scheme == "https" else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"context": self.ssl} if ep.scheme == "https" else {}
        conn = conn_cls(ep.hostname or "127.0.0.1", ep.port, timeout=None, **kwargs)
        conn.request("POST", path, body=json.dumps(body))
        resp = conn.getresponse()
        if resp.status != 200:
            raise CtlError(resp.read().decode(errors="replace").strip())
        try:
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


# ------------------------------------------------------------------------------------ commands


def _range_body(key: str, prefix: bool) -> dict[str, Any]:
    body = {"key": b64(key)}
    if prefix:
        body["range_end"] = b64(prefix_end(key.encode()))
    return body


def print_kvs(out: TextIO, kvs: list[dict[str, Any]], keys_only: bool = False) -> None:
    for kv in kvs:
        print(unb64(kv.get("key")), file=out)
        if not keys_only:
            print(unb64(kv.get("value")), file=out)


def cmd_put(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    body: dict[str, Any] = {"key": b64(a.key), "value": b64(a.value)}
    if a.lease:
        body["lease"] = int(a.lease, 16)
    if a.prev_kv:
        body["prev_kv"] = True
    res = c.call("/v3/kv/put", body)
    if a.write_out == "simple":
        print("OK", file=out)
        if "prev_kv" in res:
            print_kvs(out, [res["prev_kv"]])
    return res


def cmd_get(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    body = _range_body(a.key, a.prefix)
    if a.rev:
        body["revision"] = a.rev
    if a.keys_only:
        body["keys_only"] = True
    if a.limit:
        body["limit"] = a.limit
    if a.consistency == "s":
        body["serializable"] = True
    res = c.call("/v3/kv/range", body)
    if a.write_out == "simple":
        print_kvs(out, res.get("kvs", []), a.keys_only)
    return res


def cmd_del(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    res = c.call("/v3/kv/deleterange", _range_body(a.key, a.prefix))
    if a.write_out == "simple":
        print(res.get("deleted", "0"), file=out)
    return res


def cmd_compaction(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    res = c.call("/v3/kv/compaction", {"revision": a.revision})
    if a.write_out == "simple":
        print(f"compacted revision {a.revision}", file=out)
    return res


def cmd_watch(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    create = _range_body(a.key, a.prefix)
    if a.rev:
        create["start_revision"] = a.rev
    if a.prev_kv:
        create["prev_kv"] = True
    seen = 0
    for msg in c.stream("/v3/watch", {"create_request": create}):
        result = msg.get("result", {})
        if a.write_out == "json":
            print(json.dumps(msg), file=out, flush=True)
        if result.get("canceled"):
            reason = result.get("cancel_reason") or f"compacted at revision {result.get('compact_revision')}"
            raise CtlError(f"watch was canceled ({reason})")
        for ev in result.get("events", []):
            if a.write_out == "simple":
                print(ev.get("type", "PUT"), file=out)
                print(unb64(ev["kv"].get("key")), file=out)
                if ev.get("type") != "DELETE":
                    print(unb64(ev["kv"].get("value")), file=out)
                out.flush()
            seen += 1
            if a.max_events and seen >= a.max_events:
                return None
    return None


_CMP_TARGETS = {"value": "VALUE", "version": "VERSION", "create": "CREATE", "mod": "MOD", "lease": "LEASE"}
_CMP_FIELDS = {"VALUE": "value", "VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
               "LEASE": "lease"}  # fmt: skip
_CMP_OPS = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def parse_compare(line: str) -> dict[str, Any]:
    """``mod("key") > "3"`` -> a Compare."""
    func, _, rest = line.partition("(")
    target = _CMP_TARGETS.get(func.strip())
    if target is None or ")" not in rest:
        raise CtlError(f"malformed comparison: {line!r}")
    key_part, _, tail = rest.partition(")")
    parts = shlex.split(tail)
    if len(parts) != 2 or parts[0] not in _CMP_OPS:
        raise CtlError(f"malformed comparison: {line!r}")
    key = shlex.split(key_part)[0] if key_part.strip() else ""
    cmp: dict[str, Any] = {"key": b64(key), "result": _CMP_OPS[parts[0]], "target": target}
    arg = parts[1]
    if target == "VALUE":
        cmp["value"] = b64(arg)
    elif target == "LEASE":
        cmp["lease"] = int(arg, 16)
    else:
        cmp[_CMP_FIELDS[target]] = int(arg)
    return cmp


def parse_op(line: str) -> dict[str, Any]:
    """``put k v`` / ``get k [--prefix]`` / ``del k [--prefix]`` -> a RequestOp."""
    words = shlex.split(line)
    prefix = "--prefix" in words
    words = [w for w in words if w != "--prefix"]
    if len(words) == 3 and words[0] == "put":
        return {"request_put": {"key": b64(words[1]), "value": b64(words[2])}}
    if len(words) == 2 and words[0] == "get":
        return {"request_range": _range_body(words[1], prefix)}
    if len(words) == 2 and words[0] in ("del", "delete"):
        return {"request_delete_range": _range_body(words[1], prefix)}
    raise CtlError(f"malformed operation: {line!r}")


def parse_txn(text: str) -> dict[str, Any]:
    sections: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if len(sections) < 3:
                sections.append([])
            continue
        sections[-1].append(line)
    while len(sections) < 3:
        sections.append([])
    return {
        "compare": [parse_compare(line) for line in sections[0]],
        "success": [parse_op(line) for line in sections[1]],
        "failure": [parse_op(line) for line in sections[2]],
    }


def cmd_txn(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    res = c.call("/v3/kv/txn", parse_txn(sys.stdin.read()))
    if a.write_out == "simple":
        print("SUCCESS" if res.get("succeeded") else "FAILURE", file=out)
        for r in res.get("responses", []):
            print(file=out)
            if "response_put" in r:
                print("OK", file=out)
            elif "response_range" in r:
                print_kvs(out, r["response_range"].get("kvs", []))
            elif "response_delete_range" in r:
                print(r["response_delete_range"].get("deleted", "0"), file=out)
    return res


def cmd_lease(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    simple = a.write_out == "simple"
    if a.lease_cmd == "grant":
        res = c.call("/v3/lease/grant", {"TTL": a.ttl, "ID": 0})
        if simple:
            print(f"lease {int(res['ID']):x} granted with TTL({res['TTL']}s)", file=out)
        return res
    lease_id = int(a.id, 16)
    if a.lease_cmd == "revoke":
        res = c.call("/v3/kv/lease/revoke", {"ID": lease_id})
        if simple:
            print(f"lease {lease_id:x} revoked", file=out)
        return res
    if a.lease_cmd == "timetolive":
        res = c.call("/v3/kv/lease/timetolive", {"ID": lease_id, "keys": bool(a.keys)})
        if simple:
            if res.get("TTL") == "-1":
                print(f"lease {lease_id:x} already expired", file=out)
            else:
                line = f"lease {lease_id:x} granted with TTL({res.get('grantedTTL', 0)}s), "
                line += f"remaining({res.get('TTL', 0)}s)"
                if a.keys:
                    line += ", attached keys([" + " ".join(unb64(k) for k in res.get("keys", [])) + "])"
                print(line, file=out)
        return res
    # keep-alive
    while True:
        res = c.call("/v3/lease/keepalive", {"ID": lease_id})
        result = res.get("result", {})
        if "TTL" not in result:
            raise CtlError(f"lease {lease_id:x} expired or revoked.")
        if simple:
            print(f"lease {lease_id:x} keepalived with TTL({result['TTL']})", file=out, flush=True)
        if a.once:
            return res
        time.sleep(max(0.5, int(result["TTL"]) / 3))


def _member_line(m: dict[str, Any], status: str = "started") -> str:
    started = "started" if m.get("name") else "unstarted"
    return ", ".join(
        [
            f"{int(m['ID']):x}",
            started if status == "started" else status,
            m.get("name", ""),
            ",".join(m.get("peerURLs", [])),
            ",".join(m.get("clientURLs", [])),
            "true" if m.get("isLearner") else "false",
        ]
    )


def cmd_member(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    simple = a.write_out == "simple"
    if a.member_cmd == "list":
        res = c.call("/v3/cluster/member/list", {})
        if simple:
            for m in res.get("members", []):
                print(_member_line(m), file=out)
        return res
    if a.member_cmd == "add":
        urls = [u for u in a.peer_urls.split(",") if u]
        res = c.call("/v3/cluster/member/add", {"peerURLs": urls, "isLearner": bool(a.learner)})
        if simple:
            mid = int(res["member"]["ID"])
            kind = "learner" if a.learner else "member"
            print(f"Member {mid:x} added to cluster as a {kind} ({a.name})", file=out)
            names = [
                f"{m.get('name') or a.name}={u}"
                for m in res.get("members", [])
                for u in m.get("peerURLs", [])
            ]
            print(f'ETCD_NAME="{a.name}"', file=out)
            print(f'ETCD_INITIAL_CLUSTER="{",".join(names)}"', file=out)
            print('ETCD_INITIAL_CLUSTER_STATE="existing"', file=out)
        return res
    mid = int(a.id, 16)
    if a.member_cmd == "update":
        urls = [u for u in a.peer_urls.split(",") if u]
        res = c.call("/v3/cluster/member/update", {"ID": mid, "peerURLs": urls})
        if simple:
            cid = int(res.get("header", {}).get("cluster_id", 0))
            print(f"Member {mid:16x} updated in cluster {cid:16x}", file=out)
        return res
    path = "/v3/cluster/member/remove" if a.member_cmd == "remove" else "/v3/cluster/member/promote"
    res = c.call(path, {"ID": mid})
    if simple:
        verb = "removed from" if a.member_cmd == "remove" else "promoted in"
        print(f"Member {mid:x} {verb} cluster", file=out)
    return res


def _human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1000  # type: ignore[assignment]
    return str(n)


def cmd_endpoint(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    results = []
    failed = False
    for ep in c.endpoints:
        if a.endpoint_cmd == "health":
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(
                    ep.rstrip("/") + "/health", timeout=c.timeout, context=c.ssl
                ) as r:
                    healthy = json.loads(r.read()).get("health") == "true"
            except (OSError, ValueError):
                healthy = False
            took = (time.perf_counter() - started) * 1000
            failed |= not healthy
            results.append({"endpoint": ep, "health": healthy})
            if a.write_out == "simple":
                state = "is healthy: successfully committed proposal" if healthy else "is unhealthy"
                print(f"{ep} {state}: took = {took:.1f}ms", file=out)
            continue
        try:
            st = c.call("/v3/maintenance/status", {}, endpoint=ep)
        except CtlError as exc:
            failed = True
            print(f"{ep}: {exc}", file=sys.stderr)
            continue
        results.append({"Endpoint": ep, "Status": st})
        if a.write_out == "simple":
            h = st["header"]
            print(", ".join([
                ep, f"{int(h['member_id']):x}", st.get("version", ""), _human_size(int(st.get("dbSize", 0))),
                "true" if st.get("leader") == h["member_id"] else "false",
                "true" if st.get("isLearner") else "false",
                st.get("raftTerm", "0"), st.get("raftIndex", "0"), st.get("raftAppliedIndex", "0"),
                ", ".join(st.get("errors", [])),
            ]), file=out)  # fmt: skip
    if failed:
        raise CtlError("unhealthy cluster" if a.endpoint_cmd == "health" else "some endpoints did not answer")
    return results


def cmd_snapshot(c: Client, a: argparse.Namespace, out: TextIO) -> Any:
    size = 0
    with open(a.file + ".part", "wb") as f:
        for msg in c.stream("/v3/maintenance/snapshot", {}):
            blob = base64.b64decode(msg.get("result", {}).get("blob", ""))
            f.write(blob)
            size += len(blob)
    import os

    os.replace(a.file + ".part", a.file)
    print(f"Snapshot saved at {a.file} ({size} bytes)", file=out)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.kvstore.ctl", description="etcdctl-like client")
    p.add_argument("--endpoints", default="http://127.0.0.1:2379", help="comma-separated client URLs")
    p.add_argument("-w", "--write-out", default="simple", choices=["simple", "json"])
    p.add_argument("--command-timeout", type=float, default=10.0)
    p.add_argument("--cacert", default=None, help="CA bundle to verify https endpoints")
    p.add_argument("--cert", default=None, help="client certificate (https)")
    p.add_argument("--key", default=None, help="client key (https)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("put")
    s.add_argument("key")
    s.add_argument("value")
    s.add_argument("--lease", default=None, help="lease ID (hex)")
    s.add_argument("--prev-kv", action="store_true")
    s.set_defaults(func=cmd_put)
    s = sub.add_parser("get")
    s.add_argument("key")
    s.add_argument("--prefix", action="store_true")
    s.add_argument("--rev", type=int, default=0)
    s.add_argument("--keys-only", action="store_true")
    s.add_argument("--limit", type=int, default=0)
    s.add_argument("--consistency", choices=["l", "s"], default="l")
    s.set_defaults(func=cmd_get)
    s = sub.add_parser("del")
    s.add_argument("key")
    s.add_argument("--prefix", action="store_true")
    s.set_defaults(func=cmd_del)
    s = sub.add_parser("compaction")
    s.add_argument("revision", type=int)
    s.set_defaults(func=cmd_compaction)
    s = sub.add_parser("watch")
    s.add_argument("key")
    s.add_argument("--prefix", action="store_true")
    s.add_argument("--rev", type=int, default=0)
    s.add_argument("--prev-kv", action="store_true")
    s.add_argument("--max-events", type=int, default=0, help="exit after N events (0: never)")
    s.set_defaults(func=cmd_watch)
    s = sub.add_parser("txn", help="etcdctl's txn format on stdin")
    s.set_defaults(func=cmd_txn)

    lease = sub.add_parser("lease").add_subparsers(dest="lease_cmd", required=True)
    s = lease.add_parser("grant")
    s.add_argument("ttl", type=int)
    s = lease.add_parser("revoke")
    s.add_argument("id")
    s = lease.add_parser("timetolive")
    s.add_argument("id")
    s.add_argument("--keys", action="store_true")
    s = lease.add_parser("keep-alive")
    s.add_argument("id")
    s.add_argument("--once", action="store_true")
    sub.choices["lease"].set_defaults(func=cmd_lease)

    member = sub.add_parser("member").add_subparsers(dest="member_cmd", required=True)
    member.add_parser("list")
    s = member.add_parser("add")
    s.add_argument("name")
    s.add_argument("--peer-urls", required=True)
    s.add_argument("--learner", action="store_true")
    for name in ("remove", "promote"):
        member.add_parser(name).add_argument("id")
    s = member.add_parser("update")
    s.add_argument("id")
    s.add_argument("--peer-urls", required=True)
    sub.choices["member"].set_defaults(func=cmd_member)

    endpoint = sub.add_parser("endpoint").add_subparsers(dest="endpoint_cmd", required=True)
    endpoint.add_parser("status")
    endpoint.add_parser("health")
    sub.choices["endpoint"].set_defaults(func=cmd_endpoint)

    snap = sub.add_parser("snapshot").add_subparsers(dest="snapshot_cmd", required=True)
    snap.add_parser("save").add_argument("file")
    sub.choices["snapshot"].set_defaults(func=cmd_snapshot)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    a = build_parser().parse_args(argv)
    ctx = None
    if a.cacert or a.cert:
        ctx = ssl.create_default_context(cafile=a.cacert)
        ctx.check_hostname = False
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
    client = Client([e.strip() for e in a.endpoints.split(",") if e.strip()], a.command_timeout, ctx)
    try:
        res = a.func(client, a, out)
    except CtlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if a.write_out == "json" and res is not None:
        print(json.dumps(res), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
