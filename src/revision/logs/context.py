"""What the logs say around a request: the user's history, the session, follow-ups, outcomes.

A photo and its results rarely settle what a user wanted; the logs hold more, and a team would
use it. For each request of a batch, built with DuckDB in one pass over the log tables:

- **history** (strictly before the request: never its own or later activity): the user's
  requests, no-click requests, clicks and orders so far; the price level of what they bought
  and clicked (mean log ratio to the median price of the product's type in the catalog);
  the audiences (index groups) they bought for; their earlier follow-up events by kind, and
  the last price sort and department filter they used;
- **session**: seconds since the previous request and until the next one (a new session
  after `SESSION_GAP_S`), whether the previous one ended without a click;
- **follow-ups**: this request's own events (kind, value, seconds after it), in time order;
- **outcomes**: which tools placed results the user saw (impressions' `source`) and which of
  those were clicked; whether a question was answered.

The planner reads only the history and the previous request (what is known when a request
arrives); mining, which looks back at a finished request, reads all of it. Event values are
user text: carried as data, never interpreted here.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field

import pyarrow as pa

from revision.logs.no_click import DEFAULT_WINDOW, open_logs, scan
from revision.tables import (
    CLICKS,
    EVENT_KINDS,
    EVENTS,
    IMPRESSIONS,
    ORDERS,
    PRODUCTS,
    REQUESTS,
)
from revision.warehouse import Warehouse

SESSION_GAP_S = 30 * 60.0  # a longer pause starts a new session
# Follow-ups counted per value as well: which way a user sorts, which details they open.
VALUED_EVENTS = (
    ("sort_price", "asc"),
    ("sort_price", "desc"),
    ("open_details", "material"),
    ("open_details", "care"),
)
MAX_GROUPS = 8  # audiences tracked per user (the catalog's largest; the rest count as other)


@dataclass
class RequestContext:
    """Everything the logs say around one request (see the module docstring)."""

    request_id: str
    user_id: str = ""
    history: dict[str, float] = field(default_factory=dict)  # counts and levels so far
    groups: dict[str, int] = field(default_factory=dict)  # orders per audience so far
    past_events: dict[str, int] = field(default_factory=dict)  # follow-ups so far, by kind
    last_sort: str | None = None  # the last price sort the user chose before (asc | desc)
    last_department: str | None = None  # the last department filter before
    prev_gap_s: float | None = None  # since the previous request (None: first of session)
    prev_no_click: bool | None = None
    next_gap_s: float | None = None  # until the next request of the session
    events: list[tuple[str, str, float]] = field(default_factory=list)  # this request's
    shown_tools: list[str] = field(default_factory=list)  # tools that placed a seen result
    clicked_tools: list[str] = field(default_factory=list)  # of those, clicked
    answered: bool = False  # a question cue was answered

    def as_facts(self) -> dict:
        """A flat, JSON-friendly view (for prompts and inspection)."""
        return {
            "history": {k: round(v, 4) for k, v in self.history.items()},
            "bought_for": self.groups,
            "past_followups": self.past_events,
            "last_price_sort": self.last_sort,
            "last_department_filter": self.last_department,
            "session": {
                "seconds_since_previous": self.prev_gap_s,
                "previous_without_click": self.prev_no_click,
                "seconds_until_next": self.next_gap_s,
            },
            "followups": [
                {"kind": k, "value": v, "after_s": round(t, 1)} for k, v, t in self.events
            ],
            "tools_shown": self.shown_tools,
            "tools_clicked": self.clicked_tools,
        }


def build_context(
    warehouse: Warehouse,
    request_ids: list[str] | None = None,
    *,
    window: float = DEFAULT_WINDOW,
    threads: int | None = None,
) -> dict[str, RequestContext]:
    """Context for `request_ids` (all requests when None), in one DuckDB pass."""
    con, _ = open_logs(warehouse, window=window, threads=threads)
    try:
        return _build(con, warehouse, request_ids)
    finally:
        con.close()


def _groups(con, warehouse: Warehouse) -> list[str]:
    if not warehouse.exists(PRODUCTS):
        return []
    con.register("products", warehouse.read(PRODUCTS, columns=["index_group"]))
    rows = con.sql(
        f"""SELECT index_group FROM products WHERE index_group IS NOT NULL
            GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT {MAX_GROUPS}"""
    ).fetchall()
    return [r[0] for r in rows]


def _stream(con, warehouse: Warehouse) -> tuple[list[str], dict]:
    """Create table `stream`: every user's activity (requests, clicks, orders, follow-ups)
    in one time-ordered relation; returns the tracked audiences and which tables exist."""
    groups = _groups(con, warehouse)
    has = {t: warehouse.exists(t) for t in (ORDERS, CLICKS, EVENTS, IMPRESSIONS, PRODUCTS)}
    # product facts: price level against the type's median, audience
    if has[PRODUCTS]:
        con.register(
            "prod",
            warehouse.read(PRODUCTS, columns=["product_id", "category", "index_group", "price"]),
        )
        con.execute("""
            CREATE TEMP VIEW pf AS
            SELECT product_id, index_group,
                   ln(price / median(price) OVER (PARTITION BY category)) AS level
            FROM prod""")
    else:
        con.execute(
            "CREATE TEMP VIEW pf AS SELECT NULL::VARCHAR AS product_id, "
            "NULL::VARCHAR AS index_group, NULL::DOUBLE AS level WHERE false"
        )
    # one stream of a user's activity: requests, clicks, orders, follow-up events
    parts = [
        """SELECT user_id, epoch_ms(ts) AS ms, 0 AS tie, request_id, 'request' AS what,
                  NULL::VARCHAR AS value, NULL::DOUBLE AS level, NULL::VARCHAR AS grp,
                  NOT clicked AS no_click
           FROM reqc"""
    ]
    if has[CLICKS]:
        parts.append(f"""
           SELECT r.user_id, epoch_ms(CAST(c.ts AS TIMESTAMPTZ)), 1, c.request_id, 'click',
                  NULL, pf.level, pf.index_group, NULL
           FROM {scan(warehouse, CLICKS)} c JOIN reqc r USING (request_id)
           LEFT JOIN pf USING (product_id)""")
    if has[ORDERS]:
        parts.append(f"""
           SELECT r.user_id, epoch_ms(CAST(o.ts AS TIMESTAMPTZ)), 1, o.request_id, 'order',
                  NULL, pf.level, pf.index_group, NULL
           FROM {scan(warehouse, ORDERS)} o JOIN reqc r USING (request_id)
           LEFT JOIN pf USING (product_id)""")
    if has[EVENTS]:
        parts.append(f"""
           SELECT r.user_id, epoch_ms(CAST(e.ts AS TIMESTAMPTZ)), 1, e.request_id,
                  'event:' || e.kind, e.value, NULL, NULL, NULL
           FROM {scan(warehouse, EVENTS)} e JOIN reqc r USING (request_id)""")
    con.execute("CREATE TEMP TABLE stream AS " + " UNION ALL ".join(parts))
    return groups, has


def _build(con, warehouse: Warehouse, request_ids) -> dict[str, RequestContext]:
    groups, has = _stream(con, warehouse)
    if request_ids is not None:
        con.register("wanted", pa.table({"request_id": pa.array(request_ids, pa.string())}))
    before = (
        "(PARTITION BY user_id ORDER BY ms, tie ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
    )
    sums = [f"{expr} OVER w AS {name}" for name, expr in _aggregates(groups)]
    session = """
        ms - lag(ms) OVER (PARTITION BY user_id ORDER BY ms, request_id) AS prev_ms,
        lag(no_click) OVER (PARTITION BY user_id ORDER BY ms, request_id) AS prev_no_click,
        lead(ms) OVER (PARTITION BY user_id ORDER BY ms, request_id) - ms AS next_ms"""
    wanted = "AND request_id IN (SELECT request_id FROM wanted)" if request_ids is not None else ""
    con.execute(f"""
        CREATE TEMP TABLE hist AS
        SELECT * FROM (
            SELECT request_id, user_id, what, ms, no_click, {", ".join(sums)}
            FROM stream WINDOW w AS {before}
        ) WHERE what = 'request' {wanted}""")
    con.execute(f"""
        CREATE TEMP TABLE sess AS
        SELECT request_id, {session}
        FROM (SELECT * FROM stream WHERE what = 'request')""")
    out: dict[str, RequestContext] = {}
    cols = [d[0] for d in con.sql("SELECT * FROM hist LIMIT 0").description]
    for row in con.sql(
        "SELECT h.*, s.prev_ms, s.prev_no_click, s.next_ms FROM hist h JOIN sess s "
        "USING (request_id)"
    ).fetchall():
        r = dict(zip([*cols, "prev_ms", "prev_no_click", "next_ms"], row, strict=True))
        ctx = _history(RequestContext(request_id=r["request_id"], user_id=r["user_id"]), r, groups)
        gap = r["prev_ms"]
        if gap is not None and gap / 1000 <= SESSION_GAP_S:
            ctx.prev_gap_s, ctx.prev_no_click = gap / 1000, bool(r["prev_no_click"])
        nxt = r["next_ms"]
        if nxt is not None and nxt / 1000 <= SESSION_GAP_S:
            ctx.next_gap_s = nxt / 1000
        out[ctx.request_id] = ctx
    _own_events(con, warehouse, out, has[EVENTS])
    _outcomes(con, warehouse, out, has)
    return out


def _aggregates(groups: list[str]) -> list[tuple[str, str]]:
    """(column, aggregate over the activity stream): the history's definitions, used both as
    window functions (per request, what came before) and grouped (per user, everything)."""
    out = [
        ("requests", "count(*) FILTER (what = 'request')"),
        ("no_clicks", "count(*) FILTER (what = 'request' AND no_click)"),
        ("clicks", "count(*) FILTER (what = 'click')"),
        ("orders", "count(*) FILTER (what = 'order')"),
        ("order_level_sum", "sum(level) FILTER (what = 'order')"),
        ("order_priced", "count(level) FILTER (what = 'order')"),
        ("click_level_sum", "sum(level) FILTER (what = 'click')"),
        ("click_priced", "count(level) FILTER (what = 'click')"),
        ("last_sort", "arg_max(value, ms) FILTER (what = 'event:sort_price')"),
        ("last_dept", "arg_max(value, ms) FILTER (what = 'event:filter_department')"),
    ]
    out += [(f'"ev_{k}"', f"count(*) FILTER (what = 'event:{k}')") for k in EVENT_KINDS]
    out += [
        (f'"ev_{k}={v}"', f"count(*) FILTER (what = 'event:{k}' AND value = '{v}')")
        for k, v in VALUED_EVENTS
    ]
    quote = chr(39)
    out += [
        (
            f'"grp_{i}"',
            f"count(*) FILTER (what = 'order' AND grp = '{g.replace(quote, quote * 2)}')",
        )
        for i, g in enumerate(groups)
    ]
    return out


def _history(ctx: RequestContext, r: dict, groups: list[str]) -> RequestContext:
    """Fill the history part of `ctx` from a row of `_aggregates` columns."""
    ctx.history = {
        "requests": float(r["requests"] or 0),
        "no_clicks": float(r["no_clicks"] or 0),
        "clicks": float(r["clicks"] or 0),
        "orders": float(r["orders"] or 0),
        "order_level": _mean(r["order_level_sum"], r["order_priced"]),
        "order_priced": float(r["order_priced"] or 0),
        "click_level": _mean(r["click_level_sum"], r["click_priced"]),
        "click_priced": float(r["click_priced"] or 0),
    }
    ctx.groups = {g: int(r[f"grp_{i}"]) for i, g in enumerate(groups) if r[f"grp_{i}"]}
    ctx.past_events = {k: int(r[f"ev_{k}"]) for k in EVENT_KINDS if r[f"ev_{k}"]}
    for k, v in VALUED_EVENTS:
        if r[f"ev_{k}={v}"]:
            ctx.past_events[f"{k}={v}"] = int(r[f"ev_{k}={v}"])
    ctx.last_sort, ctx.last_department = r["last_sort"], r["last_dept"]
    return ctx


def _mean(total, n) -> float:
    return float(total) / float(n) if n else 0.0


def _own_events(con, warehouse, out: dict[str, RequestContext], has_events: bool) -> None:
    if not has_events:
        return
    rows = con.sql(f"""
        SELECT e.request_id, e.kind, e.value,
               (epoch_ms(CAST(e.ts AS TIMESTAMPTZ)) - epoch_ms(r.ts)) / 1000.0 AS after_s
        FROM {scan(warehouse, EVENTS)} e JOIN reqc r USING (request_id)
        ORDER BY e.request_id, after_s, e.kind""").fetchall()
    for rid, kind, value, after in rows:
        ctx = out.get(rid)
        if ctx is not None:
            ctx.events.append((kind, value or "", float(after)))
            ctx.answered |= kind == "question_answer"


def _outcomes(con, warehouse, out: dict[str, RequestContext], has: dict) -> None:
    if not has[IMPRESSIONS]:
        return
    imp = scan(warehouse, IMPRESSIONS)
    cols = {r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {imp}").fetchall()}
    if "source" not in cols:
        return  # logs without the source column: no tool outcomes to report
    clicked = (
        f"LEFT JOIN (SELECT DISTINCT request_id, product_id FROM {scan(warehouse, CLICKS)}) c "
        "USING (request_id, product_id)"
        if has[CLICKS]
        else "LEFT JOIN (SELECT NULL AS request_id, NULL AS product_id WHERE false) c "
        "USING (request_id, product_id)"
    )
    rows = con.sql(f"""
        SELECT i.request_id, i.source, bool_or(c.product_id IS NOT NULL)
        FROM {imp} i {clicked}
        WHERE i.source IS NOT NULL AND i.source <> 'visual'
        GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    for rid, source, was_clicked in rows:
        ctx = out.get(rid)
        if ctx is not None:
            ctx.shown_tools.append(source)
            if was_clicked:
                ctx.clicked_tools.append(source)


class HistoryStore:
    """Users' histories for the online service: loaded from the logs, then kept current as
    requests, clicks, orders and follow-ups arrive. `snapshot` gives what `build_context`
    would give for a request arriving now (history and previous request only), so the
    planner reads the same numbers online as in its training data. Per process: several
    workers each keep their own (a user's latest activity may be missing on another worker
    until the logs are reloaded)."""

    def __init__(self, histories: dict[str, RequestContext], products: dict[str, tuple]):
        self._users = histories
        self._products = products  # product_id -> (price level or None, audience)
        self._clicked: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_logs(cls, warehouse: Warehouse, *, window: float = DEFAULT_WINDOW) -> HistoryStore:
        products = _product_facts(warehouse)
        if not warehouse.exists(REQUESTS):
            return cls({}, products)
        con, _ = open_logs(warehouse, window=window)
        try:
            groups, _ = _stream(con, warehouse)
            cols = ", ".join(f"{expr} AS {name}" for name, expr in _aggregates(groups))
            query = f"""
                SELECT user_id, {cols},
                       max(ms) FILTER (what = 'request') AS last_ms,
                       arg_max(no_click, ms) FILTER (what = 'request') AS last_no_click
                FROM stream GROUP BY user_id"""
            names = [d[0] for d in con.sql(query + " LIMIT 0").description]
            users = {}
            for row in con.sql(query).fetchall():
                r = dict(zip(names, row, strict=True))
                ctx = _history(RequestContext("", r["user_id"]), r, groups)
                ctx.prev_gap_s, ctx.prev_no_click = r["last_ms"], r["last_no_click"]
                users[r["user_id"]] = ctx
        finally:
            con.close()
        return cls(users, products)

    def snapshot(self, user_id: str, now_ms: int) -> RequestContext | None:
        """The user's history as a request arriving at `now_ms` sees it (None: a new user)."""
        with self._lock:
            ctx = self._users.get(user_id)
            if ctx is None:
                return None
            out = RequestContext(
                "",
                user_id,
                history=dict(ctx.history),
                groups=dict(ctx.groups),
                past_events=dict(ctx.past_events),
                last_sort=ctx.last_sort,
                last_department=ctx.last_department,
            )
            last = ctx.prev_gap_s  # stored here: the last request's time, ms
        if last is not None and 0 <= (now_ms - last) / 1000 <= SESSION_GAP_S:
            out.prev_gap_s, out.prev_no_click = (now_ms - last) / 1000, bool(ctx.prev_no_click)
        return out

    def _user(self, user_id: str) -> RequestContext:
        ctx = self._users.get(user_id)
        if ctx is None:
            ctx = self._users[user_id] = RequestContext("", user_id)
        return ctx

    def record_request(self, user_id: str, request_id: str, ts_ms: int) -> None:
        with self._lock:
            ctx = self._user(user_id)
            h = ctx.history
            h["requests"] = h.get("requests", 0.0) + 1
            h["no_clicks"] = h.get("no_clicks", 0.0) + 1  # until a click says otherwise
            ctx.prev_gap_s, ctx.prev_no_click = ts_ms, True

    def record_click(self, user_id: str, request_id: str, product_id: str) -> None:
        with self._lock:
            ctx = self._user(user_id)
            h = ctx.history
            h["clicks"] = h.get("clicks", 0.0) + 1
            if request_id not in self._clicked:
                self._clicked.add(request_id)
                h["no_clicks"] = max(0.0, h.get("no_clicks", 0.0) - 1)
                ctx.prev_no_click = False
            self._add_level(h, "click", product_id)

    def record_order(self, user_id: str, product_id: str) -> None:
        with self._lock:
            ctx = self._user(user_id)
            h = ctx.history
            h["orders"] = h.get("orders", 0.0) + 1
            self._add_level(h, "order", product_id)
            group = self._products.get(product_id, (None, None))[1]
            if group:
                ctx.groups[group] = ctx.groups.get(group, 0) + 1

    def record_event(self, user_id: str, kind: str, value: str | None) -> None:
        with self._lock:
            ctx = self._user(user_id)
            ctx.past_events[kind] = ctx.past_events.get(kind, 0) + 1
            if (kind, value) in VALUED_EVENTS:
                key = f"{kind}={value}"
                ctx.past_events[key] = ctx.past_events.get(key, 0) + 1
            if kind == "sort_price":
                ctx.last_sort = value
            elif kind == "filter_department":
                ctx.last_department = value

    def _add_level(self, h: dict, what: str, product_id: str) -> None:
        level = self._products.get(product_id, (None, None))[0]
        if level is None:
            return
        n = h.get(f"{what}_priced", 0.0)
        h[f"{what}_level"] = (h.get(f"{what}_level", 0.0) * n + level) / (n + 1)
        h[f"{what}_priced"] = n + 1


def _product_facts(warehouse: Warehouse) -> dict[str, tuple]:
    """product_id -> (log price against its type's median, audience), as the stream has it."""
    if not warehouse.exists(PRODUCTS):
        return {}
    p = warehouse.read_pandas(PRODUCTS, columns=["product_id", "category", "index_group", "price"])
    median = p.groupby(p["category"].fillna(""))["price"].transform("median")
    level = (p["price"] / median).map(lambda x: math.log(x) if x and x > 0 else None)
    return {
        pid: (None if lv is None or lv != lv else float(lv), g if isinstance(g, str) else None)
        for pid, lv, g in zip(p["product_id"], level, p["index_group"], strict=True)
    }


def dumps(contexts: dict[str, RequestContext]) -> str:
    """JSON lines of contexts (for inspection and tests)."""
    return "\n".join(
        json.dumps({"request_id": c.request_id, **c.as_facts()}, ensure_ascii=False)
        for c in contexts.values()
    )
