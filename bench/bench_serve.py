"""HTTP decision latency under open-loop load, against a trivial endpoint on the same server.

A quickstart home (online features in SQLite, a registered champion) is served by uvicorn in
a child process on loopback. For each rate (200 and 1,000 requests/s) an asyncio + httpx
generator sends requests on a fixed schedule, not waiting for answers (open loop, so a slow
server cannot slow the offered load), first to ``GET /healthz`` (the baseline: the same
server, no decision) and then to ``POST /v1/decisions``. Latency is measured from each
request's scheduled send time. Prints p50/p99/error rate per endpoint and rate, and the p99
ratio decision/baseline.

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

API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _open_loop(
    client: httpx.AsyncClient, rate: float, seconds: float, make_request
) -> dict[str, float]:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule; latency from the
    scheduled time. Returns p50/p99 (ms), error rate and the count."""
    total = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = await make_request(client, i)
            if response.status_code != 200:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - scheduled)

    await asyncio.gather(*(one(i) for i in range(total)))
    ms = np.asarray(latencies) * 1000
    return {
        "requests": total,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "error_rate": errors / max(total, 1),
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

            async def baseline(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.get("/healthz")

            async def decision(client: httpx.AsyncClient, i: int) -> httpx.Response:
                body = {
                    "contact_id": contact_ids[i % len(contact_ids)],
                    "trigger": {"id": f"bench-{time.time_ns()}-{i}", "type": "cart.abandoned"},
                }
                return await client.post("/v1/decisions", json=body)

            async def run_all() -> None:
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
                async with httpx.AsyncClient(
                    base_url=base,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    limits=limits,
                    timeout=30,
                ) as client:
                    for _ in range(50):  # warm connections and caches
                        await decision(client, 0)
                    for rate in rates:
                        base_figures = await _open_loop(client, rate, seconds, baseline)
                        decision_figures = await _open_loop(client, rate, seconds, decision)
                        results["rates"][str(int(rate))] = {
                            "baseline_healthz": base_figures,
                            "decisions": decision_figures,
                            "p99_ratio_vs_baseline": decision_figures["p99_ms"]
                            / max(base_figures["p99_ms"], 1e-9),
                        }

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
            f"p99 {b['p99_ms']:.1f} ms | p99 ratio {figures['p99_ratio_vs_baseline']:.1f}x"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
