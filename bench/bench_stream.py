"""Streaming latency: event produced -> task written in the local CRM.

A quickstart home is served by :func:`run_stream` over librdkafka's mock cluster. Cart
abandonments (triggers) are produced at a fixed rate; a watcher polls the local CRM's task
table and matches each new task to its trigger event (the task body carries the decision's
``trigger_event_id``). The baseline, measured in the same run, is the transport alone: a
plain consumer in its own group receiving the same events. Prints p50/p99 of both and the
ratio.

    python bench/bench_stream.py [--quick] [--events N] [--rate R]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    ms = np.asarray(seconds) * 1000
    return {
        "count": len(seconds),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the figures."""
    parser = argparse.ArgumentParser(description="Kafka event -> CRM task latency benchmark")
    parser.add_argument("--quick", action="store_true", help="1,000 events")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--poll-batch", type=int, default=100, help="events per decision batch")
    args = parser.parse_args(argv)
    events = args.events or (1_000 if args.quick else 10_000)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        os.environ["JOURNEY_HOME"] = str(home)
        from journey_pipeline.serve.core import DecisionService, ServiceConfig
        from journey_pipeline.serve.quickstart import prepare_quickstart_home
        from journey_pipeline.serve.stream import run_stream
        from journey_pipeline.settings import load_settings

        settings = load_settings()
        prepared = prepare_quickstart_home(settings, contacts=20_000)
        service = DecisionService(settings, ServiceConfig()).start(background=False)
        _ = service.crm  # creates the local CRM tables before the watcher reads them
        producer = Producer({"test.mock.num.brokers": 1, "linger.ms": 0})
        bootstrap = ",".join(
            f"{b.host}:{b.port}" for b in producer.list_topics(timeout=10).brokers.values()
        )
        topic = settings.kafka_topic
        producer.produce(topic, value=None)  # creates the topic; a tombstone is skipped
        producer.flush(10)

        produced_at: dict[str, float] = {}
        crm_latency: list[float] = []
        transport_latency: list[float] = []
        done = threading.Event()
        stop_stream = threading.Event()

        def watch_crm() -> None:
            last = 0
            while not done.is_set():
                if settings.crm_path.exists():
                    with sqlite3.connect(settings.crm_path) as con:
                        rows = con.execute(
                            "SELECT task_id, body FROM tasks WHERE task_id > ? ORDER BY task_id",
                            (last,),
                        ).fetchall()
                    now = time.perf_counter()
                    for task_id, body in rows:
                        trigger = json.loads(body).get("trigger_event_id")
                        if trigger in produced_at:
                            crm_latency.append(now - produced_at[trigger])
                        last = task_id
                time.sleep(0.002)

        def watch_transport() -> None:
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": "bench-transport-baseline",
                    "auto.offset.reset": "latest",
                    "fetch.wait.max.ms": 5,
                }
            )
            consumer.subscribe([topic])
            while not done.is_set():
                for message in consumer.consume(500, 0.05):
                    if message.error() is None and message.value():
                        event_id = json.loads(message.value())["event_id"]
                        if event_id in produced_at:
                            transport_latency.append(time.perf_counter() - produced_at[event_id])
            consumer.close()

        stream_result: dict = {}

        def stream() -> None:
            stream_result.update(
                run_stream(
                    settings,
                    bootstrap,
                    service=service,
                    stop=stop_stream,
                    poll_batch=args.poll_batch,
                    extra_config={"fetch.wait.max.ms": 5},
                )
            )

        threads = [
            threading.Thread(target=watch_crm),
            threading.Thread(target=watch_transport),
            threading.Thread(target=stream),
        ]
        for thread in threads:
            thread.start()
        time.sleep(6.0)  # consumers join their groups
        contacts = prepared.contact_ids
        start = time.perf_counter()
        for i in range(events):
            scheduled = start + i / args.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            event_id = str(uuid.uuid4())
            event = {
                "event_id": event_id,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "type": "cart.abandoned",
                "source": "bench",
                "payload": {"contact_id": contacts[i % len(contacts)]},
            }
            produced_at[event_id] = time.perf_counter()
            producer.produce(
                topic, value=json.dumps(event).encode(), key=event["payload"]["contact_id"]
            )
            producer.poll(0)
        producer.flush(10)
        # Done when no new CRM task arrived for 3 s (or after a minute).
        deadline, seen, quiet_since = time.monotonic() + 60, -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(crm_latency) != seen:
                seen, quiet_since = len(crm_latency), time.monotonic()
            elif time.monotonic() - quiet_since > 3.0:
                break
            time.sleep(0.2)
        stop_stream.set()
        done.set()
        for thread in threads:
            thread.join(timeout=60)
        service.close()
    results = {
        "events": events,
        "rate_per_s": args.rate,
        "stream": stream_result,
        "event_to_crm_task": _percentiles(crm_latency),
        "baseline_transport_only": _percentiles(transport_latency),
    }
    task, transport = results["event_to_crm_task"], results["baseline_transport_only"]
    results["p99_ratio_vs_baseline"] = task["p99_ms"] / max(transport["p99_ms"], 1e-9)
    print(
        f"{events} events at {args.rate:.0f}/s: event -> CRM task p50 {task['p50_ms']:.1f} ms "
        f"p99 {task['p99_ms']:.1f} ms over {task['count']} tasks | transport only p50 "
        f"{transport['p50_ms']:.1f} ms p99 {transport['p99_ms']:.1f} ms | p99 ratio "
        f"{results['p99_ratio_vs_baseline']:.1f}x"
    )
    print(json.dumps(results, default=str))
    return results


if __name__ == "__main__":
    main()
