"""The service over real HTTP: `revision serve --workers 2` against a real redis-server (the
daily cap holds across worker processes, events reach either worker, metrics add up, logs are
flushed at shutdown), and `ServiceClient`, the `Searcher` over HTTP, giving what the service
gives in-process, with the simulator driving it through the real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import serve_support as ss
from revision.catalog.schema import load_products
from revision.search._base import SearchRequest
from revision.serve.app import create_app
from revision.serve.client import ServiceClient, ServiceError
from revision.serve.service import RevisionService
from revision.settings import Settings
from revision.tables import REQUESTS
from revision.warehouse import Warehouse


@pytest.fixture(scope="module")
def base(built_warehouse, tmp_path_factory) -> Warehouse:
    return ss.servable_base(built_warehouse, tmp_path_factory)


@pytest.fixture(scope="module")
def photos(base) -> list[bytes]:
    paths = load_products(base)["image_path"].tolist()
    return [ss.photo_bytes(p) for p in paths[5:60:11]]


def _serve(wh: Warehouse, port: int, log, **env) -> subprocess.Popen:
    values = {
        "REVISION_HOME": str(wh.root),
        "REVISION_TRIGGER_THRESHOLD": "2.0",
        "REVISION_PLANNER_TIMEOUT_MS": "60000",
        "REVISION_TOOLS_TIMEOUT_MS": "60000",
        **env,
    }
    cli = [sys.executable, "-m", "revision.cli.main", "serve", "--port", str(port)]
    return subprocess.Popen(
        [*cli, "--workers", "2", "--log-level", "warning"],
        env={**os.environ, **values},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_daily_cap_holds_across_two_worker_processes_with_redis(base, photos, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    port = ss.free_port()
    url = f"http://127.0.0.1:{port}"
    with ss.redis_server(tmp_path) as redis_url, open(tmp_path / "server.log", "w") as log:
        server = _serve(wh, port, log, REVISION_REDIS_URL=redis_url, REVISION_DAILY_CAP="3")
        try:
            ServiceClient(url).wait_ready(180)
            with httpx.Client(base_url=url, timeout=120) as http:

                def post(
                    user: str, photo: bytes, rid: str | None = None, fresh: bool = False
                ) -> httpx.Response:
                    data = {"user_id": user, **({"request_id": rid} if rid else {})}
                    files = {"photo": ("p.jpg", photo, "image/jpeg")}
                    # a kept-alive connection stays with the worker that accepted it
                    headers = {"Connection": "close"} if fresh else {}
                    for _ in range(60):  # the second worker may still be loading: 503
                        r = http.post("/v1/search", data=data, files=files, headers=headers)
                        if r.status_code != 503:
                            return r
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                    return r

                # both workers serve: 16 concurrent requests of one user
                with ThreadPoolExecutor(8) as pool:
                    got = list(
                        pool.map(lambda i: post("capped", photos[i % len(photos)]), range(16))
                    )
                assert all(r.status_code == 200 for r in got), [r.text for r in got][:2]
                decisions = [r.json()["decision"] for r in got]
                assert sum(d["triggered"] for d in decisions) == 3  # never past the cap
                assert sum(d["capped"] for d in decisions) == 13
                workers = {r.headers["x-revision-worker"] for r in got}
                extra = 0
                while len(workers) < 2 and extra < 200:  # (the OS may favour one worker)
                    r = post(f"other{extra}", photos[0], fresh=True)
                    workers.add(r.headers["x-revision-worker"])
                    extra += 1
                assert len(workers) == 2, "only one worker answered"
                # an event reaches whichever worker: the request is known to both (Redis)
                served = [post(f"e{i}", photos[1], rid=f"ev-{i}") for i in range(6)]
                assert {r.headers["x-revision-worker"] for r in served} | workers == workers
                for r in served:
                    body = r.json()
                    click = {"request_id": body["request_id"], "kind": "click"}
                    click["product_id"] = body["results"][0]["product_id"]
                    e = http.post("/v1/events", json=click)
                    assert e.status_code == 200, e.text
                metrics = http.get("/metrics").text
                total = 16 + extra + 6
                assert f'revision_searches_total{{arm="revision"}} {float(total)}' in metrics
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # graceful: the workers flush their logs
            server.wait(timeout=120)
    assert server.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]
    requests = wh.read_pandas(REQUESTS)
    assert len(requests) == total and requests["triggered"].sum() == 3 + extra + 6


def test_the_client_gives_what_the_service_gives_in_process(base, photos, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    s = Settings(
        home=wh.root,
        serve_logs=False,
        trigger_threshold=2.0,
        planner_timeout_ms=60_000,
        tools_timeout_ms=60_000,
        trust_client_time=True,
    )
    with RevisionService.open(wh, s) as service, ss.uvicorn_thread(create_app(s, service)) as url:
        client = ServiceClient(url, send_time=True)
        for i, photo in enumerate(photos[:3]):
            local = service.respond(SearchRequest(image=photo, user_id=f"local{i}"))
            remote = client.respond(SearchRequest(image=photo, user_id=f"remote{i}", ts_ms=1))
            assert [h.product_id for h in remote.results] == [h.product_id for h in local.results]
            assert [h.score for h in remote.results] == pytest.approx(
                [h.score for h in local.results]
            )
            assert remote.decision.plan == local.decision.plan and remote.cues == local.cues
            assert remote.decision.cache == "hit"  # the second sight of the photo
        question = next(c for c in remote.cues if c.type == "question")
        refined = client.record_event(
            remote.request_id, "question_answer", value=question.options[1]
        )
        assert refined is not None and refined.request_id == remote.request_id
        with pytest.raises(ServiceError) as bad:
            client.record_event("nope", "click", product_id="x")
        assert bad.value.status == 404 and bad.value.field == "request_id"
        with pytest.raises(ServiceError, match="photo"):
            client.respond(SearchRequest(embedding=[0.0] * 4, user_id="u"))


def test_the_simulator_drives_the_real_server(base, tmp_path):
    from revision.sim.traffic import simulate
    from revision.sim.world import load_world

    world = load_world()
    low = world.photos.low_quality.model_copy(update={"photos": 4})
    world = world.model_copy(
        update={"photos": world.photos.model_copy(update={"products": 16, "low_quality": low})}
    )
    wh = ss.copy(base, tmp_path / "wh")
    s = Settings(home=wh.root, serve_logs=False, planner_timeout_ms=60_000)
    with RevisionService.open(wh, s) as service, ss.uvicorn_thread(create_app(s, service)) as url:
        summary = simulate(
            world, ServiceClient(url), Warehouse(tmp_path / "logs"), users=4, requests=24, seed=2,
            catalog=wh,
        )  # fmt: skip
    assert summary["requests"] == 24 and summary["path"] == "per_request"
