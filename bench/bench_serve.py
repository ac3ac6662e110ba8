"""HTTP decision latency under open-loop load, against a trivial endpoint on the same server.

A quickstart home (online features in SQLite, a registered champion) is served by uvicorn in
a child process on loopback. For each rate (200 and 1,000 requests/s) an asyncio + httpx
generator sends requests on a fixed schedule, not waiting for answers (open loop, so a slow
server cannot slow the offered load), first to ``GET /healthz`` (the baseline: the same
server, no decision) and then to ``POST /v1/decisions``. Latency is measured from each
request's scheduled send time, so time spent queueing anywhere counts. Prints p50/p99/error
rate per endpoint and rate, and the p99 ratio decision/baseline.

The generator is a minimal HTTP/1.1 client on asyncio streams (keep-alive connections, one
request in flight per connection, opened on demand): a general-purpose client costs about a
millisecond of CPU per request, so at 1,000 requests/s on a small machine it would measure
itself rather than the server.

    python bench/bench_serve.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Response:
    __slots__ = ("status_code", "body")

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body


class _StaleConnection(ConnectionError):
    """A kept-alive connection closed by the server before it answered."""


class LeanClient:
    """Keep-alive HTTP/1.1 connections to one server; one request in flight per connection.

    ``request`` takes an idle connection or opens one (up to ``max_connections``, then it
    waits for one: that wait is part of the measured latency)."""

    def __init__(self, host: str, port: int, headers: dict[str, str], max_connections: int):
        self.host, self.port = host, port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.max_connections = max_connections
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open = 0
        self._freed = asyncio.Condition()

    async def _connection(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], bool]:
        """An idle connection (reused=True) or a new one."""
        async with self._freed:
            while not self._idle and self._open >= self.max_connections:
                await self._freed.wait()
            if self._idle:
                return self._idle.pop(), True
            self._open += 1
        try:
            return await asyncio.open_connection(self.host, self.port), False
        except OSError:
            async with self._freed:
                self._open -= 1
                self._freed.notify()
            raise

    async def _release(self, connection, reuse: bool) -> None:
        async with self._freed:
            if reuse:
                self._idle.append(connection)
            else:
                self._open -= 1
                connection[1].close()
            self._freed.notify()

    async def request(self, method: str, path: str, body: bytes | None = None) -> _Response:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        payload = (head + "\r\n").encode() + (body or b"")
        while True:
            connection, reused = await self._connection()
            try:
                return await self._exchange(connection, payload)
            except (_StaleConnection, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection before this request reached
                # it: as any HTTP client does, send again on a fresh connection (decisions are
                # idempotent by trigger id, so a repeat could not decide twice anyway).
                if not reused:
                    raise ConnectionError("the server closed a new connection") from None

    async def _exchange(self, connection, payload: bytes) -> _Response:
        reader, writer = connection
        try:
            writer.write(payload)
            status_line = await reader.readline()
            if not status_line:
                raise _StaleConnection
            status = int(status_line.split(b" ", 2)[1])
            length, keep = 0, True
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            data = await reader.readexactly(length) if length else b""
        except BaseException:
            await self._release(connection, reuse=False)
            raise
        await self._release(connection, reuse=keep)
        return _Response(status, data)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _open_loop(client: LeanClient, rate: float, seconds: float, make_request) -> dict:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule; latency from the
    scheduled time. Returns p50/p99 (ms), error rate and the count."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + 0.05

    async def one(i: int, scheduled: float) -> None:
        try:
            response = await make_request(client, i)
            if response.status_code != 200:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        latencies.append(time.perf_counter() - scheduled)

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    ms = np.asarray(latencies) * 1000
    return {
        "requests": total,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "error_rate": sum(errors.values()) / max(total, 1),
        "errors": errors,
    }


def _prepare_home(home: Path, contacts: int) -> list[str]:
    env = {**os.environ, "JOURNEY_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "journey_pipeline.serve.quickstart", "--contacts", str(contacts)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return [f"C-{i:07d}" for i in range(summary["contacts"])]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the figures per rate and endpoint."""
    parser = argparse.ArgumentParser(description="HTTP decision latency benchmark")
    parser.add_argument("--quick", action="store_true", help="5 s per rate")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rates", default="200,1000")
    parser.add_argument("--connections", type=int, default=256, help="client connection cap")
    args = parser.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    rates = [float(r) for r in args.rates.split(",")]
    results: dict = {"seconds_per_run": seconds, "rates": {}}
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        contact_ids = _prepare_home(home, 2000)
        port = _free_port()
        env = {**os.environ, "JOURNEY_HOME": str(home), "JOURNEY_API_KEYS": API_KEY}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "journey_pipeline.serve.app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("the decision server did not become ready")

            run_id = time.time_ns()

            async def baseline(client: LeanClient, i: int) -> _Response:
                return await client.request("GET", "/healthz")

            async def decision(client: LeanClient, i: int) -> _Response:
                body = {
                    "contact_id": contact_ids[i % len(contact_ids)],
                    "trigger": {"id": f"bench-{run_id}-{i}", "type": "cart.abandoned"},
                }
                return await client.request("POST", "/v1/decisions", orjson.dumps(body))

            async def run_all() -> None:
                client = LeanClient(
                    "127.0.0.1",
                    port,
                    {"Authorization": f"Bearer {API_KEY}"},
                    max_connections=args.connections,
                )
                try:
                    for i in range(200):  # warm connections and caches
                        await decision(client, -1 - i)
                    for rate in rates:
                        base_figures = await _open_loop(client, rate, seconds, baseline)
                        decision_figures = await _open_loop(client, rate, seconds, decision)
                        results["rates"][str(int(rate))] = {
                            "baseline_healthz": base_figures,
                            "decisions": decision_figures,
                            "p99_ratio_vs_baseline": decision_figures["p99_ms"]
                            / max(base_figures["p99_ms"], 1e-9),
                        }
                finally:
                    await client.close()

            try:
                import uvloop

                uvloop.run(run_all())
            except ImportError:
                asyncio.run(run_all())
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    for rate, figures in results["rates"].items():
        b, d = figures["baseline_healthz"], figures["decisions"]
        print(
            f"{rate:>5} req/s  decisions p50 {d['p50_ms']:.1f} ms p99 {d['p99_ms']:.1f} ms "
            f"errors {d['error_rate']:.2%} | baseline p50 {b['p50_ms']:.1f} ms "
            f"p99 {b['p99_ms']:.1f} ms errors {b['error_rate']:.2%} | p99 ratio "
            f"{figures['p99_ratio_vs_baseline']:.1f}x"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
