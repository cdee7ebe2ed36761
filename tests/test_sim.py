"""The simulated world: world files, intent predicates, the photo pool and traffic."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import read_only
from revision.catalog.importer import import_table
from revision.errors import ConfigError, InputError
from revision.mining.inputs import InputAssembler
from revision.search._base import Hit, SearchResponse, Stage
from revision.search.engine import SearchEngine, build_index
from revision.search.pipeline import SearchPipeline
from revision.sim.followups import TEMPLATES
from revision.sim.intents import (
    INTENTS,
    CatalogFacts,
    PredicateParams,
    UserState,
    product_rows,
    satisfied,
    satisfies,
)
from revision.sim.photos import MANIFEST_DIR, build_pool
from revision.sim.traffic import simulate
from revision.sim.truth import read_truth
from revision.sim.world import load_world, parse_world
from revision.tables import CLICKS, EVENT_KINDS, EVENTS, IMPRESSIONS, ORDERS, REQUESTS, TRUTH
from revision.warehouse import Warehouse

N_PRODUCTS = 300
REQUIRED = (
    "exact",
    "variant",
    "cheaper",
    "premium",
    "same_pattern",
    "other_department",
    "info",
    "preference",
)


def _small_world(**photos):
    world = load_world()
    low = world.photos.low_quality.model_copy(update={"photos": 12})
    spec = world.photos.model_copy(update={"products": 60, "low_quality": low, **photos})
    return world.model_copy(update={"photos": spec})


@pytest.fixture(scope="session")
def small_catalog(hm_dir, tmp_path_factory):
    """~300 real H&M products (whole designs, so colour variants exist) and their index."""
    articles = pd.read_csv(hm_dir / "articles.csv", dtype=str)
    sales = pd.read_csv(hm_dir / "transactions.csv", dtype={"article_id": str})
    price = sales.groupby("article_id")["price"].median()
    articles["price"] = articles["article_id"].map(price)
    codes = articles.groupby("product_code")["price"].apply(lambda p: p.notna().any())
    rng = np.random.default_rng(3)
    order = rng.permutation(np.array(codes.index))
    order = sorted(order, key=lambda c: not codes[c])  # designs with a known price first
    chosen, n = [], 0
    for code in order[::2] + order[1::2]:
        chosen.append(code)
        n += int((articles["product_code"] == code).sum())
        if n >= N_PRODUCTS:
            break
    subset = articles[articles["product_code"].isin(chosen)].copy()
    subset["image"] = [f"images/{a[:3]}/{a}.jpg" for a in subset["article_id"]]
    root = tmp_path_factory.mktemp("sim_catalog")
    subset.to_csv(root / "articles.csv", index=False)
    wh = Warehouse(root / "warehouse")
    mapping = {
        "id": "article_id",
        "title": "prod_name",
        "description": "detail_desc",
        "category": "product_type_name",
        "colour": "colour_group_name",
        "pattern": "graphical_appearance_name",
        "department": "department_name",
        "index_group": "index_group_name",
        "price": "price",
        "variant_group": "product_code",
        "image": "image",
    }
    import_table(root / "articles.csv", mapping, wh, images=hm_dir)
    build_index(wh, kinds=("hnsw",))
    engine = SearchEngine.open(wh)
    world = _small_world()
    rows = product_rows(engine.products.loc[engine.index.ids_])
    pool = build_pool(world, wh, rows, engine.encoder)
    read_only("small_catalog", wh)
    return {"wh": wh, "engine": engine, "world": world, "pool": pool, "rows": rows}


def _run(cat, tmp_path, name="w", pipeline=None, **kwargs):
    wh = Warehouse(tmp_path / name)
    args = {"users": 200, "days": 1, "requests": 1500, "seed": 5, **kwargs}
    searcher = pipeline or SearchPipeline(cat["engine"])
    summary = simulate(cat["world"], searcher, wh, pool=cat["pool"], catalog=cat["wh"], **args)
    return wh, summary


# -- world files -------------------------------------------------------------------------------


def test_default_world_has_every_intent_and_loads_from_a_file(tmp_path):
    world = load_world()
    assert set(REQUIRED) <= set(world.intents.enabled())
    assert set(world.intents.enabled()) <= set(INTENTS)
    copy = tmp_path / "w.yaml"
    from revision.sim.world import default_world_path

    copy.write_text(default_world_path().read_text())
    assert load_world(copy) == world


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        (
            "intents:\n  cheaper: {prior: 1, min_discont: 0.2}\n",
            ["intents.cheaper.min_discont", "unknown key", "min_discount"],
        ),
        ("intents:\n  exact: {prior: 1}\nbots: {share: 1.5}\n", ["bots.share", "less than"]),
        (
            "intents:\n  exact: {prior: 1}\nphotos: {severity: {extreme: 1}}\n",
            ["photos.severity.extreme", "unknown name"],
        ),
        (
            "intents:\n  exact: {prior: 1, multipliers: {group: {shoes: 2}}}\n",
            ["unknown group 'shoes'", "category_groups"],
        ),
        ("intents:\n  exact: {prior: 1}\ntraffic: {hourly: [1, 2]}\n", ["traffic.hourly", "24"]),
        ("intents:\n  exact: {prior: 1}\nbots: {interval_s: [5, 1]}\n", ["bots.interval_s"]),
        ("intents:\n  exact: {prior: 0}\n", ["at least one intent"]),
        ("intent:\n  exact: {prior: 1}\n", ["unknown key 'intent'", "intents"]),
        ("intents: [\n", ["not valid YAML"]),
    ],
)
def test_a_wrong_key_or_value_is_named(tmp_path, yaml_text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_world(path)
    assert str(path) in str(err.value)
    for part in named:
        assert part in str(err.value)


def test_missing_world_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_world(tmp_path / "nope.yaml")


def test_another_world_runs_without_code_changes(small_catalog, tmp_path):
    world = parse_world(
        {
            "name": "info-only",
            "photos": {"products": 60, "low_quality": {"rate": 0.0, "photos": 0}},
            "intents": {"exact": {"prior": 1.0}, "info": {"prior": 1.0, "click_exact_p": 0.0}},
            "bots": {"share": 0.0},
        }
    )
    wh = Warehouse(tmp_path / "w")
    summary = simulate(
        world,
        SearchPipeline(small_catalog["engine"]),
        wh,
        users=50,
        requests=400,
        seed=1,
        pool=small_catalog["pool"],
        catalog=small_catalog["wh"],
    )
    assert set(summary["per_intent"]) == {"exact", "info"}
    assert summary["bot_requests"] == 0
    assert summary["per_intent"]["info"]["no_click_ratio"] > 0.9  # nothing shows the details


# -- intent predicates on real H&M rows --------------------------------------------------------


def _find(rows, cond):
    return next(r for r in rows.values() if cond(r))


def test_price_predicates_on_real_rows(small_catalog):
    rows = small_catalog["rows"]
    groups: dict = {}
    for r in rows.values():
        if r["price"] is not None:
            groups.setdefault((r["category"], r["index_group"]), []).append(r)
    target, cheap = next(
        (max(g, key=lambda r: r["price"]), min(g, key=lambda r: r["price"]))
        for g in groups.values()
        if len(g) > 1 and min(r["price"] for r in g) <= 0.7 * max(r["price"] for r in g)
    )
    unpriced = {**cheap, "product_id": "x", "price": None}
    assert satisfies("cheaper", target, cheap)
    assert not satisfies("cheaper", target, unpriced)  # never invent a price
    assert not satisfies("cheaper", cheap, target)
    assert satisfies("premium", cheap, target)
    assert not satisfies("premium", {**cheap, "price": None}, target)
    other_type = _find(
        rows,
        lambda r: (
            r["category"] != target["category"]
            and r["price"] is not None
            and r["price"] < target["price"] / 2
        ),
    )
    assert not satisfies("cheaper", target, other_type)
    strict = PredicateParams(min_discount=0.99)
    assert not satisfies("cheaper", target, cheap, params=strict)


def test_item_predicates_on_real_rows(small_catalog):
    rows = small_catalog["rows"]
    designs: dict = {}
    for r in rows.values():
        designs.setdefault(r["variant_group"], []).append(r)
    a, b = next(g[:2] for g in designs.values() if len(g) > 1 and g[0]["colour"] != g[1]["colour"])
    assert satisfies("exact", a, a) and not satisfies("exact", a, b)
    assert satisfies("variant", a, b) and not satisfies("variant", a, a)
    assert not satisfies("similar", a, b)  # the same design is not "something like it"
    kid = _find(
        rows, lambda r: r["category"] == a["category"] and r["index_group"] != a["index_group"]
    )
    assert satisfies("other_department", a, kid)
    assert satisfies("other_department", a, kid, user=UserState(kid["index_group"]))
    assert not satisfies("other_department", a, kid, user=UserState("nobody"))
    # info: only a metadata cue on the same design with the wanted field
    cue = {"type": "metadata", "product_id": b["product_id"], "fields": {"material": "cotton"}}
    assert satisfies("info", a, b, [cue], UserState("material"))
    assert not satisfies("info", a, b, [cue], UserState("care"))
    assert not satisfies("info", a, b, [])
    assert not satisfies("info", a, kid, [{**cue, "product_id": kid["product_id"]}])
    # preference: asked, answered with the hidden colour, and a result has it
    ask = {"type": "question", "attribute": "colour", "options": [b["colour"], "Other"]}
    assert satisfies("preference", a, b, [ask], UserState(b["colour"]))
    assert not satisfies("preference", a, b, [], UserState(b["colour"]))
    assert not satisfies("preference", a, b, [ask], UserState("Turquoise"))
    with pytest.raises(ValueError, match="unknown intent"):
        satisfies("teleport", a, b)


def test_response_level_and_eligibility(small_catalog):
    rows = small_catalog["rows"]
    target = _find(rows, lambda r: r["price"] is None and r["description"])
    hits = [Hit(product_id=target["product_id"], score=0.9, rank=1)]
    response = SearchResponse(query="q", results=hits, relevance=0.9, latency_ms=1.0)
    assert satisfied("exact", target, response, products=rows)
    assert not satisfied("info", target, response, products=rows)
    response.cues = [
        {
            "type": "metadata",
            "product_id": target["product_id"],
            "fields": {"care": "Machine wash 40°"},
        }
    ]
    assert satisfied("info", target, response, products=rows)
    assert not satisfied("info", target, response, products=rows, user=UserState("material"))
    facts = CatalogFacts(rows)
    assert not facts.eligible("cheaper", target) and not facts.eligible("premium", target)
    assert facts.eligible("exact", target) and facts.eligible("info", target)
    assert facts.price_tier(target) == "none"


# -- traffic -----------------------------------------------------------------------------------


def test_logs_follow_the_schemas_and_truth_stays_apart(small_catalog, tmp_path):
    wh, summary = _run(small_catalog, tmp_path)
    for name in (REQUESTS, IMPRESSIONS, CLICKS, ORDERS):
        table = wh.read(name)
        assert table.schema.remove(table.schema.get_field_index("dt")) == name.full_schema
        assert wh.files(name)[0].parent.name == "dt=2025-06-02"
    requests = wh.read_pandas(REQUESTS)
    assert len(requests) == 1500 == summary["requests"]
    assert requests["request_id"].is_unique
    assert set(requests["variant"]) == {"baseline"}
    assert "intent" not in requests.columns
    truth = read_truth(wh)
    assert wh.read(TRUTH).schema.remove(wh.read(TRUTH).schema.get_field_index("dt")) == TRUTH.schema
    assert set(truth["request_id"]) == set(requests["request_id"])
    clicks = wh.read_pandas(CLICKS).merge(
        requests[["request_id", "ts"]], on="request_id", suffixes=("", "_req")
    )
    delay = (clicks["ts"] - clicks["ts_req"]).dt.total_seconds()
    assert (delay > 0).all() and delay.median() < 15
    orders = wh.read_pandas(ORDERS)
    prices = {pid: r["price"] for pid, r in small_catalog["rows"].items()}
    for row in orders.itertuples():
        assert (pd.isna(row.price) and prices[row.product_id] is None) or row.price == prices[
            row.product_id
        ]
    imp = wh.read_pandas(IMPRESSIONS)
    assert imp.groupby("request_id").size().max() == small_catalog["world"].top_k


def test_same_seed_same_logs_and_a_rerun_does_not_duplicate(small_catalog, tmp_path):
    wh, first = _run(small_catalog, tmp_path, requests=800)
    tables = {n: wh.read_pandas(n) for n in (REQUESTS, IMPRESSIONS, CLICKS, ORDERS, TRUTH)}
    _, again = _run(small_catalog, tmp_path, requests=800)  # same warehouse: overwrites
    for name, before in tables.items():
        pd.testing.assert_frame_equal(wh.read_pandas(name), before)
    other, _ = _run(small_catalog, tmp_path, name="other", requests=800, seed=6)
    assert not other.read_pandas(CLICKS).equals(tables[CLICKS])
    strip = ("simulate_s", "requests_per_s", "pool_s", "pool")
    assert {k: v for k, v in first.items() if k not in strip} == {
        k: v for k, v in again.items() if k not in strip
    }


def test_memoized_responses_equal_the_per_request_path(small_catalog, tmp_path):
    fast, s1 = _run(small_catalog, tmp_path, name="fast", requests=400)
    slow, s2 = _run(small_catalog, tmp_path, name="slow", requests=400, memoize=False)
    assert (s1["path"], s2["path"]) == ("memoized", "per_request")
    for name in (REQUESTS, IMPRESSIONS, CLICKS, ORDERS, TRUTH):
        pd.testing.assert_frame_equal(fast.read_pandas(name), slow.read_pandas(name))


def test_baseline_leaves_tens_of_percent_without_clicks_beyond_exact(small_catalog, tmp_path):
    _, s = _run(small_catalog, tmp_path, requests=3000, users=300)
    assert 0.2 <= s["no_click_ratio"] <= 0.75
    per = s["per_intent"]
    exact = per["exact"]["no_click_ratio"]
    assert exact < 0.45  # the photographed item is mostly found and clicked
    for name in ("info", "preference", "cheaper", "other_department"):
        assert per[name]["no_click_ratio"] > exact + 0.2, name
    no_clicks = {i: r["requests"] * r["no_click_ratio"] for i, r in per.items()}
    assert sum(v for i, v in no_clicks.items() if i != "exact") > 0.6 * sum(no_clicks.values())
    assert 0.03 <= s["bot_share"] <= 0.09 and s["low_quality_share"] > 0.02


def test_bots_are_fast_regular_and_hardly_click(small_catalog, tmp_path):
    wh, _ = _run(small_catalog, tmp_path, requests=4000, users=300)
    truth = read_truth(wh)
    requests = wh.read_pandas(REQUESTS).merge(truth[["request_id", "is_bot"]], on="request_id")
    stats = []
    for (_user, bot), g in requests.groupby(["user_id", "is_bot"]):
        gaps = g["ts"].sort_values().diff().dt.total_seconds().dropna()
        spread = (
            (gaps.quantile(0.75) - gaps.quantile(0.25)) / gaps.median() if len(gaps) > 2 else np.inf
        )  # robust to a bot's rare pauses
        stats.append((bot, len(g), gaps.median() if len(gaps) else np.inf, spread))
    bots = [s for s in stats if s[0]]
    humans = [s for s in stats if not s[0]]
    assert bots and all(n >= 30 and med < 10 and cv < 0.5 for _, n, med, cv in bots)
    assert max(n for _, n, _, _ in humans) < min(n for _, n, _, _ in bots)
    assert len({s[3] for s in bots}) == len(bots)  # not identical: each bot has its own rhythm
    clicked = truth.groupby("is_bot")["clicked"].mean()
    assert clicked[True] < 0.05 < clicked[False]
    assert truth.loc[truth["is_bot"], "intent"].isna().all()


def test_a_hook_with_metadata_cues_serves_info_requests(small_catalog, tmp_path):
    def show_details(ctx):
        for hit in ctx.results[:3]:
            ctx.cues.append(
                {
                    "type": "metadata",
                    "product_id": hit.product_id,
                    "fields": {"material": "cotton", "care": "wash at 40"},
                }
            )

    base = SearchPipeline(small_catalog["engine"])
    _, before = _run(small_catalog, tmp_path, name="a", pipeline=base, requests=600)
    _, after = _run(
        small_catalog,
        tmp_path,
        name="b",
        requests=600,
        pipeline=base.with_hooks({Stage.DISPLAY: [show_details]}),
        variant="tools",
    )
    assert after["path"] == "per_request"
    assert before["per_intent"]["info"]["satisfied_rate"] == 0.0
    assert after["per_intent"]["info"]["satisfied_rate"] > 0.5
    assert (
        after["per_intent"]["info"]["no_click_ratio"]
        < before["per_intent"]["info"]["no_click_ratio"] - 0.2
    )
    # same seed, same users: the other intents see the same photos and behave the same
    assert after["per_intent"]["exact"] == before["per_intent"]["exact"]


class _AskingSearcher:
    """Asks every user which colour they meant and, once answered, shows that colour."""

    deterministic = False

    def __init__(self, pipeline, rows):
        self.pipeline, self.rows, self.category = pipeline, rows, {}

    def respond(self, request):
        response = self.pipeline.respond(request)
        category = self.rows[response.results[0].product_id].get("category")
        self.category[request.request_id] = category
        colours = {r.get("colour") for r in self.rows.values() if r.get("category") == category}
        options = sorted(c for c in colours if c)
        response.cues.append({"type": "question", "attribute": "colour", "options": options})
        return response

    def answer(self, request_id, user_id, choice, ts_ms):
        category = self.category[request_id]
        pids = [
            pid
            for pid, r in self.rows.items()
            if r.get("category") == category and r.get("colour") == choice
        ][:10]
        hits = [Hit(pid, 1.0, rank=i + 1) for i, pid in enumerate(pids)]
        return SearchResponse(query=request_id, results=hits, relevance=1.0, latency_ms=0.0)


def test_an_answered_question_serves_preference_requests(small_catalog, tmp_path):
    """The user who taps their colour sees the refined list under the question they answered:
    the preference is served there (the question stays on screen), and they click."""
    base = SearchPipeline(small_catalog["engine"])
    _, before = _run(small_catalog, tmp_path, name="a", pipeline=base, requests=800)
    asking = _AskingSearcher(base, small_catalog["rows"])
    wh, after = _run(small_catalog, tmp_path, name="b", pipeline=asking, requests=800)
    answers = wh.read_pandas(EVENTS)
    assert (answers["kind"] == "question_answer").sum() > 0
    pref_before, pref_after = before["per_intent"]["preference"], after["per_intent"]["preference"]
    assert pref_before["satisfied_rate"] == 0.0
    assert pref_after["satisfied_rate"] > 0.3
    assert pref_after["no_click_ratio"] < pref_before["no_click_ratio"] - 0.1


def test_empty_days_are_reported_and_written_empty(small_catalog, tmp_path):
    wh, s = _run(small_catalog, tmp_path, requests=0, days=2)
    assert s["empty_days"] == ["2025-06-02", "2025-06-03"] and s["requests"] == 0
    assert s["no_click_ratio"] is None
    assert wh.read(REQUESTS).num_rows == 0
    _, s = _run(small_catalog, tmp_path, name="one", requests=1, days=3)
    assert len(s["empty_days"]) == 2 and s["requests"] == 1


def test_bad_arguments_are_named(small_catalog, tmp_path):
    for kwargs, named in [
        ({"days": 0}, "--days"),
        ({"requests": -1}, "--requests"),
        ({"start_date": "June"}, "--start-date"),
        ({"users": 0}, "--users"),
        ({"variant": "a/b"}, "variant"),
    ]:
        with pytest.raises(InputError, match=named):
            _run(small_catalog, tmp_path, requests=kwargs.pop("requests", 50), **kwargs)


def test_pool_build_resumes_and_reuses(small_catalog, tmp_path):
    cat = small_catalog
    wh = Warehouse(tmp_path / "copy")  # the shared catalog warehouse stays as it is
    shutil.copytree(cat["wh"].root, wh.root)
    again = build_pool(cat["world"], wh, cat["rows"], cat["engine"].encoder)
    assert again.build["built"] == 0
    assert again.hashes == cat["pool"].hashes
    np.testing.assert_array_equal(again.vectors, cat["pool"].vectors)
    shards = sorted(wh.artifact_dir(*MANIFEST_DIR).glob("part-*.parquet"))
    shards[0].unlink()  # as if killed before that chunk finished
    resumed = build_pool(cat["world"], wh, cat["rows"], cat["engine"].encoder)
    assert 0 < resumed.build["built"] < len(resumed)
    assert resumed.hashes == cat["pool"].hashes
    assert set(cat["pool"].kinds) >= {"mild", "medium"}
    assert all(p.endswith(".jpg") and "artifacts/sim/photos" in p for p in resumed.images)


def test_a_copied_warehouse_still_finds_its_simulated_photos(small_catalog, tmp_path):
    """Pool photos are logged relative to the warehouse; catalog photos outside stay absolute."""
    moved = Warehouse(tmp_path / "moved")
    shutil.copytree(small_catalog["wh"].root, moved.root)
    engine = SearchEngine.open(moved)
    summary = simulate(
        small_catalog["world"], SearchPipeline(engine), moved, users=40, requests=300, seed=9
    )
    assert summary["pool"]["built"] == 0  # the copied pool is found, not rebuilt
    requests = moved.read_pandas(REQUESTS)
    pooled = requests[requests["image"].str.startswith("artifacts/sim/photos/")]
    catalog = requests[~requests.index.isin(pooled.index)]
    assert len(pooled) > 100 and len(catalog) > 0
    assert all(Path(p).is_absolute() and Path(p).exists() for p in catalog["image"])
    found = InputAssembler(moved, REQUESTS, pooled["request_id"].tolist()).images
    assert {Path(found[r][0]).parent for r in pooled["request_id"]} == {
        moved.root / "artifacts" / "sim" / "photos"
    }


def test_cli_simulate_prints_a_summary(small_catalog, tmp_path):
    from revision.cli.main import app

    wh = Warehouse(tmp_path / "copy")  # simulate writes logs: never into the shared catalog
    shutil.copytree(small_catalog["wh"].root, wh.root)
    path = tmp_path / "world.yaml"
    world = small_catalog["world"]
    import yaml

    path.write_text(yaml.safe_dump(world.model_dump(mode="json")))
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--warehouse",
            str(wh.root),
            "--world",
            str(path),
            "--users",
            "50",
            "--requests",
            "300",
            "--seed",
            "2",
            "--start-date",
            "2025-07-01",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout)
    assert summary["requests"] == 300 and summary["pool"]["built"] == 0
    text = CliRunner().invoke(
        app,
        [
            "simulate",
            "--warehouse",
            str(wh.root),
            "--world",
            str(path),
            "--requests",
            "200",
            "--start-date",
            "2025-07-01",
        ],
    )
    assert text.exit_code == 0 and "no-click ratio" in text.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("intents: {exact: {prior: 1, purchse_p: 0}}\n")
    result = CliRunner().invoke(app, ["simulate", "--world", str(bad)])
    assert isinstance(result.exception, ConfigError)


# -- follow-up events ----------------------------------------------------------------------------

FOLLOW_UPS = 3000  # requests of the default world's follow-up run


def _with_languages(world, languages: dict[str, float]):
    text = world.followups.text.model_copy(update={"languages": languages})
    followups = world.followups.model_copy(update={"text": text})
    return world.model_copy(update={"followups": followups})


@pytest.fixture(scope="module")
def followup_logs(small_catalog, tmp_path_factory):
    """The default world's follow-ups: requests, events (with their request's time), truth."""
    wh, _ = _run(
        small_catalog, tmp_path_factory.mktemp("followups"), requests=FOLLOW_UPS, users=300
    )
    requests = wh.read_pandas(REQUESTS, columns=["request_id", "ts"])
    events = wh.read_pandas(EVENTS).merge(
        requests.rename(columns={"ts": "request_ts"}), on="request_id", how="left"
    )
    clicks = wh.read_pandas(CLICKS).merge(requests, on="request_id", suffixes=("", "_req"))
    first = (clicks["ts"] - clicks["ts_req"]).dt.total_seconds().groupby(clicks["request_id"])
    clicked30 = set(first.min()[first.min() <= 30].index)
    truth = read_truth(wh).set_index("request_id")
    return {"requests": requests, "events": events, "truth": truth, "clicked30": clicked30}


def _text_queries(events) -> list[str]:
    return events.loc[events["kind"] == "text_query", "value"].tolist()


def test_a_third_of_human_no_click_requests_follow_up(followup_logs):
    truth, events = followup_logs["truth"], followup_logs["events"]
    humans = truth.index[~truth["is_bot"]]
    no_click = [r for r in humans if r not in followup_logs["clicked30"]]
    followed = set(events.loc[~events["kind"].isin(["leave", "question_answer"]), "request_id"])
    share = sum(r in followed for r in no_click) / len(no_click)
    assert len(no_click) > 600 and 0.25 <= share <= 0.42, share
    # only people who found nothing follow up; bots never do
    assert followed <= set(no_click)
    assert len(set(events.loc[events["kind"] == "leave", "request_id"])) > 0.1 * len(no_click)
    assert set(events["kind"]) <= set(EVENT_KINDS)


def test_events_never_precede_their_request(followup_logs):
    events = followup_logs["events"]
    assert len(events) > 300 and events["request_ts"].notna().all()
    assert (events["ts"] >= events["request_ts"]).all()
    by_request = events.sort_values(["request_id", "ts"]).groupby("request_id")
    assert all(g["ts"].is_monotonic_increasing for _, g in by_request)


def test_text_queries_name_the_products_values_and_are_sometimes_misspelt(
    followup_logs, small_catalog
):
    """Real text to read: words from the photographed product and the templates, with one word
    now and then misspelt (a word neither the catalog nor the templates use)."""
    events, truth, rows = followup_logs["events"], followup_logs["truth"], small_catalog["rows"]
    texts = events[events["kind"] == "text_query"]
    assert len(texts) > 100 and texts["value"].str.len().max() <= 80
    vocabulary = set()
    for row in rows.values():
        for field in ("category", "colour", "pattern", "index_group", "title"):
            vocabulary.update(re.findall(r"[a-z]+", str(row.get(field) or "").casefold()))
    for by_language in TEMPLATES.values():
        for template in by_language.get("en", ()):
            vocabulary.update(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", template)))
    named = misspelt = 0
    for rid, text in zip(texts["request_id"], texts["value"], strict=True):
        target = rows[truth.at[rid, "target_product_id"]]
        values = [str(target.get(f) or "").casefold() for f in ("category", "colour", "pattern")]
        values.append(str(truth.at[rid, "preferred"] or "").casefold())
        words = re.findall(r"[a-z]+", text.casefold())
        named += any(v and v in text.casefold() for v in values) or any(
            w in str(target.get("title") or "").casefold() for w in words
        )
        misspelt += any(w not in vocabulary for w in words)
    assert named / len(texts) >= 0.8, named / len(texts)
    assert 0.05 <= misspelt / len(texts) <= 0.28, misspelt / len(texts)  # typo_p: 0.15
    assert texts["value"].nunique() > 0.3 * len(texts)  # varied, not one canned phrase


def test_chinese_templates_appear_when_the_world_asks_for_them(
    followup_logs, small_catalog, tmp_path
):
    cjk = re.compile(r"[\u4e00-\u9fff]")
    default = _text_queries(followup_logs["events"])  # en 0.8, zh 0.2
    share = sum(bool(cjk.search(t)) for t in default) / len(default)
    assert 0.08 <= share <= 0.35, share
    world = small_catalog["world"]
    for languages, low, high in (({"zh": 1.0}, 0.6, 1.0), ({"en": 1.0}, 0.0, 0.0)):
        small = {**small_catalog, "world": _with_languages(world, languages)}
        wh, _ = _run(small, tmp_path, name="-".join(languages), requests=1500)
        texts = _text_queries(wh.read_pandas(EVENTS))
        share = sum(bool(cjk.search(t)) for t in texts) / len(texts)
        assert len(texts) > 30 and low <= share <= high, (languages, share)


def test_a_world_without_followups_writes_no_events(small_catalog, tmp_path):
    quiet = {
        **small_catalog,
        "world": small_catalog["world"].model_copy(update={"followups": None}),
    }
    wh, summary = _run(quiet, tmp_path, requests=600)
    assert summary["requests"] == 600 and summary["no_click_ratio"] > 0.2
    assert not wh.exists(EVENTS) or wh.read(EVENTS).num_rows == 0
