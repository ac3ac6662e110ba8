import json

import dagster as dg

from journey_pipeline.observe.landing import file_day, landing_files
from journey_pipeline.observe.sensors import landing_files_sensor, new_landing_work
from journey_pipeline.resources import JourneyResource


def test_new_landing_work_requests_new_and_grown_files_once():
    work, cursor = new_landing_work([("a.jsonl", 10, "2026-01-01")], {})
    assert work == [("2026-01-01", "a.jsonl", 10)]
    again, cursor2 = new_landing_work([("a.jsonl", 10, "2026-01-01")], cursor)
    assert again == [] and cursor2 == cursor
    grown, _ = new_landing_work([("a.jsonl", 25, "2026-01-01")], cursor)
    assert grown == [("2026-01-01", "a.jsonl", 25)]
    empty, _ = new_landing_work([("b.jsonl", 0, "2026-01-01")], {})
    assert empty == []


def test_file_day_and_listing(tmp_path):
    (tmp_path / "events-2026-01-02.jsonl").write_text("{}\n")
    (tmp_path / "events-2026-01-03-part2.jsonl").write_text("{}\n")
    (tmp_path / ".events-2026-01-03.jsonl").write_text("{}\n")  # being written
    (tmp_path / "notes.txt").write_text("x")
    assert file_day("events-2026-13-40.jsonl") is None
    assert [p.name for p in landing_files(tmp_path)] == [
        "events-2026-01-02.jsonl",
        "events-2026-01-03-part2.jsonl",
    ]
    assert [p.name for p in landing_files(tmp_path, file_day("x-2026-01-03"))] == [
        "events-2026-01-03-part2.jsonl"
    ]


def test_sensor_uses_cursor_and_run_keys(journey_home):
    landing = journey_home / "landing"
    landing.mkdir()
    (landing / "events-2026-01-05.jsonl").write_text('{"a": 1}\n')
    resources = {"journey": JourneyResource(home=str(journey_home))}
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=resources)
        first = landing_files_sensor(context)
        assert [r.run_key for r in first] == ["events-2026-01-05.jsonl@9"]
        assert first[0].partition_key == "2026-01-05"
        cursor = json.loads(context.cursor)
        context = dg.build_sensor_context(
            instance=instance, cursor=json.dumps(cursor), resources=resources
        )
        assert isinstance(landing_files_sensor(context), dg.SkipReason)
