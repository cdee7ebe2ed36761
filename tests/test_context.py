"""Request context from the logs (`revision.logs.context`), on a hand-made log whose answers
are known: history strictly before the request, the session, a request's own follow-ups, the
outcomes of tools, and the online `HistoryStore` agreeing with `build_context`."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from revision.logs.context import HistoryStore, build_context
from revision.tables import CLICKS, EVENTS, IMPRESSIONS, ORDERS, PRODUCTS, REQUESTS
from revision.warehouse import Warehouse

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PRODUCTS_ROWS = [  # Dress median price: 20
    ("p1", "Dress", "Ladieswear", 10.0),
    ("p2", "Dress", "Ladieswear", 30.0),
    ("p3", "Dress", "Baby/Children", 20.0),
    ("p4", "Trousers", "Menswear", 40.0),
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _write(wh: Warehouse, table, rows: list[dict], file: str = "part.parquet") -> None:
    by_day: dict[str, list[dict]] = {}
    for row in rows:  # impressions have no time of their own: their requests' day
        by_day.setdefault(row.get("ts", T0).strftime("%Y-%m-%d"), []).append(row)
    for day, items in by_day.items():
        data = pa.Table.from_pylist(
            items, schema=pa.schema([table.schema.field(k) for k in items[0]])
        )
        wh.write(table, data, {"dt": day}, file=file)


def _request(rid, user, seconds):
    return {"request_id": rid, "user_id": user, "ts": at(seconds), "image": f"{rid}.jpg"}


def make_logs(wh: Warehouse) -> None:
    """u1: r1 (clicked, ordered), r2 10 min later (no click; sorted, typed, left), r3 5 min
    after that (saw two tools' results, clicked one), r4 the next day. An order of r1 comes
    after r2 (it must not count for r2), another exactly at r3's time (not before it either).
    u2 shops in the same minutes: never part of u1's history."""
    wh.write(
        PRODUCTS,
        pa.Table.from_pylist(
            [
                {"product_id": p, "title": p, "category": c, "index_group": g, "price": price,
                 "image_path": f"/{p}.jpg"}
                for p, c, g, price in PRODUCTS_ROWS
            ],
            schema=PRODUCTS.schema,
        ),
    )  # fmt: skip
    _write(
        wh,
        REQUESTS,
        [
            _request("r1", "u1", 0),
            _request("r2", "u1", 600),
            _request("r3", "u1", 900),
            _request("r4", "u1", 86_400),
            _request("x1", "u2", 10),
            _request("x2", "u2", 620),
        ],
    )
    _write(
        wh,
        CLICKS,
        [
            {"request_id": "r1", "product_id": "p1", "ts": at(10)},
            {"request_id": "r3", "product_id": "p2", "ts": at(915)},
            {"request_id": "x1", "product_id": "p4", "ts": at(20)},
        ],
    )
    _write(
        wh,
        ORDERS,
        [
            {"request_id": "r1", "product_id": "p1", "ts": at(60), "price": 10.0},
            {"request_id": "r1", "product_id": "p2", "ts": at(700), "price": 30.0},  # after r2
            {"request_id": "r1", "product_id": "p3", "ts": at(900), "price": 20.0},  # at r3
            {"request_id": "x1", "product_id": "p4", "ts": at(30), "price": 40.0},
        ],
    )
    _write(
        wh,
        EVENTS,
        [  # stored out of order: the context puts them in time order
            {"request_id": "r2", "user_id": "u1", "ts": at(650), "kind": "leave", "value": None},
            {"request_id": "r2", "user_id": "u1", "ts": at(620), "kind": "sort_price",
             "value": "asc"},
            {"request_id": "r2", "user_id": "u1", "ts": at(640), "kind": "text_query",
             "value": "cheaper dress"},
            {"request_id": "x2", "user_id": "u2", "ts": at(630), "kind": "filter_department",
             "value": "Menswear"},
        ],
    )  # fmt: skip
    _write(
        wh,
        IMPRESSIONS,
        [
            {"request_id": rid, "product_id": pid, "rank": rank, "score": 0.9, "source": source,
             "tool": tool}
            for rid, pid, rank, source, tool in (
                ("r2", "p1", 1, "visual", None),
                ("r2", "p2", 2, "visual", None),
                ("r3", "p1", 1, "visual", None),
                ("r3", "p2", 2, "price_segmentation", 2),
                ("r3", "p3", 3, "variant_expansion", 3),
            )
        ],
    )  # fmt: skip


@pytest.fixture
def wh(isolated_warehouse) -> Warehouse:
    warehouse = Warehouse(isolated_warehouse)
    make_logs(warehouse)
    return warehouse


def test_history_holds_only_what_happened_strictly_before_the_request(wh):
    ctx = build_context(wh)
    assert set(ctx) == {"r1", "r2", "r3", "r4", "x1", "x2"}
    assert ctx["r1"].history["requests"] == 0 and ctx["r1"].groups == {}
    h2 = ctx["r2"].history
    assert (h2["requests"], h2["no_clicks"], h2["clicks"], h2["orders"]) == (1, 0, 1, 1)
    assert h2["order_level"] == pytest.approx(math.log(10 / 20))  # p1 against the Dress median
    assert h2["click_level"] == pytest.approx(math.log(10 / 20))
    assert ctx["r2"].groups == {"Ladieswear": 1}  # the order placed after r2 does not count
    assert ctx["r2"].past_events == {} and ctx["r2"].last_sort is None
    h3 = ctx["r3"].history
    assert (h3["requests"], h3["no_clicks"], h3["orders"]) == (2, 1, 2)  # not the one at r3
    assert h3["order_level"] == pytest.approx((math.log(0.5) + math.log(1.5)) / 2)
    assert ctx["r3"].groups == {"Ladieswear": 2}
    assert ctx["r3"].past_events == {
        "sort_price": 1,
        "sort_price=asc": 1,
        "text_query": 1,
        "leave": 1,
    }
    assert ctx["r3"].last_sort == "asc" and ctx["r3"].last_department is None
    h4 = ctx["r4"].history
    assert (h4["requests"], h4["clicks"], h4["orders"]) == (3, 2, 3)
    assert ctx["r4"].groups == {"Ladieswear": 2, "Baby/Children": 1}
    # u2's own activity, never u1's
    assert ctx["x2"].history["orders"] == 1 and ctx["x2"].groups == {"Menswear": 1}
    assert ctx["x2"].last_department is None  # its filter came after x2 was sent


def test_session_previous_and_next(wh):
    ctx = build_context(wh, ["r1", "r2", "r3", "r4"])
    assert set(ctx) == {"r1", "r2", "r3", "r4"}  # only the requested ones
    assert ctx["r1"].prev_gap_s is None and ctx["r1"].next_gap_s == 600
    assert (ctx["r2"].prev_gap_s, ctx["r2"].prev_no_click, ctx["r2"].next_gap_s) == (
        600,
        False,
        300,
    )
    assert (ctx["r3"].prev_gap_s, ctx["r3"].prev_no_click) == (300, True)
    assert ctx["r3"].next_gap_s is None  # the next request is a day later: another session
    assert ctx["r4"].prev_gap_s is None and ctx["r4"].next_gap_s is None


def test_own_events_in_time_order_and_tool_outcomes(wh):
    ctx = build_context(wh)
    assert ctx["r2"].events == [
        ("sort_price", "asc", 20.0),
        ("text_query", "cheaper dress", 40.0),
        ("leave", "", 50.0),
    ]
    assert ctx["r1"].events == [] and ctx["r3"].events == []
    assert ctx["r2"].shown_tools == [] and ctx["r2"].clicked_tools == []  # visual only
    assert ctx["r3"].shown_tools == ["price_segmentation", "variant_expansion"]
    assert ctx["r3"].clicked_tools == ["price_segmentation"]
    facts = ctx["r2"].as_facts()
    assert facts["followups"][1] == {
        "kind": "text_query",
        "value": "cheaper dress",
        "after_s": 40.0,
    }


def test_history_store_snapshot_equals_build_context_for_a_new_request(wh, tmp_path):
    """Online and offline read the same numbers: the store loaded from the logs, asked about
    a request arriving at `now`, equals `build_context` once that request is in the logs."""
    now = at(86_400 + 600)  # ten minutes after r4: same session
    store = HistoryStore.from_logs(wh)
    later = Warehouse(tmp_path / "later")
    shutil.copytree(wh.root, later.root)
    _write(later, REQUESTS, [_request("r5", "u1", 86_400 + 600)], file="new.parquet")
    offline = build_context(later, ["r5"])["r5"]
    online = store.snapshot("u1", int(now.timestamp() * 1000))
    assert online is not None and online.history["requests"] == 4
    for field in ("history", "groups", "past_events", "last_sort", "last_department"):
        assert getattr(online, field) == pytest.approx(getattr(offline, field)), field
    assert (online.prev_gap_s, online.prev_no_click) == (offline.prev_gap_s, offline.prev_no_click)
    assert store.snapshot("nobody", 0) is None
    # kept current as activity arrives: a click and an order, then the same comparison
    store.record_request("u1", "r5", int(now.timestamp() * 1000))
    store.record_click("u1", "r5", "p4")
    store.record_order("u1", "p4")
    store.record_event("u1", "filter_department", "Menswear")
    _write(
        later, CLICKS, [{"request_id": "r5", "product_id": "p4", "ts": at(87_010)}], "new.parquet"
    )
    _write(
        later,
        ORDERS,
        [{"request_id": "r5", "product_id": "p4", "ts": at(87_020), "price": 40.0}],
        "new.parquet",
    )
    _write(
        later,
        EVENTS,
        [{"request_id": "r5", "user_id": "u1", "ts": at(87_030), "kind": "filter_department",
          "value": "Menswear"}],
        "new.parquet",
    )  # fmt: skip
    _write(later, REQUESTS, [_request("r6", "u1", 87_300)], file="new2.parquet")
    offline = build_context(later, ["r6"])["r6"]
    online = store.snapshot("u1", int(at(87_300).timestamp() * 1000))
    for field in ("history", "groups", "past_events", "last_sort", "last_department"):
        assert getattr(online, field) == pytest.approx(getattr(offline, field)), field
    assert online.prev_gap_s == offline.prev_gap_s == 300
    assert online.prev_no_click is offline.prev_no_click is False
