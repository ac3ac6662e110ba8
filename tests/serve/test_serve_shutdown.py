"""SIGTERM loses nothing: a real uvicorn process drains its buffered decisions on shutdown."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys

import duckdb
import httpx
from conftest import API_KEY, wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_buffered_decisions(served_home):
    settings = served_home.settings
    port = _free_port()
    env = {
        **os.environ,
        "JOURNEY_HOME": str(settings.home),
        "JOURNEY_API_KEYS": f"other-key,{API_KEY}",
        # Nothing is written in the background during the test: only shutdown can write.
        "JOURNEY_SERVE_FLUSH_S": "3600",
        "JOURNEY_SERVE_DISPATCH_S": "3600",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "journey_pipeline.serve.app", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(ready, timeout_s=90), (
            server.stdout.read1().decode() if server.poll() else ""
        )
        answers = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            for contact in served_home.contact_ids[:30]:
                body = {"contact_id": contact, "trigger": {"id": f"sigterm-{contact}"}}
                answer = client.post("/v1/decisions", json=body)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
            logged_before = con.execute("SELECT count(*) FROM decide.decision_log").fetchone()[0]
        assert logged_before == 0  # everything is still in the server's buffer
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # uvicorn finishes its graceful shutdown, then re-raises the signal it got.
    assert server.returncode in (0, -signal.SIGTERM), output.decode()[-2000:]
    assert b"decision service drained: {'flushed': 30" in output
    assert API_KEY.encode() not in output
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        logged = {
            r[0] for r in con.execute("SELECT decision_id FROM decide.decision_log").fetchall()
        }
    assert {a["decision_id"] for a in answers} <= logged
    offers = {a["decision_id"] for a in answers if a["action"] != "no_offer"}
    with sqlite3.connect(settings.crm_path) as con:
        tasks = {r[0] for r in con.execute("SELECT decision_id FROM tasks").fetchall()}
    assert offers and tasks == offers
