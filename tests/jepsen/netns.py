"""Network namespaces, a bridge and veth pairs for the Jepsen-style tests, and real partitions.

Layout for a run with prefix ``rlj<sfx>`` (``sfx`` is 5 random hex digits, so parallel or stale runs
never collide) and a private /24 ``10.213.X.0/24`` that exists only on this machine:

    root namespace                       member namespaces
    ------------------------------       ---------------------------------------------
    bridge rlj<sfx>b  10.213.X.1/24  --  veth rlj<sfx>h1 <-> eth0 in rlj<sfx>-n1  10.213.X.11
                                     --  veth rlj<sfx>h2 <-> eth0 in rlj<sfx>-n2  10.213.X.12
                                     ...

Clients run in the root namespace and reach every member over the bridge (via 10.213.X.1).
A partition is a set of iptables DROP rules *inside* the member namespaces that match the other
members' addresses only, so packets between members that are cut off are really dropped while
the client path stays open.  Healing flushes those rules.

Everything created is torn down by :meth:`Network.destroy` (also registered with ``atexit``);
:func:`cleanup_leftovers` removes anything with the ``rlj`` prefix left by crashed runs.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Sequence

PREFIX = "rlj"
SUBNET_BASE = "10.213"


class NetError(RuntimeError):
    pass


def run(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        why = proc.stderr.strip() or proc.stdout.strip()
        raise NetError(f"{' '.join(argv)} failed ({proc.returncode}): {why}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces with real partitions cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, bridge and iptables rules)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (run scripts/install-netem.sh)"
    probe = f"{PREFIX}probe{os.getpid() % 100000}"
    try:
        r = run(["ip", "netns", "add", probe], check=False)
        if r.returncode != 0:
            return f"`ip netns add` fails here (no CAP_NET_ADMIN?): {r.stderr.strip()}"
        rule = ["iptables", "-A", "INPUT", "-s", "10.213.255.254", "-j", "DROP"]
        r = run(["ip", "netns", "exec", probe, *rule], check=False)
        if r.returncode != 0:
            return f"iptables does not work inside a namespace: {r.stderr.strip()}"
        r = run(["ip", "link", "add", f"{probe}b", "type", "bridge"], check=False)
        if r.returncode != 0:
            return f"cannot create a bridge: {r.stderr.strip()}"
        run(["ip", "link", "del", f"{probe}b"], check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot probe network namespaces: {e}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            run(["ip", "netns", "del", probe], check=False)
    return None


def _used_subnets() -> list[ipaddress.IPv4Network]:
    out = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    routes = run(["ip", "-4", "route", "show"], check=False).stdout
    for line in routes.splitlines():
        first = line.split()[0] if line.split() else ""
        if first != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(first, strict=False))
    return nets


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete every namespace and link whose name starts with `prefix`; the names removed."""
    removed = []
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            _kill_namespace_processes(name)
            if run(["ip", "netns", "del", name], check=False).returncode == 0:
                removed.append(f"netns {name}")
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if name.startswith(prefix) and run(["ip", "link", "del", name], check=False).returncode == 0:
            removed.append(f"link {name}")
    return removed


def _kill_namespace_processes(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid), 9)


class Network:
    """A bridge plus one namespace per member; `partition` / `heal` change what members see."""

    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.size = size
        # Names from the OS RNG, not the seeded one: two runs with the same seed must not collide.
        self.sfx = os.urandom(3).hex()[:5]
        self.prefix = f"{PREFIX}{self.sfx}"
        used = _used_subnets()
        candidates = [n for n in range(1, 255)
                      if not any(ipaddress.ip_network(f"{SUBNET_BASE}.{n}.0/24").overlaps(u) for u in used)]
        if not candidates:
            raise NetError(f"no free {SUBNET_BASE}.X.0/24 subnet")
        self.third = random.Random(os.urandom(8)).choice(candidates)
        self.bridge = f"{self.prefix}b"
        self.gateway = f"{SUBNET_BASE}.{self.third}.1"
        self.namespaces = [f"{self.prefix}-n{i + 1}" for i in range(size)]
        self.addresses = [f"{SUBNET_BASE}.{self.third}.{11 + i}" for i in range(size)]
        self.blocked: set[tuple[int, int]] = set()
        self.created = False
        self._destroyed = False

    # ---------------------------------------------------------------------------------- set-up

    def create(self) -> Network:
        atexit.register(self.destroy)
        self.created = True
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, ns in enumerate(self.namespaces):
                host, peer = f"{self.prefix}h{i + 1}", f"{self.prefix}p{i + 1}"
                run(["ip", "netns", "add", ns])
                run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
                run(["ip", "link", "set", peer, "netns", ns])
                run(["ip", "link", "set", host, "master", self.bridge])
                run(["ip", "link", "set", host, "up"])
                self.exec(i, ["ip", "link", "set", "lo", "up"])
                self.exec(i, ["ip", "link", "set", peer, "name", "eth0"])
                self.exec(i, ["ip", "addr", "add", f"{self.addresses[i]}/24", "dev", "eth0"])
                self.exec(i, ["ip", "link", "set", "eth0", "up"])
                # Only the private subnet is reachable from inside (no default route): test
                # traffic cannot leave this machine.
        except BaseException:
            self.destroy()
            raise
        return self

    def exec(self, i: int, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.namespaces[i], *argv], check=check)

    def destroy(self) -> None:
        """Remove every namespace and link of this run (idempotent; kills processes left inside)."""
        if self._destroyed or not self.created:
            return
        self._destroyed = True
        for ns in self.namespaces:
            _kill_namespace_processes(ns)
        cleanup_leftovers(self.prefix)

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ------------------------------------------------------------------------------ partitions

    def set_blocked(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Drop all traffic between each (i, j) pair (symmetric), and nothing else between members."""
        want = set()
        for i, j in pairs:
            if i != j:
                want.add((min(i, j), max(i, j)))
        for i in range(self.size):
            self.exec(i, ["iptables", "-F", "INPUT"])
            self.exec(i, ["iptables", "-F", "OUTPUT"])
        for i, j in sorted(want):
            for a, b in ((i, j), (j, i)):
                self.exec(a, ["iptables", "-A", "INPUT", "-s", self.addresses[b], "-j", "DROP"])
                self.exec(a, ["iptables", "-A", "OUTPUT", "-d", self.addresses[b], "-j", "DROP"])
        self.blocked = want

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split members into `groups`: members in different groups cannot talk to each other."""
        where = {m: g for g, members in enumerate(groups) for m in members}
        self.set_blocked((i, j) for i in range(self.size) for j in range(self.size)
                         if where.get(i, -1 - i) != where.get(j, -1 - j))

    def connectivity(self, sees: dict[int, set[int]]) -> None:
        """Arbitrary (symmetric) grid: member i talks only to the members in sees[i]."""
        self.set_blocked((i, j) for i in range(self.size) for j in range(self.size)
                         if j not in sees.get(i, set()) or i not in sees.get(j, set()))

    def heal(self) -> None:
        self.set_blocked(())

    def rules(self, i: int) -> str:
        return self.exec(i, ["iptables", "-S"], check=False).stdout
