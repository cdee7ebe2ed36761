"""`revision logs import`: row-level validation, UTC days, idempotent re-import, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from revision.cli.main import app
from revision.errors import InputError
from revision.logs.importer import import_logs, message
from revision.logs.no_click import extract_no_click
from revision.tables import CLICKS, EVENTS, IMPRESSIONS, ORDERS, PRODUCTS, REQUESTS
from revision.tables import LOG_REJECTS as REJECTS
from revision.warehouse import Warehouse

runner = CliRunner()


@pytest.fixture
def wh(isolated_warehouse) -> Warehouse:
    return Warehouse(isolated_warehouse)


def write_jsonl(path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def request(rid, ts="2026-03-02T10:00:00Z", **kw):
    return {"request_id": rid, "user_id": "u1", "ts": ts, "image": f"{rid}.jpg", **kw}


def rejects_by_line(report) -> dict[int, dict]:
    return {r["line"]: r for r in report.rejects}


def test_malformed_rows_are_reported_by_file_and_line_and_skipped(wh, tmp_path):
    path = write_jsonl(
        tmp_path / "requests.jsonl",
        [
            request("r1"),
            '{"request_id": "r2", "user_id": ',  # line 2: broken JSON
            request("r3", ts="2026-03-02 10:00:00"),  # line 3: naive timestamp
            {"request_id": "r4", "ts": "2026-03-02T10:00:00Z", "image": "a.jpg"},  # 4: no user_id
            request("r5", ts="yesterday"),  # line 5: not a timestamp
            request("r6", relevance="high"),  # line 6: not a number
            "",  # blank line: not a row
            request("r8", ts="2026-03-02T23:30:00-02:00"),  # 01:30 UTC next day
            [1, 2],  # line 9: not an object
        ],
    )
    report = import_logs(path, wh)
    assert report.imported == {REQUESTS: 2}
    bad = rejects_by_line(report)
    assert set(bad) == {2, 3, 4, 5, 6, 9}
    assert message(bad[2]).startswith(f"{path}:2: not valid JSON")
    assert message(bad[3]) == (
        f"{path}:3: field ts: timestamp '2026-03-02 10:00:00' has no time zone (add 'Z' or "
        "'+HH:MM', or pass --assume-utc if the file is in UTC)"
    )
    assert message(bad[4]) == f"{path}:4: field user_id: missing required value"
    assert "not an ISO-8601 timestamp" in bad[5]["reason"]
    assert bad[6]["field"] == "relevance"
    assert all(r["action"] == "skipped" for r in report.rejects)
    # good rows land in their UTC day
    days = {r["request_id"]: r["dt"] for r in wh.read(REQUESTS).to_pylist()}
    assert days == {"r1": "2026-03-02", "r8": "2026-03-03"}
    ts = {r["request_id"]: r["ts"] for r in wh.read(REQUESTS).to_pylist()}
    assert ts["r8"] == datetime(2026, 3, 3, 1, 30, tzinfo=UTC)
    # the rejects are kept in the warehouse with file, line, field and reason
    stored = wh.read(REJECTS).to_pylist()
    assert {(r["source"], r["line"], r["field"]) for r in stored} >= {(path, 4, "user_id")}


def test_assume_utc_and_epoch_timestamps(wh, tmp_path):
    path = write_jsonl(
        tmp_path / "requests.jsonl",
        [
            request("naive", ts="2026-03-02T10:00:00"),
            request("secs", ts=1772445600),  # 2026-03-02T10:00:00Z in epoch seconds
            request("millis", ts=1772445600123),  # ... and in milliseconds
            request("micros", ts=1772445600123456),  # a unit mistake: year 58000
        ],
    )
    report = import_logs(path, wh, assume_utc=True)
    assert report.imported == {REQUESTS: 3}
    assert "wrong unit?" in rejects_by_line(report)[4]["reason"]
    ts = {r["request_id"]: r["ts"] for r in wh.read(REQUESTS).to_pylist()}
    base = datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert ts["naive"] == base == ts["secs"]
    assert ts["millis"] == base.replace(microsecond=123000)


def test_reimport_adds_nothing_and_conflicts_are_reported(wh, tmp_path):
    path = write_jsonl(
        tmp_path / "requests.jsonl", [request("r1"), request("r2"), request("r1")]
    )  # in-file duplicate
    first = import_logs(path, wh)
    assert first.imported == {REQUESTS: 2}
    assert "duplicate key (first at" in rejects_by_line(first)[3]["reason"]
    again = import_logs(path, wh)
    assert again.imported == {REQUESTS: 0} and again.already_present == {REQUESTS: 2}
    assert wh.read(REQUESTS).num_rows == 2
    assert len(wh.read(REJECTS).to_pylist()) == 1  # the file's rejects replaced, not appended
    # a file another stage wrote into the partition is read for the key check, never rewritten
    sim_rows = [
        {
            "request_id": "s1",
            "user_id": "u2",
            "image": "s1.jpg",
            "ts": datetime(2026, 3, 2, 9, tzinfo=UTC),
        }
    ]
    sim_file = wh.write(
        REQUESTS,
        pa.Table.from_pylist(sim_rows, schema=REQUESTS.schema),
        {"dt": "2026-03-02"},
        file="part-baseline.parquet",
    )
    before = sim_file.read_bytes()
    clash = write_jsonl(
        tmp_path / "sim_requests.jsonl",
        [request("s1", ts="2026-03-02T09:00:00Z", user_id="u2", image="s1.jpg")],
    )
    assert import_logs(clash, wh).already_present == {REQUESTS: 1}
    assert sim_file.read_bytes() == before
    other = write_jsonl(
        tmp_path / "more_requests.jsonl", [request("r1", ts="2026-03-05T10:00:00Z"), request("r9")]
    )
    report = import_logs(other, wh)
    assert report.imported == {REQUESTS: 1}
    assert "first import wins" in rejects_by_line(report)[1]["reason"]
    assert sorted(wh.read(REQUESTS)["request_id"].to_pylist()) == ["r1", "r2", "r9", "s1"]


def test_folder_import_all_tables_with_catalog_checks(wh, tmp_path):
    wh.write(
        PRODUCTS,
        pa.Table.from_pylist(
            [{"product_id": "p1", "title": "Dress", "image_path": "/x.jpg"}], schema=PRODUCTS.schema
        ),
    )
    folder = tmp_path / "export"
    folder.mkdir()
    write_jsonl(folder / "requests.jsonl", [request("r1"), request("r2")])
    write_jsonl(
        folder / "impressions.jsonl",
        [
            {"request_id": "r1", "product_id": "p1", "rank": 1, "score": 0.9},
            {"request_id": "r1", "product_id": "p404", "rank": 2, "score": 0.8},  # unknown product
            {"request_id": "r1", "product_id": "p1", "rank": 0},  # rank below 1
            {"request_id": "r1", "product_id": "p1", "rank": 2.5},  # not an integer
            {"request_id": "nope", "product_id": "p1", "rank": 1},  # unknown request: no day
        ],
    )
    write_jsonl(
        folder / "clicks.jsonl",
        [
            {"request_id": "r1", "product_id": "p1", "ts": "2026-03-02T10:00:12Z"},
            {"request_id": "zz", "product_id": "p1", "ts": "2026-03-02T10:00:12Z"},  # orphan
        ],
    )
    pq.write_table(
        pa.table(
            {
                "request_id": ["r1", "r1"],
                "product_id": ["p1", "p1"],
                "ts": pa.array(
                    [datetime(2026, 3, 2, 10, 1, tzinfo=UTC)] * 2, pa.timestamp("us", "UTC")
                ),
                "price": [19.9, -5.0],
            }
        ),
        folder / "orders.parquet",
    )
    report = import_logs(folder, wh)
    assert report.imported == {REQUESTS: 2, IMPRESSIONS: 2, CLICKS: 2, ORDERS: 1}
    by = {(r["table"], r["line"]): r for r in report.rejects}
    assert by[(IMPRESSIONS, 2)]["action"] == "kept"  # unknown product: kept, warned
    assert "unknown product id 'p404'" in by[(IMPRESSIONS, 2)]["reason"]
    assert "below 1" in by[(IMPRESSIONS, 3)]["reason"]
    assert "expected an integer" in by[(IMPRESSIONS, 4)]["reason"]
    assert "unknown request" in by[(IMPRESSIONS, 5)]["reason"]
    assert by[(CLICKS, 2)]["action"] == "kept" and by[(CLICKS, 2)]["field"] == "request_id"
    assert by[(ORDERS, 2)]["reason"] == "negative value -5"
    assert wh.read(IMPRESSIONS)["dt"].to_pylist() == ["2026-03-02"] * 2  # the request's day
    # --unknown-products drop skips them instead
    write_jsonl(
        folder / "impressions.jsonl", [{"request_id": "r2", "product_id": "p404", "rank": 1}]
    )
    report = import_logs(folder / "impressions.jsonl", wh, unknown_products="drop")
    assert report.imported == {IMPRESSIONS: 0} and report.rejects[0]["action"] == "skipped"
    # the imported log is what no-click reads (image paths relative to --images)
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "r2.jpg")
    out = extract_no_click(wh, bot_filter="none", nsfw=False, images_root=folder)
    assert out.requests == 2 and out.no_click == 1


def test_parquet_naive_timestamps_need_assume_utc(wh, tmp_path):
    path = tmp_path / "clicks.parquet"
    pq.write_table(
        pa.table(
            {
                "request_id": ["r1"],
                "product_id": ["p1"],
                "ts": pa.array([datetime(2026, 3, 2, 10, 0)], pa.timestamp("ms")),
            }
        ),
        path,
    )
    report = import_logs(path, wh)
    assert report.imported == {CLICKS: 0} and "no time zone" in report.rejects[0]["reason"]
    assert import_logs(path, wh, assume_utc=True).imported == {CLICKS: 1}


def test_file_level_errors(wh, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        import_logs(tmp_path / "missing.jsonl", wh)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unknown file type"):
        import_logs(tmp_path / "x.csv", wh)
    ambiguous = write_jsonl(
        tmp_path / "stuff.jsonl", [{"request_id": "r", "product_id": "p", "ts": 1}]
    )
    with pytest.raises(InputError, match="pass --table"):
        import_logs(ambiguous, wh)
    with pytest.raises(InputError, match="valid tables"):
        import_logs(ambiguous, wh, table="sessions")


def test_cli_import_json(wh, tmp_path):
    path = write_jsonl(tmp_path / "requests.jsonl", [request("r1"), "{oops"])
    out = runner.invoke(app, ["logs", "import", path, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["imported"] == {REQUESTS: 1} and data["rejected"] == 1
    assert data["rejects"][0]["message"].startswith(f"{path}:2: not valid JSON")
    out = runner.invoke(app, ["logs", "import", path])  # human output on stderr
    assert out.exit_code == 0 and "1 already present" in out.output


# -- follow-up events ----------------------------------------------------------------------------


def event(rid, kind, value="", ts="2026-03-02T10:00:20Z", **kw):
    return {"request_id": rid, "user_id": "u1", "ts": ts, "kind": kind, "value": value, **kw}


def test_events_bad_rows_are_counted_with_a_reason_and_the_batch_goes_on(wh, tmp_path):
    """Through `revision logs import`, as a team would: each bad event is a reject with its
    reason; the good ones land, also those after the bad ones."""
    folder = tmp_path / "export"
    folder.mkdir()
    write_jsonl(folder / "requests.jsonl", [request("r1"), request("r2", user_id="u2")])
    write_jsonl(
        folder / "events.jsonl",
        [
            event("r1", "sort_price", "asc"),  # 1: good
            event("nope", "sort_price", "asc"),  # 2: unknown request
            event("r1", "filter_colour", "Black", ts="2026-03-02T09:59:00Z"),  # 3: 60 s early
            event("r1", "sort_price", "asc"),  # 4: duplicate of line 1
            event("r1", "pinch_zoom", "2x"),  # 5: unknown kind
            event("r1", "text_query", "cheap " * 1700),  # 6: a text query of 10 kB
            event("r1", "text_query", "cheap\x07 dress"),  # 7: a control character
            event("r1", "text_query", "dress\u202ein red"),  # 8: a bidi override (format char)
            event("r2", "text_query", "红色 连衣裙 for kids"),  # 9: good, after the bad ones
            event("r2", "leave", None, ts="2026-03-02T10:00:40Z"),  # 10: good, no value
            event("r2", "reupload", "", ts=1772445630),  # 11: good, epoch seconds
        ],
    )
    out = runner.invoke(app, ["logs", "import", str(folder), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["imported"] == {REQUESTS: 2, EVENTS: 4}
    assert report["rejected"] == 7 and report["warnings"] == 0
    by = {r["line"]: r for r in report["rejects"] if r["table"] == EVENTS}
    assert sorted(by) == [2, 3, 4, 5, 6, 7, 8]
    assert by[2]["field"] == "request_id" and "unknown request 'nope'" in by[2]["reason"]
    assert by[3]["field"] == "ts" and "60 s before its request" in by[3]["reason"]
    assert "duplicate key (first at" in by[4]["reason"] and by[4]["message"].endswith("skipped")
    assert by[5]["field"] == "kind" and "unknown event kind 'pinch_zoom'" in by[5]["reason"]
    assert "valid: sort_price" in by[5]["reason"]
    assert by[6]["field"] == "value" and "characters (at most 500)" in by[6]["reason"]
    assert "control character U+0007" in by[7]["reason"]
    assert "control character U+202E" in by[8]["reason"]
    assert all(r["action"] == "skipped" for r in by.values())
    stored = wh.read(EVENTS).to_pylist()
    assert sorted((e["request_id"], e["kind"], e["value"]) for e in stored) == [
        ("r1", "sort_price", "asc"),
        ("r2", "leave", None),
        ("r2", "reupload", None),
        ("r2", "text_query", "红色 连衣裙 for kids"),
    ]
    kept = {(r["source"].rsplit("/", 1)[-1], r["line"]) for r in wh.read(REJECTS).to_pylist()}
    assert {("events.jsonl", n) for n in by} <= kept  # the rejects are kept in the warehouse
    # the same file again: nothing new, the duplicate found against the warehouse too
    again = import_logs(folder / "events.jsonl", wh)
    assert again.imported == {EVENTS: 0} and again.already_present == {EVENTS: 4}


def test_events_whose_request_is_already_in_the_warehouse(wh, tmp_path):
    import_logs(write_jsonl(tmp_path / "requests.jsonl", [request("r1")]), wh)
    path = write_jsonl(
        tmp_path / "events.jsonl",
        [event("r1", "open_details", "material"), event("r1", "open_details", "care", ts=0)],
    )
    report = import_logs(path, wh)
    assert report.imported == {EVENTS: 1}
    assert "outside 1990-2100" in rejects_by_line(report)[2]["reason"]
