"""The decision API on a real JOURNEY_HOME: SQLite Feast online store, MLflow SQLite registry,
DuckDB decision log, SQLite outbox and the local CRM."""

from __future__ import annotations

import logging
import sqlite3
import threading

import duckdb
import pytest
from conftest import API_KEY, wait_until
from fastapi.testclient import TestClient

from journey_pipeline.decide import registry
from journey_pipeline.serve.app import create_app, key_allowed
from journey_pipeline.serve.core import DecisionService, ServiceConfig

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAST = ServiceConfig(model_poll_s=0.2, flush_interval_s=0.05, dispatch_interval_s=0.05)


def _client(settings, config: ServiceConfig = FAST) -> tuple[TestClient, DecisionService]:
    service = DecisionService(settings, config)
    app = create_app(settings, service, api_keys={API_KEY})
    return TestClient(app, raise_server_exceptions=False), service


@pytest.fixture
def api(served_home):
    client, service = _client(served_home.settings)
    with client:
        assert wait_until(lambda: client.get("/readyz").status_code == 200), client.get(
            "/readyz"
        ).json()["detail"]
        yield client, service, served_home


def _decision_log(settings) -> dict[str, tuple]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            "SELECT decision_id, action, trigger_event_id, model_version FROM decide.decision_log"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _crm_tasks(settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.crm_path) as con:
        return con.execute("SELECT decision_id, action FROM tasks").fetchall()


def test_decisions_are_idempotent_logged_and_written_back_once(api):
    client, service, home = api
    answers = {}
    for contact in home.contact_ids[:40]:
        body = {
            "contact_id": contact,
            "trigger": {"id": f"cart-{contact}", "type": "cart.abandoned"},
        }
        first = client.post("/v1/decisions", json=body, headers=AUTH)
        again = client.post("/v1/decisions", json=body, headers=AUTH)
        assert first.status_code == 200, first.text
        assert again.json() == first.json()
        answers[first.json()["decision_id"]] = first.json()
    sample = next(iter(answers.values()))
    assert set(sample) >= {
        "decision_id",
        "action",
        "propensity",
        "explanation",
        "policy_version",
        "fallback_reason",
    }
    assert sample["model_version"] == home.versions[0]
    assert sample["policy_version"].startswith(f"model-v{home.versions[0]}+")
    offered = [a for a in answers.values() if a["action"] != "no_offer"]
    assert offered, "a trained policy offers something to 40 contacts"
    assert all(a["explanation"] for a in offered if "fallback" not in a["rules_applied"])
    # No trigger: one is derived from the request, so the request is idempotent too.
    contact = home.contact_ids[50]
    bare = [client.post("/v1/decisions", json={"contact_id": contact}, headers=AUTH) for _ in "ab"]
    assert bare[0].json()["decision_id"] == bare[1].json()["decision_id"]
    other = client.post(
        "/v1/decisions", json={"contact_id": contact, "trigger": {"id": "t-2"}}, headers=AUTH
    )
    assert other.json()["decision_id"] != bare[0].json()["decision_id"]
    assert other.json()["trigger_event_id"] == "t-2"
    for answer in (*bare, other):
        answers[answer.json()["decision_id"]] = answer.json()
    offered = [a for a in answers.values() if a["action"] != "no_offer"]
    client.__exit__(None, None, None)  # lifespan shutdown drains the buffer and the outbox
    logged = _decision_log(home.settings)
    assert set(answers) <= set(logged)
    for decision_id, answer in answers.items():
        assert logged[decision_id][0] == answer["action"]
    tasks = _crm_tasks(home.settings)
    assert sorted(d for d, _ in tasks) == sorted(a["decision_id"] for a in offered)


def test_unknown_contact_and_context(api):
    client, _, _ = api
    unknown = client.post("/v1/decisions", json={"contact_id": "C-nobody"}, headers=AUTH)
    assert unknown.status_code == 200
    assert unknown.json()["action"] == "no_offer"
    assert unknown.json()["fallback_reason"] == "no_features"
    assert unknown.json()["propensity"] == 1.0
    # Request-time context is a feature row for a contact the store does not know yet.
    with_context = client.post(
        "/v1/decisions",
        json={"contact_id": "C-nobody", "context": {"spend_90d": 120.0, "orders_90d": 2}},
        headers=AUTH,
    )
    assert with_context.status_code == 200
    assert with_context.json()["fallback_reason"] is None
    assert with_context.json()["decision_id"] != unknown.json()["decision_id"]


def test_api_keys(api, caplog):
    client, _, home = api
    caplog.set_level(logging.DEBUG)
    body = {"contact_id": home.contact_ids[0]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        answer = client.post("/v1/decisions", json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    # Unauthenticated garbage is refused for the key, before the body is looked at.
    assert client.post("/v1/decisions", content=b"{", headers={}).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/decisions", json=body, headers=AUTH).status_code == 200
    assert API_KEY not in caplog.text
    assert not key_allowed(f"Bearer {API_KEY}", frozenset())
    assert key_allowed(f"bearer {API_KEY}", frozenset({API_KEY, "other"}))


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"contact_id": ', "application/json", 400, "malformed_json"),
        (b'{"contact_id": "C-1"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"contact_id": "C-1"}', None, 415, "unsupported_media_type"),
        (b"{}", "application/json", 422, "invalid_request"),
        (b'{"contact_id": ""}', "application/json", 422, "invalid_request"),
        (b'{"contact_id": 12}', "application/json", 422, "invalid_request"),
        (b'{"contact_id": "C-1", "extra": 1}', "application/json", 422, "invalid_request"),
        (b'{"contact_id": "C-1", "trigger": "t"}', "application/json", 422, "invalid_request"),
        (
            b'{"contact_id": "C-1", "context": {"shoe_size": 3}}',
            "application/json",
            422,
            "invalid_request",
        ),
        (
            b'{"contact_id": "C-1", "context": {"spend_30d": "3"}}',
            "application/json",
            422,
            "invalid_request",
        ),
        (
            b'{"contact_id": "C-1", "context": {"spend_30d": NaN}}',
            "application/json",
            422,
            "invalid_request",
        ),
        (b'[{"contact_id": "C-1"}]', "application/json", 422, "invalid_request"),
        (
            b'{"contact_id": "C-1", "pad": "' + b"x" * 70_000 + b'"}',
            "application/json",
            413,
            "payload_too_large",
        ),
    ],
)
def test_bad_input_gets_a_clear_4xx(api, content, content_type, status, code):
    client, _, _ = api
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    answer = client.post("/v1/decisions", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]


def test_chunked_oversized_body_is_413(api):
    client, _, _ = api

    def chunks():
        yield b'{"contact_id": "C-1", "pad": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    headers = {**AUTH, "Content-Type": "application/json"}
    answer = client.post("/v1/decisions", content=chunks(), headers=headers)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


def _samples(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_and_openapi(api):
    client, _, home = api
    # Feast exports PROMETHEUS_MULTIPROC_DIR on import, which makes metric values shared by
    # name within a process: compare differences, not absolute values.
    before = _samples(client.get("/metrics").text)
    for contact in home.contact_ids[:5]:
        client.post("/v1/decisions", json={"contact_id": contact}, headers=AUTH)
    client.post("/v1/decisions", json={"contact_id": "C-nobody"}, headers=AUTH)
    client.post("/v1/decisions", json={"contact_id": "C-1"})
    after = _samples(client.get("/metrics").text)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew('journey_decision_latency_seconds_count{path="http"}') == 6
    assert grew('journey_decision_latency_seconds_bucket{le="+Inf",path="http"}') == 6
    assert grew('journey_decision_fallbacks_total{reason="no_features"}') == 1
    assert grew('journey_errors_total{kind="unauthorized"}') == 1
    decided = [k for k in after if k.startswith("journey_decisions_total{")]
    assert sum(grew(k) for k in decided) == 6
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/decisions"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "413", "415", "422", "503"}
    assert spec["paths"]["/v1/decisions"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_not_ready_without_champion_unless_cold_start(served_home):
    client = registry.configure_mlflow(served_home.settings)
    client.delete_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION)
    no_champion, _ = _client(served_home.settings)
    with no_champion:
        wait_until(lambda: no_champion.app.state.service.started)
        assert wait_until(lambda: "policy" in no_champion.get("/readyz").json()["detail"])
        ready = no_champion.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["feature_store"] is True and ready.json()["policy"] is False
        answer = no_champion.post(
            "/v1/decisions", json={"contact_id": served_home.contact_ids[0]}, headers=AUTH
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "not_ready"
    cold, _ = _client(served_home.settings, ServiceConfig(allow_cold_start=True))
    with cold:
        assert wait_until(lambda: cold.get("/readyz").status_code == 200)
        answer = cold.post(
            "/v1/decisions", json={"contact_id": served_home.contact_ids[0]}, headers=AUTH
        )
        assert answer.status_code == 200
        assert answer.json()["policy_version"].startswith("cold-start+")
        assert answer.json()["model_version"] is None


def test_feature_store_failure_is_a_no_offer_decision(api):
    client, service, home = api
    # Break the real online store under the running service: its table disappears.
    online = home.settings.feast_dir / "online.db"
    with sqlite3.connect(online) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            con.execute(f'DROP TABLE "{table}"')
    answer = client.post(
        "/v1/decisions",
        json={"contact_id": home.contact_ids[3], "trigger": {"id": "x"}},
        headers=AUTH,
    )
    assert answer.status_code == 200
    assert answer.json()["action"] == "no_offer"
    assert answer.json()["fallback_reason"].startswith("feature_store_unavailable: ")
    assert 'journey_errors_total{kind="feature_store"}' in client.get("/metrics").text


def test_promotion_during_traffic_switches_versions_without_failures(api):
    client, service, home = api
    old, new = home.versions
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def send(worker: int) -> None:
        n = 0
        while not stop.is_set():
            contact = home.contact_ids[(worker * 97 + n) % len(home.contact_ids)]
            body = {"contact_id": contact, "trigger": {"id": f"w{worker}-{n}"}}
            answer = client.post("/v1/decisions", json=body, headers=AUTH)
            results.append(
                (
                    answer.status_code,
                    answer.json().get("model_version") if answer.is_success else None,
                )
            )
            n += 1

    workers = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    assert wait_until(lambda: len(results) >= 20)
    registry.promote(new, who="test", why="promotion during traffic", settings=home.settings)
    assert wait_until(lambda: service.served.model_version == new)
    seen_new = len(results)
    assert wait_until(lambda: len(results) >= seen_new + 20)
    stop.set()
    for worker in workers:
        worker.join()
    assert all(status == 200 for status, _ in results), {s for s, _ in results}
    versions = [version for _, version in results]
    assert versions[0] == old and versions[-1] == new
    # Once a request saw the new champion, none went back to the old one... per worker order
    # is not global, so check the tail only: the last 10 all ran on the new policy.
    assert set(versions[-10:]) == {new}


def test_the_served_champion_explores_more_while_a_drift_episode_is_open(api):
    import pandas as pd

    from journey_pipeline.actions import ACTION_NAMES
    from journey_pipeline.decide.scoring import DRIFT_EPSILON

    client, service, home = api
    champion_epsilon = service.served.bandit.epsilon
    assert champion_epsilon < DRIFT_EPSILON
    history = home.settings.reports_dir / "drift_history.parquet"
    history.parent.mkdir(parents=True, exist_ok=True)

    def newest_check(share: float) -> None:
        pd.DataFrame({"current_window": ["2026-02-01"], "drift_share": [share]}).to_parquet(history)
        service.refresh_policy(force=True)

    newest_check(0.6)
    assert service.served.bandit.epsilon == DRIFT_EPSILON
    answers = [
        client.post("/v1/decisions", json={"contact_id": c}, headers=AUTH).json()
        for c in home.contact_ids[:40]
    ]
    modelled = [a for a in answers if a["model_version"] is not None and not a["holdout"]]
    assert (
        modelled
        and min(a["propensity"] for a in modelled) >= DRIFT_EPSILON / len(ACTION_NAMES) - 1e-12
    )
    newest_check(0.1)  # the newest check is below the threshold: the champion as it is
    assert service.served.bandit.epsilon == champion_epsilon
    # A history that cannot be read keeps the champion serving.
    history.write_bytes(b"not parquet")
    assert service.refresh_policy(force=True)
    assert service.served.bandit.epsilon == champion_epsilon
