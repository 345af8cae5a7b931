"""A simulated, unreliable network between in-process Raft nodes.

Every message in flight is an event in a priority queue keyed by virtual time
(:class:`raftlib.testing.events.EventQueue`). Faults are per directed link:

* ``partition(groups)``, ``isolate(id)``, ``cut(a, b)``, ``heal()``: which links
  carry nothing; a link is checked when a message is sent *and* when it would
  be delivered, so messages in flight across a new partition are lost;
* ``drop``: probability that a message is lost;
* ``duplicate``: probability that a message is delivered twice;
* ``delay=(lo, hi)``: each copy takes a uniformly drawn number of sub-steps, so
  messages overtake each other (reordering); ``fifo=True`` keeps each link in
  order instead;
* ``long_delay_prob`` / ``long_delay=(lo, hi)``: an occasional much slower
  message (a stalled connection, a long GC pause).

All randomness comes from the one ``random.Random`` handed in, so the same seed
yields the same deliveries.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from raftlib.testing.events import DELIVER, EventQueue

__all__ = ["SimNetwork"]


def _check_range(name: str, rng: tuple[int, int]) -> tuple[int, int]:
    lo, hi = rng
    if lo < 0 or hi < lo:
        raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi, got {rng!r}")
    return int(lo), int(hi)


def _check_prob(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class SimNetwork:
    """Links between nodes, with partitions, loss, delay, reordering and duplication.

    >>> import random
    >>> net = SimNetwork(random.Random(1), ids=["a", "b", "c"])
    >>> net.isolate("a")
    >>> net.link_up("a", "b"), net.link_up("b", "c")
    (False, True)
    >>> net.heal(); net.link_up("a", "b")
    True
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        ids: Iterable[str] = (),
        queue: EventQueue | None = None,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[int, int] = (1, 3),
        long_delay_prob: float = 0.0,
        long_delay: tuple[int, int] = (20, 60),
        fifo: bool = False,
    ) -> None:
        self.rng = rng
        self.ids: list[str] = list(ids)
        self.queue = queue if queue is not None else EventQueue()
        self.drop = _check_prob("drop", drop)
        self.duplicate = _check_prob("duplicate", duplicate)
        self.delay = _check_range("delay", delay)
        if self.delay[0] < 1:
            raise ValueError("delay must be at least one sub-step")
        self.long_delay_prob = _check_prob("long_delay_prob", long_delay_prob)
        self.long_delay = _check_range("long_delay", long_delay)
        self.fifo = fifo
        self._blocked: set[tuple[str, str]] = set()
        self._last_arrival: dict[tuple[str, str], int] = {}
        self.sent: Counter[Any] = Counter()
        """Messages handed to the network, by :class:`MessageType`."""
        self.delivered: Counter[Any] = Counter()
        """Messages that reached a live destination, by type."""
        self.dropped: Counter[Any] = Counter()
        """Messages lost (random loss, partitions, dead senders or receivers), by type."""
        self.duplicated: Counter[Any] = Counter()

    # ------------------------------------------------------------------ faults
    def set_faults(self, **knobs: Any) -> None:
        """Change fault knobs mid-run: ``drop``, ``duplicate``, ``delay``, ``long_delay_prob``,
        ``long_delay``."""
        for name, value in knobs.items():
            if name in ("drop", "duplicate", "long_delay_prob"):
                setattr(self, name, _check_prob(name, value))
            elif name in ("delay", "long_delay"):
                setattr(self, name, _check_range(name, value))
            else:
                raise TypeError(f"unknown fault knob {name!r}")

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the nodes into groups that cannot talk to each other.

        ``partition(["n1", "n2"], ["n3"])``. Nodes not named in any group form one
        more group together. Replaces any earlier partition (``heal`` first).
        """
        gs = [list(g) for g in groups]
        named = {i for g in gs for i in g}
        rest = [i for i in self.ids if i not in named]
        if rest:
            gs.append(rest)
        group_of: dict[str, int] = {}
        for n, g in enumerate(gs):
            for i in g:
                if i in group_of:
                    raise ValueError(f"{i!r} is in two groups")
                group_of[i] = n
        self._blocked.clear()
        everyone = list(self.ids) + [i for i in group_of if i not in self.ids]
        for a in everyone:
            for b in everyone:
                if a != b and group_of.get(a) != group_of.get(b):
                    self._blocked.add((a, b))

    def isolate(self, node_id: str) -> None:
        """Cut every link to and from ``node_id`` (other cuts stay)."""
        for other in self.ids:
            if other != node_id:
                self._blocked.add((node_id, other))
                self._blocked.add((other, node_id))

    def cut(self, a: str, b: str, *, both: bool = True) -> None:
        """Cut the link ``a -> b`` (and ``b -> a`` unless ``both=False``)."""
        self._blocked.add((a, b))
        if both:
            self._blocked.add((b, a))

    def connect(self, a: str, b: str, *, both: bool = True) -> None:
        """Restore the link ``a -> b`` (and ``b -> a`` unless ``both=False``)."""
        self._blocked.discard((a, b))
        if both:
            self._blocked.discard((b, a))

    def heal(self) -> None:
        """Restore every link (the random loss/delay knobs stay as they are)."""
        self._blocked.clear()

    def link_up(self, frm: str, to: str) -> bool:
        """Whether ``frm -> to`` currently carries messages."""
        return (frm, to) not in self._blocked

    @property
    def blocked_links(self) -> list[tuple[str, str]]:
        """The cut directed links, sorted."""
        return sorted(self._blocked)

    # ----------------------------------------------------------------- traffic
    def _draw_delay(self) -> int:
        if self.long_delay_prob and self.rng.random() < self.long_delay_prob:
            lo, hi = self.long_delay
        else:
            lo, hi = self.delay
        return lo if lo == hi else self.rng.randint(lo, hi)

    def send(self, msg: Any, now: int, tag: Any = None) -> int:
        """Put ``msg`` on the wire at virtual time ``now``; return how many copies will travel.

        ``tag`` travels with the message (the simulator uses the sender's
        incarnation, to lose what a crashed node had not yet delivered).
        """
        self.sent[msg.type] += 1
        link = (msg.frm, msg.to)
        if link in self._blocked or (self.drop and self.rng.random() < self.drop):
            self.dropped[msg.type] += 1
            return 0
        copies = 1
        if self.duplicate and self.rng.random() < self.duplicate:
            copies = 2
            self.duplicated[msg.type] += 1
        for n in range(copies):
            at = now + self._draw_delay()
            if self.fifo:
                at = max(at, self._last_arrival.get(link, 0))
                self._last_arrival[link] = at
            # Each copy is its own object: the receiver may keep what it is given.
            copy = msg if n == 0 else replace(msg, entries=list(msg.entries))
            self.queue.push(at, DELIVER, (copy, tag))
        return copies

    def arrives(self, msg: Any) -> bool:
        """Called at delivery time: False (and counted as dropped) when the link was cut meanwhile."""
        if (msg.frm, msg.to) in self._blocked:
            self.dropped[msg.type] += 1
            return False
        return True

    def reset_stats(self) -> None:
        """Zero the message counters."""
        self.sent.clear()
        self.delivered.clear()
        self.dropped.clear()
        self.duplicated.clear()

    def in_flight(self) -> int:
        """Messages queued for delivery."""
        return self.queue.pending(DELIVER)
