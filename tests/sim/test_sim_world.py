"""The customer world: determinism, continuity across processes, the canonical event format,
the CRM kept in sync, decisions applied, Debezium output."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import insert_tasks, read_events

from journey_pipeline.actions import ACTION_NAMES
from journey_pipeline.features.contract import ACQUISITION_CHANNELS, LIFECYCLE_STAGES
from journey_pipeline.sim.crm import CONTACT_COLUMNS, LocalCrmStore
from journey_pipeline.sim.world import World

START = date(2026, 1, 1)
EVENT_KEYS = {"event_id", "timestamp", "type", "source", "payload"}
SOURCES = {
    "contact.created": "local_crm",
    "contact.updated": "local_crm",
    "contact.deleted": "local_crm",
    "product.viewed": "web",
    "cart.abandoned": "web",
    "payment.succeeded": "billing",
    "offer.delivered": "local_crm",
    "offer.opened": "local_crm",
    "offer.clicked": "local_crm",
}
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ACTIONS_CYCLE = ["offer_a", "offer_b", "no_offer"]


def decide_on_triggers(crm: LocalCrmStore, day_file: Path, created_at: str) -> int:
    """Stand-in for the decide and act stages: one task per cart abandoner of the day,
    actions in rotation, ids derived from the trigger event."""
    rows = []
    for k, e in enumerate(read_events(day_file)):
        if e.get("type") == "cart.abandoned":
            rows.append((f"dec-{e['event_id']}", e["payload"]["contact_id"], ACTIONS_CYCLE[k % 3]))
    insert_tasks(crm, rows, created_at)
    return len(rows)


def run_world(
    home: Path,
    seed: int,
    days: int,
    contacts: int = 2_000,
    save_every_day: bool = False,
    debezium: bool = False,
    drift_day: int | None = None,
) -> list[Path]:
    """Simulate ``days`` days with decisions on every trigger; with ``save_every_day`` the
    world is saved and re-loaded (a new process, in effect) between days."""
    state, landing = home / "sim", home / "landing"
    world = World.create(contacts, seed, START, drift_day=drift_day)
    files = []
    with LocalCrmStore(home / "crm.db") as crm:
        for _ in range(days):
            if save_every_day:
                world.save(state)
                world = World.load(state)
            report = world.step(crm, landing, debezium=debezium)
            files.append(report.events_path)
            decide_on_triggers(crm, report.events_path, f"{report.date}T23:30:00Z")
    return files


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, list[Path]]:
    home = tmp_path_factory.mktemp("world")
    return home, run_world(home, seed=5, days=6, contacts=3_000)


def test_same_seed_gives_byte_identical_files(tmp_path, simulated):
    _, files = simulated
    again = run_world(tmp_path / "again", seed=5, days=6, contacts=3_000)
    assert [p.name for p in again] == [p.name for p in files]
    for a, b in zip(files, again, strict=True):
        assert a.read_bytes() == b.read_bytes()
    other = run_world(tmp_path / "other", seed=6, days=1, contacts=3_000)
    assert other[0].read_bytes() != files[0].read_bytes()


def test_save_and_load_continues_exactly(tmp_path, simulated):
    home, files = simulated
    resumed_home = tmp_path / "resumed"
    resumed = run_world(resumed_home, seed=5, days=6, contacts=3_000, save_every_day=True)
    for a, b in zip(files, resumed, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    with LocalCrmStore(home / "crm.db") as a, LocalCrmStore(resumed_home / "crm.db") as b:
        assert a.change_log() == b.change_log()


def test_every_line_is_a_canonical_event(simulated):
    _, files = simulated
    seen_ids: set[str] = set()
    types = Counter()
    for day, path in enumerate(files):
        assert path.name == f"events-{START + timedelta(days=day)}.jsonl"
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        previous = ""
        for line in raw.splitlines():
            e = orjson.loads(line)
            assert set(e) == EVENT_KEYS
            assert str(uuid.UUID(e["event_id"])) == e["event_id"]
            assert e["event_id"] not in seen_ids
            seen_ids.add(e["event_id"])
            assert TS.match(e["timestamp"])
            assert e["timestamp"].startswith(str(START + timedelta(days=day)))
            assert e["timestamp"] >= previous  # in time order
            previous = e["timestamp"]
            assert e["source"] == SOURCES[e["type"]]
            p = e["payload"]
            assert re.fullmatch(r"C-\d{7}", p["contact_id"])
            types[e["type"]] += 1
            if e["type"] == "payment.succeeded":
                assert isinstance(p["amount"], float) and p["amount"] > 0
                assert p["currency"] == "USD"
                assert p["order_id"].startswith("O-")
            elif e["type"] in ("product.viewed", "cart.abandoned"):
                assert re.fullmatch(r"P-\d{4}", p["product_id"])
                if e["type"] == "cart.abandoned":
                    assert p["cart_value"] > 0
            elif e["type"].startswith("offer."):
                assert p["decision_id"].startswith("dec-")
                assert p["action"] in ACTION_NAMES and p["action"] != "no_offer"
            elif e["type"] in ("contact.created", "contact.updated"):
                assert set(p) == {
                    "contact_id",
                    "email",
                    "phone",
                    "first_name",
                    "lifecycle_stage",
                    "status",
                    "acquisition_channel",
                    "loyalty_member",
                }
                assert p["lifecycle_stage"] in LIFECYCLE_STAGES
                assert p["acquisition_channel"] in ACQUISITION_CHANNELS
                assert isinstance(p["loyalty_member"], bool)
            elif e["type"] == "contact.deleted":
                assert set(p) == {"contact_id"}
    assert set(types) == set(SOURCES), f"every event type occurs: {types}"
    assert (
        len(
            {
                orjson.loads(x)["payload"]["order_id"]
                for f in files
                for x in f.read_bytes().splitlines()
                if b"payment.succeeded" in x
            }
        )
        == types["payment.succeeded"]
    )


def test_contact_events_carry_raw_pii(simulated):
    _, files = simulated
    created = [e for e in read_events(files[0]) if e["type"] == "contact.created"]
    assert len(created) >= 3_000  # the initial population plus the day's sign-ups
    for e in created[:200]:
        p = e["payload"]
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", p["email"])
        assert re.fullmatch(r"\+1555\d{7}", p["phone"])
        assert p["first_name"][0].isupper()
        assert p["status"] in ("active", "inactive")
    assert len({e["payload"]["email"] for e in created}) == len(created)


def test_crm_mirrors_the_world(simulated):
    home, files = simulated
    world = World.create(3_000, 5, START)  # same population: traits come from the seed
    events = [e for f in files for e in read_events(f)]
    deleted = {e["payload"]["contact_id"] for e in events if e["type"] == "contact.deleted"}
    created = {e["payload"]["contact_id"] for e in events if e["type"] == "contact.created"}
    last_stage = {}
    for e in events:
        if e["type"] in ("contact.created", "contact.updated"):
            last_stage[e["payload"]["contact_id"]] = e["payload"]["lifecycle_stage"]
    assert deleted, "erasure requests occur"
    assert len(created) > world.n_contacts, "new contacts arrive over time"
    with LocalCrmStore(home / "crm.db") as crm:
        rows = crm.connection.execute(
            f"SELECT {', '.join(CONTACT_COLUMNS)} FROM contacts"
        ).fetchall()
        in_crm = {r[0]: dict(zip(CONTACT_COLUMNS, r, strict=True)) for r in rows}
        assert set(in_crm) == created - deleted
        assert all(
            in_crm[cid]["lifecycle_stage"] == s for cid, s in last_stage.items() if cid in in_crm
        )
        contact_events = sum(1 for e in events if e["type"].startswith("contact."))
        assert len(crm.change_log()) == contact_events


def test_tasks_are_applied_and_produce_offer_events(tmp_path):
    world = World.create(1_500, 9, START)
    landing = tmp_path / "landing"
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        world.step(crm, landing)
        ids = world.contact_ids(world.active_contacts()[:300])
        rows = [(f"dec-{k}", cid, ACTIONS_CYCLE[k % 2]) for k, cid in enumerate(ids)]
        rows += [("dec-gone", "C-9999999", "offer_a"), ("dec-bad", ids[0], "offer_z")]
        insert_tasks(crm, rows, "2026-01-01T18:00:00Z")
        insert_tasks(crm, [("dec-later", ids[1], "offer_a")], "2026-01-04T09:00:00+00:00")
        reports = [world.step(crm, landing) for _ in range(4)]
        assert reports[0].tasks_applied == 300 and reports[0].tasks_skipped == 2
        assert crm.task_status("dec-0") == "applied"
        assert crm.task_status("dec-gone") == "skipped"
        assert crm.task_status("dec-bad") == "skipped"
        # A task created on 2026-01-04 is applied by that day's step, not before.
        assert reports[1].tasks_applied == 0 and reports[2].tasks_applied == 1
        assert crm.task_status("dec-later") == "applied"
    events = [e for r in reports for e in read_events(r.events_path)]
    offers = [e for e in events if e["type"].startswith("offer.")]
    delivered = {e["payload"]["decision_id"] for e in offers if e["type"] == "offer.delivered"}
    expected = {d for d, _, _ in rows[:300]} | {"dec-later"}
    assert delivered == expected - {d for d, c, _ in rows if c not in ids}  # all delivered
    by_decision = {d: (c, a) for d, c, a in rows}
    for e in offers:
        d = e["payload"]["decision_id"]
        if d != "dec-later":
            assert (e["payload"]["contact_id"], e["payload"]["action"]) == by_decision[d]
    first_day = [e for e in read_events(reports[0].events_path) if e["type"] == "offer.delivered"]
    assert 0.75 < len(first_day) / 300 < 0.95  # most the same day, the rest the next day
    opened = [e for e in offers if e["type"] == "offer.opened"]
    clicked = [e for e in offers if e["type"] == "offer.clicked"]
    assert 0 < len(clicked) < len(opened) < len(delivered)
    delivered_at = {
        e["payload"]["decision_id"]: e["timestamp"]
        for e in offers
        if e["type"] == "offer.delivered"
    }
    assert all(e["timestamp"] > delivered_at[e["payload"]["decision_id"]] for e in opened)
    redeemed = [
        e for e in events if e["type"] == "payment.succeeded" and "decision_id" in e["payload"]
    ]
    assert redeemed, "some purchases redeem an offer"
    for e in redeemed:
        assert e["timestamp"] > delivered_at[e["payload"]["decision_id"]]
        assert by_decision.get(e["payload"]["decision_id"], (None, "offer_a"))[1] != "no_offer"
    assert len({e["payload"]["decision_id"] for e in redeemed}) == len(redeemed)


def test_decision_oracle_log_records_applied_tasks(tmp_path):
    world = World.create(800, 4, START)
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        world.step(crm, tmp_path)
        ids = world.contact_ids(world.active_contacts()[:50])
        expected = world.expected_margins(ids, world.day)
        insert_tasks(crm, [(f"d{k}", c, "offer_a") for k, c in enumerate(ids)], "2026-01-01")
        world.step(crm, tmp_path)
    log = world.decision_oracle()
    log = log.set_index("contact_id").loc[ids]
    assert sorted(log["decision_id"]) == sorted(f"d{k}" for k in range(50))
    np.testing.assert_allclose(log["expected_margin_offer_a"], expected["offer_a"].to_numpy())
    np.testing.assert_allclose(
        log["regret"], (expected.max(axis=1) - expected["offer_a"]).to_numpy()
    )


def test_trigger_rate_is_a_few_percent_of_active_contacts(tmp_path):
    world = World.create(5_000, 2, START)
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        rates = []
        for _ in range(5):
            active = len(world.active_contacts())
            rates.append(world.step(crm, tmp_path).triggers / active)
    assert 0.02 <= np.mean(rates) <= 0.05


def test_debezium_envelopes_for_contact_changes(tmp_path):
    files = run_world(tmp_path, seed=3, days=3, contacts=2_000, debezium=True)
    envelopes, canonical = [], []
    for f in files:
        for e in read_events(f):
            (envelopes if "op" in e else canonical).append(e)
    assert not any(e["type"].startswith("contact.") for e in canonical)
    assert {e["op"] for e in envelopes} == {"c", "u", "d"}
    with LocalCrmStore(tmp_path / "crm.db") as crm:
        log = crm.change_log()
    assert len(log) == len(envelopes)
    for env in envelopes:
        assert set(env) == {"before", "after", "op", "ts_ms", "source"}
        assert env["source"]["name"] == "local_crm" and env["source"]["table"] == "contacts"
        assert env["source"]["ts_ms"] == env["ts_ms"] and isinstance(env["ts_ms"], int)
        if env["op"] == "c":
            assert env["before"] is None and set(env["after"]) == set(CONTACT_COLUMNS)
        elif env["op"] == "u":
            assert env["before"]["contact_id"] == env["after"]["contact_id"]
            assert env["before"]["lifecycle_stage"] != env["after"]["lifecycle_stage"]
        else:
            assert env["after"] is None and "@" in env["before"]["email"]
    by_lsn = {r["seq"]: r for r in log}
    for env in envelopes:
        r = by_lsn[env["source"]["lsn"]]
        assert (r["op"], r["before"], r["after"]) == (env["op"], env["before"], env["after"])


def test_writes_leave_no_temporary_files(simulated):
    home, files = simulated
    assert sorted(p.name for p in (home / "landing").iterdir()) == sorted(p.name for p in files)
