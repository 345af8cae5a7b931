"""Workload: concurrent etcd-JSON clients, each bound to one member, recording a History.

Every client runs a closed loop of reads (``/v3/kv/range``, linearizable unless the run asks for
``serializable`` local reads), writes (``/v3/kv/put``, unique values) and compare-and-sets
(``/v3/kv/txn``: a VALUE EQUAL compare, or CREATE == 0 for an absent key, and a put on success) on
a few keys, with a short timeout.  Outcomes are recorded in a
:class:`raftlib.testing.linearizability.History`:

* HTTP 200                                   -> ``complete`` (read result / CAS ``succeeded``)
* connection refused (nothing was sent)      -> ``fail``
* HTTP 4xx (validation; nothing was applied) -> ``fail``
* timeout, reset after sending, any 5xx      -> ``timeout`` (unknown outcome)
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from raftlib.testing.linearizability import History


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


class Unknown(Exception):
    """The request may or may not have taken effect."""


class Failed(Exception):
    """The request definitely did not take effect."""


class Client:
    """One HTTP client bound to one member's client URL."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=1, force_close=False),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.session is not None
        try:
            async with self.session.post(self.url + path, json=body) as resp:
                status = resp.status
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
        except aiohttp.ClientConnectorError as e:
            raise Failed(f"connect: {e}") from None
        except (TimeoutError, asyncio.TimeoutError):
            raise Unknown("timeout") from None
        except (aiohttp.ClientError, OSError) as e:
            raise Unknown(f"{type(e).__name__}: {e}") from None
        if status == 200 and isinstance(data, dict):
            return data
        if 400 <= status < 500:
            raise Failed(f"HTTP {status}: {data}")
        raise Unknown(f"HTTP {status}: {data}")

    async def read(self, key: bytes, serializable: bool = False) -> bytes | None:
        body: dict[str, Any] = {"key": b64(key)}
        if serializable:
            body["serializable"] = True
        data = await self.post("/v3/kv/range", body)
        kvs = data.get("kvs") or []
        return unb64(kvs[0].get("value")) if kvs else None

    async def write(self, key: bytes, value: bytes) -> None:
        await self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    async def cas(self, key: bytes, expected: bytes | None, value: bytes) -> bool:
        if expected is None:
            compare = {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
        else:
            compare = {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(expected)}
        data = await self.post("/v3/kv/txn", {
            "compare": [compare],
            "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
        })
        return bool(data.get("succeeded"))


@dataclass
class WorkloadStats:
    outcomes: Counter[str] = field(default_factory=Counter)  # "read:ok", "write:unknown", ...
    errors: Counter[str] = field(default_factory=Counter)     # first words of error messages

    def total(self) -> int:
        return sum(self.outcomes.values())


class Workload:
    """`clients` closed-loop clients over `urls` (client i bound to urls[i % len(urls)])."""

    def __init__(
        self,
        urls: list[str],
        history: History,
        rng: random.Random,
        *,
        clients: int = 10,
        keys: int = 5,
        timeout: float = 1.0,
        serializable_reads: bool = False,
        mix: tuple[float, float, float] = (0.4, 0.35, 0.25),  # read, write, cas
        think: float = 0.01,
    ) -> None:
        self.urls = urls
        self.history = history
        self.rng = rng
        self.n_clients = clients
        self.keys = [f"jepsen/k{i}".encode() for i in range(keys)]
        self.timeout = timeout
        self.serializable_reads = serializable_reads
        self.mix = mix
        self.think = think
        self.stats = WorkloadStats()
        self.acked: dict[bytes, list[bytes]] = {k: [] for k in self.keys}  # acknowledged writes per key
        self._stop = asyncio.Event()
        self._counter = 0
        self._failed = 0

    def stop(self) -> None:
        self._stop.set()

    def _unique(self, proc: str) -> bytes:
        self._counter += 1
        return f"{proc}.{self._counter}".encode()

    async def run_client(self, idx: int, seed: int) -> None:
        rng = random.Random(seed)
        proc = f"c{idx}@m{idx % len(self.urls)}"
        last_seen: dict[bytes, bytes | None] = {}
        async with Client(self.urls[idx % len(self.urls)], self.timeout) as client:
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                r = rng.random()
                kind = "read" if r < self.mix[0] else "write" if r < self.mix[0] + self.mix[1] else "cas"
                failed_before = self._failed
                await self.one(client, proc, kind, key, rng, last_seen)
                if self._failed > failed_before:  # e.g. connection refused by a killed member
                    await asyncio.sleep(0.1)
                elif self.think:
                    await asyncio.sleep(rng.uniform(0, 2 * self.think))

    async def one(
        self, client: Client, proc: str, kind: str, key: bytes, rng: random.Random,
        last_seen: dict[bytes, bytes | None], serializable: bool | None = None,
    ) -> None:
        h = self.history
        now = time.monotonic
        if kind == "read":
            op = h.invoke(process=proc, kind="read", key=key, at=now())
            try:
                ser = self.serializable_reads if serializable is None else serializable
                value = await client.read(key, serializable=ser)
            except Failed as e:
                h.fail(op, at=now())
                self._note("read", "fail", e)
            except Unknown as e:
                h.timeout(op)
                self._note("read", "unknown", e)
            else:
                h.complete(op, at=now(), result=value)
                last_seen[key] = value
                self.stats.outcomes["read:ok"] += 1
        elif kind == "write":
            value = self._unique(proc)
            op = h.invoke(process=proc, kind="write", key=key, value=value, at=now())
            try:
                await client.write(key, value)
            except Failed as e:
                h.fail(op, at=now())
                self._note("write", "fail", e)
            except Unknown as e:
                h.timeout(op)
                self._note("write", "unknown", e)
            else:
                h.complete(op, at=now())
                self.acked[key].append(value)
                last_seen[key] = value
                self.stats.outcomes["write:ok"] += 1
        else:
            expected = last_seen.get(key)
            value = self._unique(proc)
            op = h.invoke(process=proc, kind="cas", key=key, expected=expected, value=value, at=now())
            try:
                ok = await client.cas(key, expected, value)
            except Failed as e:
                h.fail(op, at=now())
                self._note("cas", "fail", e)
            except Unknown as e:
                h.timeout(op)
                self._note("cas", "unknown", e)
            else:
                h.complete(op, at=now(), ok=ok)
                self.stats.outcomes["cas:ok" if ok else "cas:refused"] += 1
                if ok:
                    self.acked[key].append(value)
                    last_seen[key] = value

    def _note(self, kind: str, outcome: str, err: Exception) -> None:
        if outcome == "fail":
            self._failed += 1
        self.stats.outcomes[f"{kind}:{outcome}"] += 1
        self.stats.errors[str(err).split(":")[0][:40]] += 1

    async def run(self, seed: int) -> None:
        tasks = [asyncio.create_task(self.run_client(i, seed * 1000 + i)) for i in range(self.n_clients)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def final_reads(self, rounds: int = 1) -> dict[str, dict[str, str | None]]:
        """Linearizable reads of every key through every member, recorded in the history."""
        out: dict[str, dict[str, str | None]] = {}
        for m, url in enumerate(self.urls):
            proc = f"final@m{m}"
            async with Client(url, max(self.timeout, 3.0)) as client:
                for key in self.keys:
                    for _ in range(rounds):
                        before = self.stats.outcomes["read:ok"]
                        await self.one(client, proc, "read", key, self.rng, {}, serializable=False)
                        if self.stats.outcomes["read:ok"] > before:
                            break
                        await asyncio.sleep(0.5)
                    ops = [o for o in self.history.ops if o.process == proc and o.key == key]
                    res = ops[-1].result if ops and ops[-1].status == "ok" else "(no answer)"
                    out.setdefault(key.decode(), {})[f"m{m}"] = (
                        res.decode() if isinstance(res, bytes) else None if res is None else str(res))
        return out
