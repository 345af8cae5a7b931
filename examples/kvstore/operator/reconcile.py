"""The operator's knowledge as code: ``plan(spec, observed) -> list[Action]``, a pure function.

It never does anything itself: the controller executes the (at most one) mutating action it
returns, then observes again. One change per round keeps the rules simple and the cluster safe:

1. Nothing managed yet: **bootstrap** one member (from a backup when restoring).
2. Fewer reachable voters than a quorum: **refuse** -- any membership change would need the quorum
   that is missing; the message gives the manual recovery steps.
3. No leader yet: wait.
4. Leftovers (a member in the membership the operator does not manage, or a managed record the
   membership no longer has, e.g. after a crash of the operator mid-change): clean them up.
5. A learner: **promote** it once its applied index is within ``max_lag`` of the leader's commit;
   remove it if it has not answered for ``startup_timeout`` (or the grace period, if longer);
   otherwise wait (one at a time).
6. A voter down longer than the grace period: **remove** it (the next round adds a fresh member,
   which catches up from a snapshot); only when the remaining voters keep a quorum.
7. Too few voters: **add** one, as a learner. Too many: move leadership away from the chosen
   member, then **remove** it. One member at a time either way.
8. A member started with an outdated configuration: **rolling restart**, one at a time, only when
   every voter is up and caught up (the leader last, after handing leadership away).
9. Backup due and the cluster healthy: **backup**.

An empty plan means converged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from examples.kvstore.operator.spec import ClusterSpec

BOOTSTRAP = "bootstrap"
ADD_LEARNER = "add-learner"
PROMOTE = "promote"
REMOVE = "remove"
TRANSFER_LEADER = "transfer-leader"
RESTART = "rolling-restart"
FORGET = "forget"
BACKUP = "backup"
WAIT = "wait"
REFUSE = "refuse"
MUTATING = frozenset({BOOTSTRAP, ADD_LEARNER, PROMOTE, REMOVE, TRANSFER_LEADER, RESTART, FORGET, BACKUP})


@dataclass(frozen=True)
class MemberView:
    """One member as observed: the operator's record of it and/or its place in the membership."""

    name: str
    member_id: str | None = None
    """etcd member ID (decimal string)."""
    managed: bool = True
    """In the operator's state file (False: found in the membership only)."""
    in_membership: bool = True
    is_learner: bool = False
    reachable: bool = True
    """Answered /v3/maintenance/status."""
    applied: int = 0
    down_for: float = 0.0
    """Seconds since it was first seen unreachable (0 when reachable)."""
    config_hash: str | None = None
    """The member configuration it was started with."""
    index: int = 0
    """Creation order (the newest member has the highest)."""


@dataclass(frozen=True)
class Observed:
    members: tuple[MemberView, ...] = ()
    leader_id: str | None = None
    """The leader's member ID, as reported by the leader itself."""
    commit: int = 0
    """The leader's commit index."""
    last_backup_age: float | None = None
    restore_from: str | None = None
    """A backup file the first member is to be seeded from (operator restore)."""

    def member(self, name: str) -> MemberView:
        return next(m for m in self.members if m.name == name)


@dataclass(frozen=True)
class Action:
    kind: str
    member: str | None = None
    reason: str = ""
    member_id: str | None = None
    target: str | None = None
    """TRANSFER_LEADER: the member to hand leadership to; BOOTSTRAP: the backup to restore."""
    details: dict[str, str] = field(default_factory=dict)

    @property
    def mutating(self) -> bool:
        return self.kind in MUTATING

    def describe(self) -> str:
        who = f" {self.member}" if self.member else ""
        to = f" -> {self.target}" if self.target and self.kind == TRANSFER_LEADER else ""
        return f"{self.kind}{who}{to}: {self.reason}"


def quorum(n: int) -> int:
    return n // 2 + 1


def _label(m: MemberView) -> str:
    return m.name if m.managed else f"unmanaged member {m.member_id}"


def recovery_steps(spec: ClusterSpec, down: list[MemberView]) -> str:
    names = ", ".join(m.name for m in down) or "(none)"
    src = spec.source or "SPEC"
    return (
        "Manual recovery (the operator does not guess here):\n"
        f"  1. If the members that are down ({names}) still have their data directories, start them "
        f"again: `python -m examples.kvstore.operator restart-stopped {src}` (or run the command lines "
        f"in {spec.data_root}/logs/<member>.log). The cluster recovers as soon as a quorum is back.\n"
        "  2. If their data is gone, rebuild from the latest backup: "
        f"`python -m examples.kvstore.operator destroy {src} --purge`, then "
        f"`python -m examples.kvstore.operator restore {src} <backup-file>` "
        f"(backups are in {spec.backup.directory}; writes after it are lost).\n"
        "  3. Then run `operator apply` again."
    )


def plan(spec: ClusterSpec, obs: Observed) -> list[Action]:
    """What to do next to make ``obs`` match ``spec`` (see the module docstring for the rules)."""
    managed = [m for m in obs.members if m.managed]
    if not managed:
        if obs.restore_from:
            return [
                Action(
                    BOOTSTRAP,
                    reason=f"no members: restoring a new cluster from {obs.restore_from}",
                    target=obs.restore_from,
                )
            ]
        return [Action(BOOTSTRAP, reason=f"no members: starting the first of {spec.size}")]
    voters = [m for m in obs.members if m.in_membership and not m.is_learner]
    learners = [m for m in obs.members if m.in_membership and m.is_learner]
    up = [v for v in voters if v.reachable]
    down = sorted((v for v in voters if not v.reachable), key=lambda v: -v.down_for)
    if not voters:
        waiting = [m for m in managed if m.down_for < spec.grace_period]
        if waiting:
            return [Action(WAIT, reason=f"waiting for {', '.join(m.name for m in waiting)} to answer")]
        return [
            Action(REFUSE, reason="no member answers: the cluster is down.\n" + recovery_steps(spec, managed))
        ]
    if len(up) < quorum(len(voters)) and all(d.down_for < spec.grace_period for d in down):
        return [
            Action(
                WAIT,
                reason=f"only {len(up)} of {len(voters)} voters answer; waiting up to the grace period "
                f"({spec.grace_period:g} s) before calling quorum lost",
            )
        ]
    if len(up) < quorum(len(voters)):
        return [
            Action(
                REFUSE,
                reason=(
                    f"quorum lost: {len(up)} of {len(voters)} voters answer, {quorum(len(voters))} needed "
                    f"(down: {', '.join(f'{m.name} for {m.down_for:.0f} s' for m in down)}). Removing or "
                    "adding members needs a quorum, so the operator will not act.\n"
                    + recovery_steps(spec, down)
                ),
            )
        ]
    if obs.leader_id is None:
        return [Action(WAIT, reason="no leader yet (election in progress)")]
    leader = next((v for v in voters if v.member_id == obs.leader_id), None)

    def removal_keeps_quorum(victim: MemberView) -> bool:
        if victim.is_learner:
            return True
        remaining_up = len(up) - (1 if victim.reachable else 0)
        return remaining_up >= quorum(len(voters) - 1)

    # -- leftovers ---------------------------------------------------------------------------------
    for m in obs.members:
        if m.in_membership and not m.managed and removal_keeps_quorum(m) and m is not leader:
            return [
                Action(
                    REMOVE,
                    member=m.name,
                    member_id=m.member_id,
                    reason=f"{_label(m)} is in the membership but not in the operator's state",
                )
            ]
    for m in managed:
        if not m.in_membership:
            return [
                Action(
                    FORGET,
                    member=m.name,
                    member_id=m.member_id,
                    reason=f"{m.name} is not in the membership (left over from an interrupted change): "
                    "stopping it and deleting its data",
                )
            ]

    # -- learners: one at a time -------------------------------------------------------------------
    for lrn in learners:
        lag = max(0, obs.commit - lrn.applied)
        if lrn.reachable and lag <= spec.max_lag:
            return [
                Action(
                    PROMOTE,
                    member=lrn.name,
                    member_id=lrn.member_id,
                    reason=f"learner {lrn.name} caught up (lag {lag} <= {spec.max_lag} entries)",
                )
            ]
        if not lrn.reachable and lrn.down_for >= max(spec.grace_period, spec.startup_timeout):
            return [
                Action(
                    REMOVE,
                    member=lrn.name,
                    member_id=lrn.member_id,
                    reason=f"learner {lrn.name} down for {lrn.down_for:.1f} s "
                    f"(start-up timeout {max(spec.grace_period, spec.startup_timeout):g} s)",
                )
            ]
        state = (
            f"catching up (lag {lag} entries)" if lrn.reachable else f"not answering for {lrn.down_for:.1f} s"
        )
        return [Action(WAIT, member=lrn.name, reason=f"learner {lrn.name} {state}")]

    # -- dead voters -------------------------------------------------------------------------------
    for d in down:
        if d.down_for >= spec.grace_period:
            if not removal_keeps_quorum(d):
                return [
                    Action(
                        REFUSE,
                        member=d.name,
                        reason=f"{d.name} down for {d.down_for:.0f} s but removing it would lose quorum\n"
                        + recovery_steps(spec, down),
                    )
                ]
            return [
                Action(
                    REMOVE,
                    member=d.name,
                    member_id=d.member_id,
                    reason=f"{d.name} down for {d.down_for:.1f} s (grace {spec.grace_period:g} s): "
                    "replacing it -- removed first, a fresh member is added next",
                )
            ]
    n = len(voters)
    if n > spec.size:
        victim = down[0] if down else max(voters, key=lambda v: (v.managed is False, v.index))
        if victim is leader:
            others = [v for v in up if v is not leader]
            if not others:
                return [Action(WAIT, reason="shrinking: no other voter to hand leadership to")]
            target = max(others, key=lambda v: (v.applied, -v.index))
            return [
                Action(
                    TRANSFER_LEADER,
                    member=victim.name,
                    member_id=victim.member_id,
                    target=target.name,
                    details={"target_id": target.member_id or ""},
                    reason=f"shrinking {n} -> {n - 1}: moving leadership away from {victim.name} "
                    "before removing it",
                )
            ]
        if not removal_keeps_quorum(victim):
            return [Action(WAIT, reason=f"shrinking: removing {victim.name} now would lose quorum")]
        return [
            Action(
                REMOVE,
                member=victim.name,
                member_id=victim.member_id,
                reason=f"{n} voters, spec says {spec.size}: shrinking by one ({victim.name})",
            )
        ]
    if down:
        d = down[0]
        return [
            Action(
                WAIT,
                member=d.name,
                reason=f"{d.name} not answering for {d.down_for:.1f} s; replaced after "
                f"{spec.grace_period:g} s",
            )
        ]
    if n < spec.size:
        return [
            Action(ADD_LEARNER, reason=f"{n} voters, spec says {spec.size}: adding one (as a learner first)")
        ]

    # -- configuration changes: rolling restart ---------------------------------------------------
    stale = [v for v in voters if v.managed and v.config_hash != spec.config_hash]
    if stale:
        lagging = [v for v in voters if obs.commit - v.applied > spec.max_lag]
        if lagging:
            return [Action(WAIT, reason=f"rolling restart: waiting for {lagging[0].name} to catch up")]
        followers = [v for v in stale if v is not leader]
        if followers:
            v = min(followers, key=lambda m: m.index)
            return [
                Action(
                    RESTART,
                    member=v.name,
                    member_id=v.member_id,
                    reason=f"{v.name} runs configuration {v.config_hash}, spec wants {spec.config_hash}",
                )
            ]
        assert leader is not None
        others = [v for v in up if v is not leader]
        if others:
            target = max(others, key=lambda v: (v.applied, -v.index))
            return [
                Action(
                    TRANSFER_LEADER,
                    member=leader.name,
                    member_id=leader.member_id,
                    target=target.name,
                    details={"target_id": target.member_id or ""},
                    reason=f"rolling restart: moving leadership away from {leader.name} before restarting it",
                )
            ]
        return [
            Action(
                RESTART,
                member=leader.name,
                member_id=leader.member_id,
                reason=f"{leader.name} runs configuration {leader.config_hash}, "
                f"spec wants {spec.config_hash}",
            )
        ]

    # -- backups -----------------------------------------------------------------------------------
    if spec.backup.interval > 0 and (
        obs.last_backup_age is None or obs.last_backup_age >= spec.backup.interval
    ):
        age = "none yet" if obs.last_backup_age is None else f"last one {obs.last_backup_age:.0f} s ago"
        return [Action(BACKUP, reason=f"backup due (every {spec.backup.interval:g} s; {age})")]
    return []
