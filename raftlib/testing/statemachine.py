"""State machines for the simulator.

A state machine is any object with ``apply(data: bytes, index: int) -> Any``;
``snapshot() -> bytes`` and ``restore(data: bytes)`` are optional (the
simulator does not take snapshots yet). ``apply`` must be deterministic: every
node applies the same entries in the same order and must reach the same state.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["RecordingStateMachine", "StateMachine"]


@runtime_checkable
class StateMachine(Protocol):
    """What the simulator needs from a user's state machine."""

    def apply(self, data: bytes, index: int) -> Any:  # pragma: no cover - protocol
        ...


class RecordingStateMachine:
    """Remembers every applied command; ``apply`` returns the index.

    >>> sm = RecordingStateMachine()
    >>> sm.apply(b"x", 2)
    2
    >>> sm.applied, sm.data
    ([(2, b'x')], [b'x'])
    """

    def __init__(self) -> None:
        self.applied: list[tuple[int, bytes]] = []

    def apply(self, data: bytes, index: int) -> Any:
        self.applied.append((index, data))
        return index

    @property
    def data(self) -> list[bytes]:
        """The applied commands, in order."""
        return [d for _, d in self.applied]

    def snapshot(self) -> bytes:
        import json

        return json.dumps([[i, d.hex()] for i, d in self.applied]).encode()

    def restore(self, data: bytes) -> None:
        import json

        self.applied = [(i, bytes.fromhex(h)) for i, h in json.loads(data)]
