"""The smallest embedding of raftlib: a replicated counter.

Run three members in three terminals (or with `&`)::

    python examples/counter.py n1
    python examples/counter.py n2
    python examples/counter.py n3

Every second each member adds 1 through Raft (followers forward to the
leader) and prints the counter after a linearizable read. Kill any one of
them: the other two keep counting; restart it: it catches up from its data
directory and its peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

import raftlib

MEMBERS = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}


class Counter(raftlib.StateMachine):
    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes, index: int) -> int:
        self.value += int(command)
        return self.value

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        self.value = int(data)


async def main(node_id: str, data_dir: str, rounds: int, linger: float) -> None:
    counter = Counter()
    config = raftlib.NodeConfig(forward_proposals=True)
    async with raftlib.RaftNode(node_id, MEMBERS, counter, data_dir=data_dir, config=config) as node:
        done = 0
        while rounds == 0 or done < rounds:
            await asyncio.sleep(1)
            try:
                await node.propose(b"1", timeout=2)
                await node.read_barrier()
                done += 1
                print(f"{node_id}: counter={counter.value} leader={node.leader}", flush=True)
            except (raftlib.RaftError, TimeoutError) as exc:
                print(f"{node_id}: not now ({exc!r})", flush=True)
        await asyncio.sleep(linger)  # keep serving the others for a while


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("node_id", choices=sorted(MEMBERS))
    parser.add_argument("--data-dir", default=None, help="default: data/<node_id>")
    parser.add_argument("--rounds", type=int, default=0, help="stop after N increments (0: forever)")
    parser.add_argument("--linger", type=float, default=0, help="seconds to keep serving after the rounds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raftlib.install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.node_id, args.data_dir or f"data/{args.node_id}", args.rounds, args.linger))
