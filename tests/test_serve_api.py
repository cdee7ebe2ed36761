"""The HTTP API in-process (FastAPI's TestClient over the real app and service): the happy path,
every bad input of the issue (a 4xx JSON error naming the field, and the service keeps
serving), API keys, rate limits, load shedding, CORS, readiness, metrics and the page's routes.
"""

from __future__ import annotations

import io
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import serve_support as ss
from revision.catalog.schema import load_products
from revision.search.engine import SearchEngine
from revision.serve.app import create_app
from revision.serve.logwriter import LogWriter
from revision.serve.service import RevisionService, load_planner
from revision.settings import Settings
from revision.tables import REQUESTS
from revision.tools._registry import load_tools


@pytest.fixture(scope="module")
def wh(built_warehouse, tmp_path_factory):
    base = ss.servable_base(built_warehouse, tmp_path_factory)
    return ss.copy(base, tmp_path_factory.mktemp("api") / "wh")


@pytest.fixture(scope="module")
def engine(wh):
    return SearchEngine.open(wh).warm_up()


@pytest.fixture(scope="module")
def photo(wh) -> bytes:
    products = load_products(wh)
    return ss.photo_bytes(products["image_path"].iloc[10])


def settings_for(wh, **overrides) -> Settings:
    values = dict(
        home=wh.root,
        trigger_threshold=2.0,
        planner_timeout_ms=60_000,
        tools_timeout_ms=60_000,
        log_flush_s=600,
    )
    return Settings(**{**values, **overrides})


def client_for(engine, planner="published", **overrides) -> TestClient:
    s = settings_for(engine.warehouse, **overrides)
    tools = load_tools(engine.warehouse)
    publication = None
    if planner == "published":
        planner, publication, _ = load_planner(engine.warehouse, s, tools, None)
    logs = LogWriter(engine.warehouse, batch_rows=s.log_batch_rows, flush_s=s.log_flush_s)
    service = RevisionService(
        engine, settings=s, planner=planner, tools=tools, publication=publication, logs=logs
    )
    return TestClient(create_app(s, service))


@pytest.fixture(scope="module")
def api(engine):
    with client_for(engine) as client:
        yield client
        client.app.state.holder._service.close()


def search(client, photo, user="u1", **fields):
    files = {"photo": ("photo.jpg", photo, "image/jpeg")} if photo is not None else None
    return client.post("/v1/search", files=files, data={"user_id": user, **fields})


def error_of(response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"status", "field", "message"}, body
    assert body["error"]["status"] == response.status_code
    return body["error"]


# -- the happy path -------------------------------------------------------------------------------


def test_health_ready_openapi(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    body = ready.json()
    assert body["planner"]["version"] and body["threshold"]["source"] == "settings"
    assert body["budget_ms"] == {"planner": 60_000, "tools": 60_000, "guard": 20.0}
    spec = api.get("/openapi.json").json()
    assert {"/v1/search", "/v1/events", "/readyz", "/metrics"} <= set(spec["paths"])
    form = spec["components"]["schemas"]
    assert form["SearchForm"]["properties"]["user_id"]["maxLength"] == 64
    assert form["SearchForm"]["properties"]["user_id"]["examples"] == ["u42"]
    assert "examples" in form["EventIn"]


def test_search_and_events_happy_path(api, photo):
    r = search(api, photo, request_id="happy-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "happy-1" and body["triggered"] and body["cache"] == "miss"
    assert body["fallback"] is None and body["applied"] == [8] and body["plan"].endswith("(8)")
    assert len(body["results"]) == 10 and len(body["baseline"]) == 10
    assert body["dag"]["nodes"][0]["component"] == "preference_question"
    assert body["decision"]["stages"]["total"] == body["latency_ms"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-revision-worker"]
    question = next(c for c in body["cues"] if c["type"] == "question")
    clicked = body["results"][0]["product_id"]
    e = api.post(
        "/v1/events", json={"request_id": "happy-1", "kind": "click", "product_id": clicked}
    )
    assert e.status_code == 200 and e.json() == {
        "accepted": True,
        "request_id": "happy-1",
        "kind": "click",
        "refined": None,
    }
    e = api.post(
        "/v1/events",
        json={"request_id": "happy-1", "kind": "question_answer", "value": question["options"][1]},
    )
    refined = e.json()["refined"]
    assert e.status_code == 200 and refined["request_id"] == "happy-1"
    assert [h["product_id"] for h in refined["results"]] != [
        h["product_id"] for h in body["results"]
    ]
    e = api.post("/v1/events", json={"request_id": "happy-1", "kind": "sort_price", "value": "asc"})
    assert e.status_code == 200
    again = search(api, photo, user="u2").json()
    assert again["cache"] == "hit"


# -- bad input: a 4xx naming the field, and the service keeps serving -----------------------------


def _bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")  # 100 MP in a few kB
    return out.getvalue()


def _jpeg(size=(640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "navy").save(out, "JPEG")
    return out.getvalue()


BAD_SEARCHES = {
    "no photo": (None, {}, 422, "photo"),
    "empty file": (b"", {}, 422, "photo"),
    "100-megapixel bomb": (_bomb(), {}, 413, "photo"),
    "PDF named .jpg": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj", {}, 415, "photo"),
    "truncated JPEG": (_jpeg()[:2000], {}, 422, "photo"),
    "50 MB upload": (b"\xff\xd8\xff" + b"\0" * (50 * 1024 * 1024), {}, 413, "photo"),
    "user_id of 10 kB": (_jpeg(), {"user_id": "u" * 10_000}, 422, "user_id"),
    "user_id with markup": (_jpeg(), {"user_id": "<script>"}, 422, "user_id"),
    "unknown field": (_jpeg(), {"colour_hint": "red"}, 422, "colour_hint"),
    "top_k out of range": (_jpeg(), {"top_k": "0"}, 422, "top_k"),
    "a client clock": (_jpeg(), {"ts_ms": "1750000000000"}, 422, "ts_ms"),
}


@pytest.mark.parametrize("case", list(BAD_SEARCHES))
def test_bad_searches_are_4xx_naming_the_field(api, photo, case):
    data, fields, status, field = BAD_SEARCHES[case]
    r = search(api, data, **{"user": fields.pop("user_id", "u1"), **fields})
    assert r.status_code == status, r.text[:500]
    err = error_of(r)
    assert err["field"] == field and err["message"]
    assert len(r.content) < 4000  # the offending input is not echoed back
    assert search(api, photo, user="after").status_code == 200  # still serving


BAD_EVENTS = {
    "unknown request": (
        {"request_id": "nope", "kind": "click", "product_id": "x"},
        404,
        "request_id",
    ),
    "unknown field": ({"request_id": "happy-2", "kind": "leave", "mood": "sad"}, 422, "mood"),
    "unknown kind": ({"request_id": "happy-2", "kind": "dance"}, 422, "kind"),
    "click without product": ({"request_id": "happy-2", "kind": "click"}, 422, "product_id"),
    "product not shown": (
        {"request_id": "happy-2", "kind": "order", "product_id": "0000000000"},
        422,
        "product_id",
    ),
    "answer not an option": (
        {"request_id": "happy-2", "kind": "question_answer", "value": "Plaid"},
        422,
        "value",
    ),
    "value too long": (
        {"request_id": "happy-2", "kind": "text_query", "value": "x" * 500},
        422,
        "value",
    ),
    "another user": (
        {"request_id": "happy-2", "kind": "leave", "user_id": "mallory"},
        422,
        "user_id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS))
def test_bad_events_are_4xx_naming_the_field(api, photo, case):
    user = f"ev{list(BAD_EVENTS).index(case)}"  # a fresh user: under the daily cap
    assert search(api, photo, user=user, request_id="happy-2").status_code == 200
    body, status, field = BAD_EVENTS[case]
    r = api.post("/v1/events", json=body)
    assert r.status_code == status, r.text
    assert error_of(r)["field"] == field
    ok = api.post("/v1/events", json={"request_id": "happy-2", "kind": "leave"})
    assert ok.status_code == 200


def test_a_body_that_is_not_json_is_refused(api):
    r = api.post("/v1/events", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and error_of(r)


def test_no_client_string_reaches_a_path(api, photo, wh, tmp_path):
    files = {"photo": ("../../../../../../tmp/evil.jpg", photo, "image/jpeg")}
    r = api.post("/v1/search", files=files, data={"user_id": "u1", "request_id": "path-1"})
    assert r.status_code == 200
    api.app.state.holder.service.logs.flush()
    requests = wh.read_pandas(REQUESTS).set_index("request_id")
    image = requests.loc["path-1", "image"]
    assert image.startswith("artifacts/uploads/") and "evil" not in image
    assert not (wh.root.parent / "evil.jpg").exists()
    assert api.get("/static/..%2F..%2Fservice.py").status_code == 404
    assert api.get("/v1/products/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)


# -- access: keys, rate limits, shedding, CORS ----------------------------------------------------


def test_api_keys_when_set(engine, photo):
    with client_for(engine, api_keys=["k-123"]) as client:
        r = search(client, photo)
        assert r.status_code == 401 and error_of(r)["field"] == "X-API-Key"
        client.headers["X-API-Key"] = "wrong"
        assert search(client, photo).status_code == 401
        client.headers["X-API-Key"] = "k-123"
        assert search(client, photo).status_code == 200
        del client.headers["X-API-Key"]
        assert client.get("/readyz").status_code == 200  # probes need no key


def test_rate_limits_per_user_and_per_ip(engine, photo):
    with client_for(engine, rate_per_user=0.01) as client:  # one request, then 100 s to refill
        assert search(client, photo, user="greedy").status_code == 200
        r = search(client, photo, user="greedy")
        assert r.status_code == 429 and error_of(r)["field"] == "user_id"
        assert int(r.headers["Retry-After"]) >= 1
        assert search(client, photo, user="patient").status_code == 200
    with client_for(engine, rate_per_ip=0.01) as client:
        assert search(client, photo, user="a").status_code == 200
        r = search(client, photo, user="b")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        metrics = client.get("/metrics").text
        assert 'revision_shed_total{reason="rate_ip"} 1.0' in metrics


def test_load_shedding_beyond_max_in_flight(engine, photo):
    s = settings_for(engine.warehouse)
    gate = ss.Gate(load_planner(engine.warehouse, s, load_tools(engine.warehouse), None)[0])
    with client_for(engine, planner=gate, max_in_flight=1) as client:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(search(client, photo, user="a")))
        worker.start()
        assert gate.entered.wait(60)  # the first request is in flight, held in the planner
        r = search(client, photo, user="b")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "overloaded" in error_of(r)["message"]
        gate.release.set()
        worker.join(60)
        assert first[0].status_code == 200
        assert search(client, photo, user="c").status_code == 200  # and back to normal


def test_cors_is_off_by_default_and_on_for_listed_origins(api, engine):
    origin = {"Origin": "https://shop.example"}
    assert "access-control-allow-origin" not in api.get("/healthz", headers=origin).headers
    with client_for(engine, cors_origins=["https://shop.example"]) as client:
        r = client.options(
            "/v1/search", headers={**origin, "Access-Control-Request-Method": "POST"}
        )
        assert r.headers["access-control-allow-origin"] == "https://shop.example"


# -- readiness ------------------------------------------------------------------------------------


def test_ready_only_once_loaded(wh, photo, monkeypatch):
    release = threading.Event()
    real_open = RevisionService.open

    def slow_open(*args, **kwargs):
        release.wait(120)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(RevisionService, "open", slow_open)
    s = settings_for(wh, serve_logs=False)
    with TestClient(create_app(s)) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = search(client, photo)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        release.set()
        assert client.app.state.holder.wait(120)
        assert client.get("/readyz").status_code == 200
        assert search(client, photo).status_code == 200


def test_not_ready_without_a_published_planner(wh, tmp_path):
    bare = ss.copy(wh, tmp_path / "bare")
    (bare.root / "artifacts" / "published" / "current.json").unlink()
    s = settings_for(bare, serve_logs=False)
    with TestClient(create_app(s)) as client:
        assert client.app.state.holder.wait(120)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "no planner"
        assert "revision planner publish" in r.json()["planner"]["error"]


# -- metrics and the page's routes ----------------------------------------------------------------


def test_metrics_count_searches_stages_trigger_cache_fallbacks(api, photo):
    for user in ("m1", "m2"):
        assert search(api, photo, user=user).status_code == 200
    text = api.get("/metrics").text
    for line in (
        'revision_searches_total{arm="revision"}',
        'revision_triggered_total{arm="revision"}',
        'revision_cache_lookups_total{result="hit"}',
        'revision_stage_seconds_bucket{le="0.1",stage="total"}',
        'revision_http_requests_total{route="/v1/search",status="200"}',
        "revision_in_flight",
    ):
        assert line in text, line


def test_page_and_its_assets(api):
    page = api.get("/")
    assert page.status_code == 200 and '<main id="columns">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = api.get("/static/page.js")
    assert js.status_code == 200 and "innerHTML" not in js.text.replace("never innerHTML", "")
    samples = api.get("/v1/samples").json()
    assert len(samples) == 12
    sample = api.get(f"/v1/samples/{samples[0]['id']}/photo")
    assert sample.status_code == 200 and sample.content[:3] == b"\xff\xd8\xff"
    thumb = api.get(f"/v1/products/{samples[1]['id']}/image")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).width <= 256
    assert api.get("/v1/products/0000000000/image").status_code == 404
    assert api.get("/v1/samples/0000000000/photo").status_code == 404
