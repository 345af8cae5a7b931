"""Observed state: what the members say over HTTP (status, member list) and the process table."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from examples.kvstore.operator.backend import LocalBackend, MemberRecord, OperatorState
from examples.kvstore.operator.reconcile import MemberView, Observed
from examples.kvstore.operator.spec import ClusterSpec


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") or body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def ssl_context(spec: ClusterSpec) -> ssl.SSLContext | None:
    if not spec.tls.client_https:
        return None
    ctx = ssl.create_default_context(cafile=spec.tls.trusted_ca_file or None)
    ctx.check_hostname = False
    if spec.tls.trusted_ca_file:
        ctx.load_cert_chain(spec.tls.cert_file, spec.tls.key_file)
    return ctx


def call(url: str, body: Any = None, timeout: float = 5.0, ctx: ssl.SSLContext | None = None) -> Any:
    """POST JSON to a gateway path; the decoded answer, or ApiError / OSError."""
    data = json.dumps({} if body is None else body).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        raise ApiError(e.code, parsed) from None
    return json.loads(raw)


@dataclass
class MemberReport:
    """Everything ``status`` shows about one member."""

    name: str
    member_id: str | None
    pid: int | None
    process_alive: bool | None
    client_url: str | None
    status: dict[str, Any] | None
    is_learner: bool = False
    in_membership: bool = False
    managed: bool = True
    config_hash: str | None = None


@dataclass
class Observation:
    observed: Observed
    reports: list[MemberReport] = field(default_factory=list)
    leader_name: str | None = None
    membership_source: str | None = None


def _status(url: str, ctx: ssl.SSLContext | None) -> dict[str, Any] | None:
    try:
        st = call(url + "/v3/maintenance/status", {}, timeout=1.5, ctx=ctx)
    except (OSError, ValueError, ApiError):
        return None
    return st if isinstance(st, dict) else None


def observe(
    spec: ClusterSpec,
    state: OperatorState,
    backend: LocalBackend,
    down_since: dict[str, float],
    now: float | None = None,
) -> Observation:
    """Ask every managed member for its status, the leader for the membership; ``down_since`` is
    updated in place (name -> wall-clock time first seen unreachable)."""
    now = time.time() if now is None else now
    ctx = ssl_context(spec)
    recs = list(state.members.values())
    with ThreadPoolExecutor(max_workers=max(1, len(recs))) as pool:
        answers = list(pool.map(lambda r: _status(r.client_url, ctx), recs))
    statuses = {r.name: st for r, st in zip(recs, answers, strict=True)}
    alive = {r.name: backend.alive(r) for r in recs}
    by_id: dict[str, MemberRecord] = {r.member_id: r for r in recs if r.member_id}
    leader_id = None
    commit = 0
    leader_rec = None
    for r in recs:
        st = statuses[r.name]
        if st and st.get("leader") and st.get("header", {}).get("member_id") == st.get("leader"):
            leader_id, leader_rec = st["leader"], r
            commit = int(st.get("raftIndex", 0) or 0)
    membership: list[dict[str, Any]] | None = None
    source = None
    for r in ([leader_rec] if leader_rec else []) + [
        r for r in recs if statuses[r.name] and r is not leader_rec
    ]:
        try:
            membership = call(r.client_url + "/v3/cluster/member/list", {}, timeout=2.0, ctx=ctx).get(
                "members", []
            )
            source = r.name
            break
        except (OSError, ValueError, ApiError):
            continue
    if leader_rec is None or source != leader_rec.name:
        leader_id = None  # a membership from a follower may be stale: the plan waits for the leader
    listed = {m["ID"]: m for m in membership or []}
    views: list[MemberView] = []
    reports: list[MemberReport] = []
    for r in recs:
        st = statuses[r.name]
        reachable = st is not None
        if reachable:
            down_since.pop(r.name, None)
        else:
            down_since.setdefault(r.name, now)
        entry = listed.get(r.member_id)
        in_membership = entry is not None if membership is not None else True
        learner = bool(entry and entry.get("isLearner"))
        views.append(
            MemberView(
                name=r.name,
                member_id=r.member_id or None,
                managed=True,
                in_membership=in_membership,
                is_learner=learner,
                reachable=reachable,
                applied=int((st or {}).get("raftAppliedIndex", 0) or 0),
                down_for=0.0 if reachable else now - down_since[r.name],
                config_hash=r.config_hash,
                index=r.index,
            )
        )
        reports.append(
            MemberReport(
                r.name,
                r.member_id,
                r.pid,
                alive[r.name],
                r.client_url,
                st,
                learner,
                in_membership,
                True,
                r.config_hash,
            )
        )
    for mid, entry in listed.items():
        if mid in by_id:
            continue
        key = f"id:{mid}"
        urls = entry.get("clientURLs") or []
        st = _status(urls[0], ctx) if urls else None
        if st is not None:
            down_since.pop(key, None)
        else:
            down_since.setdefault(key, now)
        views.append(
            MemberView(
                name=entry.get("name") or key,
                member_id=mid,
                managed=False,
                in_membership=True,
                is_learner=bool(entry.get("isLearner")),
                reachable=st is not None,
                applied=int((st or {}).get("raftAppliedIndex", 0) or 0),
                down_for=0.0 if st is not None else now - down_since[key],
                index=10**9,
            )
        )
        reports.append(
            MemberReport(
                entry.get("name") or key,
                mid,
                None,
                None,
                urls[0] if urls else None,
                st,
                bool(entry.get("isLearner")),
                True,
                False,
                None,
            )
        )
    age = None
    if state.last_backup and state.last_backup.get("time"):
        age = max(0.0, time.time() - float(state.last_backup["time"]))
    observed = Observed(
        members=tuple(views),
        leader_id=leader_id,
        commit=commit,
        last_backup_age=age,
        restore_from=state.restore_from,
    )
    return Observation(observed, reports, leader_rec.name if leader_rec and leader_id else None, source)
