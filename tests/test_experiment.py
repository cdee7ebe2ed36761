"""The A/B harness (`revision.experiment`) and the weekly pipeline runner (`revision.pipeline`).

Arms are assigned by a stable hash; the analysis is checked on synthetic logs whose effects are
known (written straight into a warehouse through the declared tables); the power formula
against the textbook two-proportion formula and a Monte Carlo of the test it sizes. A small real
experiment runs every arm through the service on the small catalog, and the weekly loop runs end
to end at tiny scale (baseline week, pipeline, A/B week), then the pipeline is rerun to show a
finished week is a no-op.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

import serve_support as ss
from revision.errors import InputError
from revision.experiment.analyze import analyze
from revision.experiment.arms import AllTools, Oracle, RandomPlan, assign
from revision.experiment.power import sample_size
from revision.planner.online import PlanRequest
from revision.tables import CLICKS, IMPRESSIONS, ORDERS, REQUESTS, TRUTH
from revision.warehouse import Warehouse

# -- arms ------------------------------------------------------------------------------------------

USERS = [f"user-{i}" for i in range(20_000)]


def test_assign_is_stable_per_user_and_ignores_other_users():
    arms = ("baseline", "revision", "oracle")
    first = [assign(u, arms, (1, 1, 1), salt="ab") for u in USERS[:500]]
    # the same answer again, and in another order (no state between calls)
    again = [assign(u, arms, (1, 1, 1), salt="ab") for u in reversed(USERS[:500])][::-1]
    assert first == again
    assert set(first) == set(arms)


@pytest.mark.parametrize(
    "weights", [(0.5, 0.5), (0.9, 0.1), (1, 1, 1), (2, 1, 1, 4), (0.2, 0.3, 0.5)]
)
def test_assign_shares_follow_the_weights(weights):
    arms = [f"arm{i}" for i in range(len(weights))]
    counts = pd.Series([assign(u, arms, weights, salt="s") for u in USERS]).value_counts()
    expected = np.asarray(weights, float) / sum(weights)
    shares = counts.reindex(arms, fill_value=0).to_numpy() / len(USERS)
    # binomial sd at 20k users is below 0.0036: 0.015 is over four of them
    np.testing.assert_allclose(shares, expected, atol=0.015)


def test_assign_salt_reshuffles_users_independently():
    arms = ("baseline", "revision")
    a = np.array([assign(u, arms, (1, 1), salt="exp-a") == "revision" for u in USERS])
    b = np.array([assign(u, arms, (1, 1), salt="exp-b") == "revision" for u in USERS])
    # about half the users move, and the new split is independent of the old one
    assert 0.45 < (a != b).mean() < 0.55
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    assert 0.48 < b.mean() < 0.52


def test_assign_needs_one_weight_per_arm():
    with pytest.raises(ValueError, match="one weight per arm"):
        assign("u1", ("baseline", "revision"), (1.0,))


@pytest.mark.parametrize(
    "arms, split, message",
    [
        (("baseline", "nope"), None, "unknown arm\\(s\\) nope; valid: baseline, revision"),
        (("revision", "oracle"), None, "must include baseline"),
        (("baseline", "oracle", "oracle"), None, "named twice"),
        (("baseline", "revision"), (1.0,), "one positive share per arm \\(2\\)"),
        (("baseline", "revision"), (1.0, 0.0), "one positive share per arm"),
    ],
)
def test_experiment_config_rejects_bad_arms_and_splits(arms, split, message):
    from revision.experiment.run import ExperimentConfig

    with pytest.raises(InputError, match=message):
        ExperimentConfig(arms=arms, split=split)
    assert ExperimentConfig(arms=("baseline", "oracle")).weights == (1.0, 1.0)
    assert ExperimentConfig(arms=("baseline", "oracle"), split=(3, 1)).weights == (3, 1)


def _plan_request(rid: str | None = None) -> PlanRequest:
    return PlanRequest(embedding=np.zeros(4, np.float32), results=(), request_id=rid)


def test_reference_planners():
    live = [7, 2, 5, 3]
    everything = AllTools(live, "digest").plan(_plan_request())
    assert everything.completion.tools == (2, 3, 5, 7)
    assert everything.completion.thinking == "always_all"

    random_plan = RandomPlan(live, "digest", mean_tools=1.5, seed=3)
    plans = [random_plan.tools(_plan_request()) for _ in range(4000)]
    assert {len(p) for p in plans} == {1, 2}
    assert all(len(set(p)) == len(p) and set(p) <= set(live) for p in plans)
    assert np.mean([len(p) for p in plans]) == pytest.approx(1.5, abs=0.05)
    # every live tool is drawn, about equally often
    drawn = pd.Series([t for p in plans for t in p]).value_counts(normalize=True)
    assert set(drawn.index) == set(live) and drawn.max() - drawn.min() < 0.05
    # never fewer than one tool, never more than there are
    assert all(len(RandomPlan(live, "d", 0.2).tools(_plan_request())) == 1 for _ in range(20))
    assert len(RandomPlan(live, "d", 9.0).tools(_plan_request())) == len(live)

    serves = {1: {"cheaper", "premium"}, 4: {"info"}, 6: {"info"}, 8: {"preference"}}
    titles = {1: "Cheaper or premium", 4: "Material details", 6: "Care instructions", 8: "Ask"}
    oracle = Oracle(serves, titles, "digest")
    oracle.reveal("r1", {"intent": "cheaper", "preferred": None})
    oracle.reveal("r2", {"intent": "info", "preferred": "care"})
    oracle.reveal("r3", {"intent": "info", "preferred": "size"})
    oracle.reveal("r4", {"intent": "exact", "preferred": None})
    assert oracle.tools(_plan_request("r1")) == [1]
    assert oracle.tools(_plan_request("r2")) == [6]  # the title names what the user wants
    assert oracle.tools(_plan_request("r3")) == [4]  # none does: the first that serves
    assert oracle.tools(_plan_request("r4")) == []  # no tool serves it: no tool
    # the truth is used once, and a request it never heard of gets nothing
    assert oracle.tools(_plan_request("r1")) == [] and oracle.hidden == {}
    assert oracle.tools(_plan_request(None)) == []


# -- analysis on synthetic logs --------------------------------------------------------------------

DAY0 = date(2025, 6, 2)
TRIGGER_P = 0.3
# arm -> (no-click probability of a triggered request, of any other request)
EFFECTS = {"baseline": (0.6, 0.5), "treat": (0.3, 0.5), "null": (0.6, 0.5)}
TRUE_LIFT = {"treat": 0.3 / 0.6 - 1, "null": 0.0}


def synthetic_logs(
    wh: Warehouse,
    effects: dict[str, tuple[float, float]],
    *,
    users: int | dict[str, int] = 300,
    per_user: int = 6,
    days: int = 2,
    seed: int = 0,
    bots: dict[str, int] | None = None,
    trigger_p: dict[str, float] | None = None,
    variant: bool = True,
) -> dict[str, pd.DataFrame]:
    """Write requests (with `variant` and `triggered`), impressions, clicks, orders and the
    truth for `users` human users per arm (and `bots` bots); returns the frames written. A
    request without a click in the window sometimes gets a late click (after 30 s), which must
    not count."""
    rng = np.random.default_rng(seed)
    req, imp, clk, ords, tru = [], [], [], [], []
    start = datetime(DAY0.year, DAY0.month, DAY0.day, tzinfo=UTC)
    for arm, (p_trig, p_rest) in effects.items():
        humans = users.get(arm, 0) if isinstance(users, dict) else users
        for u in range(humans + (bots or {}).get(arm, 0)):
            user, is_bot = f"{arm}-u{u}", u >= humans
            for k in range(per_user):
                rid = f"{user}-r{k}"
                ts = start + timedelta(days=k % days, milliseconds=int(rng.integers(0, 80_000_000)))
                triggered = bool(rng.random() < (trigger_p or {}).get(arm, TRIGGER_P))
                p = 1.0 if is_bot else (p_trig if triggered else p_rest)
                no_click = bool(rng.random() < p)
                req.append((rid, user, ts, f"photos/{rid}.jpg", arm, triggered, no_click))
                tru.append((rid, user, arm, is_bot, None if is_bot else "info", not no_click))
                imp.extend((rid, f"p{j}", j + 1) for j in range(4))
                if not no_click:
                    for _ in range(1 + int(rng.random() < 0.3)):
                        clk.append((rid, f"p{rng.integers(4)}", ts + timedelta(seconds=5)))
                    if rng.random() < 0.25:
                        ords.append((rid, "p0", ts + timedelta(minutes=3), 20.0))
                elif rng.random() < 0.2:  # too late: still a no-click request
                    clk.append((rid, "p1", ts + timedelta(seconds=90)))
    frames = {
        "requests": pd.DataFrame(
            req,
            columns=["request_id", "user_id", "ts", "image", "variant", "triggered", "no_click"],
        ),
        "impressions": pd.DataFrame(imp, columns=["request_id", "product_id", "rank"]),
        "clicks": pd.DataFrame(clk, columns=["request_id", "product_id", "ts"]),
        "orders": pd.DataFrame(ords, columns=["request_id", "product_id", "ts", "price"]),
        "truth": pd.DataFrame(
            tru, columns=["request_id", "user_id", "variant", "is_bot", "intent", "clicked"]
        ),
    }
    day_of = frames["requests"].set_index("request_id")["ts"].dt.date.astype(str)
    requests = frames["requests"].drop(columns=["no_click"])
    if not variant:
        requests = requests.drop(columns=["variant"])
    truth = frames["truth"].assign(ordered=False, satisfied=frames["truth"]["clicked"])
    for table, frame in (
        (REQUESTS, requests),
        (IMPRESSIONS, frames["impressions"].astype({"rank": "int32"})),
        (CLICKS, frames["clicks"]),
        (ORDERS, frames["orders"]),
        (TRUTH, truth),
    ):
        for dt, part in frame.groupby(frame["request_id"].map(day_of)):
            arrow = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
            schema = pa.schema([table.full_schema.field(n) for n in arrow.column_names])
            wh.write(table, arrow.cast(schema), {"dt": dt})
    return frames


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    wh = Warehouse(tmp_path_factory.mktemp("synthetic") / "warehouse")
    frames = synthetic_logs(wh, EFFECTS, bots={"treat": 20})
    return wh, frames


@pytest.fixture(scope="module")
def synthetic_analysis(synthetic):
    wh, _ = synthetic
    return analyze(wh, n_boot=1000, seed=1)


def test_analyze_counts_match_the_logs(synthetic, synthetic_analysis):
    _, frames = synthetic
    out = synthetic_analysis
    req, truth = frames["requests"], frames["truth"]
    humans = req[req["request_id"].isin(truth.loc[~truth["is_bot"], "request_id"])]
    assert out["arms"] == sorted(EFFECTS) and out["baseline"] == "baseline"
    assert out["requests"] == len(humans)  # the bots are left out
    assert out["trigger_share"] == pytest.approx(humans["triggered"].mean(), abs=1e-5)
    assert out["notes"] == []
    for arm in ("treat", "null"):
        for subset, part in (("all", humans), ("triggered", humans[humans["triggered"]])):
            block = out[subset][arm]
            for name in (arm, "baseline"):
                mine = part[part["variant"] == name]
                assert block[name]["requests"] == len(mine)
                assert block[name]["users"] == mine["user_id"].nunique()
                # the late clicks do not make a request clicked
                assert block[name]["no_click_ratio"] == pytest.approx(
                    mine["no_click"].mean(), abs=1e-5
                )
                clicks = frames["clicks"]["request_id"].isin(mine["request_id"]).sum()
                orders = frames["orders"]["request_id"].isin(mine["request_id"]).sum()
                assert block[name]["ctr"] == pytest.approx(clicks / (4 * len(mine)), abs=1e-5)
                assert block[name]["cvr"] == pytest.approx(orders / clicks, abs=1e-5)
                assert block[name]["gmv_per_request"] == pytest.approx(
                    20.0 * orders / len(mine), abs=1e-5
                )
    # one daily figure per day and arm, the mean of that day's requests
    day = humans["ts"].dt.date.astype(str)
    expected = humans.groupby([day, "variant"])["no_click"].mean()
    assert sorted(out["daily"]) == sorted(day.unique())
    for (d, arm), value in expected.items():
        assert out["daily"][d][arm] == pytest.approx(value, abs=1e-5)
    # the hidden intent breaks the trigger subset down (the truth exists)
    assert {k.split("|")[0] for k in out["per_intent_triggered"]} == {"info"}


def test_analyze_finds_a_known_effect_in_the_trigger_subset(synthetic_analysis):
    out = synthetic_analysis
    treat = out["triggered"]["treat"]["lift"]["no_click_ratio"]
    lo, hi = treat["ci95"]
    assert lo <= treat["lift"] <= hi
    assert lo <= TRUE_LIFT["treat"] <= hi, treat
    assert hi < 0 and treat["p"] < 0.05
    assert abs(treat["lift"] - TRUE_LIFT["treat"]) < 0.1
    # diluted over all requests (the arms differ only where triggered), but still there
    diluted = out["all"]["treat"]["lift"]["no_click_ratio"]
    assert treat["lift"] < diluted["lift"] < 0 and diluted["ci95"][1] < 0
    # fewer no-click requests means more clicks per impression
    assert out["triggered"]["treat"]["lift"]["ctr"]["lift"] > 0


def test_analyze_finds_no_effect_where_there_is_none(synthetic_analysis):
    for subset in ("triggered", "all"):
        null = synthetic_analysis[subset]["null"]["lift"]["no_click_ratio"]
        lo, hi = null["ci95"]
        assert lo <= 0 <= hi and lo <= null["lift"] <= hi, null
        assert null["p"] > 0.05
    # the interval is narrower where there are more requests
    tri = synthetic_analysis["triggered"]["null"]["lift"]["no_click_ratio"]["ci95"]
    every = synthetic_analysis["all"]["null"]["lift"]["no_click_ratio"]["ci95"]
    assert every[1] - every[0] < tri[1] - tri[0]


def test_analyze_bootstraps_over_users():
    """Requests of one user are not independent: the interval is computed over users. Here each
    user's six requests share one outcome, so the interval is about sqrt(6) times wider than
    when every request is its own user."""
    from revision.experiment.analyze import compare

    rng = np.random.default_rng(5)
    rows = []
    for arm in ("baseline", "null"):
        for u in range(400):
            no_click = float(rng.random() < 0.5)
            rows += [(arm, f"{arm}-{u}", no_click, 1.0, 1.0 - no_click, 4.0, 0.0, 0.0)] * 6
    frame = pd.DataFrame(
        rows,
        columns=[
            "arm",
            "user_id",
            "no_click",
            "requests",
            "clicks",
            "impressions",
            "orders",
            "gmv",
        ],
    )
    clustered = compare(frame, "null", "baseline", n_boot=1000, seed=2)
    independent = compare(
        frame.assign(user_id=[f"r{i}" for i in range(len(frame))]),
        "null",
        "baseline",
        n_boot=1000,
        seed=2,
    )
    assert clustered["null"]["users"] == 400 and independent["null"]["users"] == 2400
    lift = clustered["lift"]["no_click_ratio"]
    assert lift["lift"] == independent["lift"]["no_click_ratio"]["lift"]
    ratio = np.diff(lift["ci95"])[0] / np.diff(independent["lift"]["no_click_ratio"]["ci95"])[0]
    assert 1.9 < ratio < 3.1, ratio


# -- analysis: bad input ---------------------------------------------------------------------------

SMALL = {"baseline": (0.6, 0.5), "treat": (0.3, 0.5)}


def _small(tmp_path, effects=SMALL, **kwargs) -> Warehouse:
    wh = Warehouse(tmp_path / "warehouse")
    synthetic_logs(wh, effects, users=kwargs.pop("users", 20), **kwargs)
    return wh


def test_analyze_without_an_arm_column_names_it(tmp_path):
    wh = _small(tmp_path, variant=False)
    with pytest.raises(InputError, match="logs/requests has no `variant` column"):
        analyze(wh, n_boot=20)


def test_analyze_without_the_baseline_arm_names_it_and_the_arms(tmp_path):
    wh = _small(tmp_path, {"control": (0.6, 0.5), "treat": (0.3, 0.5)})
    with pytest.raises(
        InputError, match=r"baseline arm 'baseline'.*arms with requests: control, treat"
    ):
        analyze(wh, n_boot=20)
    assert analyze(wh, baseline="control", n_boot=20)["arms"] == ["control", "treat"]
    # a baseline served only to bots is no baseline
    bots = _small(tmp_path / "bots", users={"treat": 10}, bots={"baseline": 5})
    with pytest.raises(InputError, match="only bots' requests of the baseline arm 'baseline'"):
        analyze(bots, n_boot=20)


def test_analyze_an_arm_without_users_is_left_out_saying_why(tmp_path):
    # `ghost` served bots only: no human user to compare
    wh = _small(tmp_path, {**SMALL, "ghost": (0.5, 0.5)}, users={**dict.fromkeys(SMALL, 20)},
                bots={"ghost": 4})  # fmt: skip
    out = analyze(wh, n_boot=50)
    assert out["arms"] == ["baseline", "treat"] and set(out["all"]) == {"treat"}
    assert any("ghost" in n and "no human requests" in n for n in out["notes"]), out["notes"]
    # `quiet` has users, none of them triggered: figures for all requests, a note for the subset
    wh = _small(tmp_path / "q", {**SMALL, "quiet": (0.6, 0.5)}, trigger_p={"quiet": 0.0})
    out = analyze(wh, n_boot=50)
    assert set(out["all"]) == {"treat", "quiet"} and set(out["triggered"]) == {"treat"}
    assert out["all"]["quiet"]["quiet"]["users"] == 20
    assert any("quiet" in n and "no requests" in n for n in out["notes"]), out["notes"]


def test_analyze_days_without_traffic(tmp_path):
    wh = _small(tmp_path)  # 2025-06-02 and 03
    with pytest.raises(InputError) as err:
        analyze(wh, days=("2030-01-01", "2030-01-07"), n_boot=20)
    assert "no requests in logs/requests between 2030-01-01 and 2030-01-07" in str(err.value)
    assert "days logged: 2025-06-02 … 2025-06-03" in str(err.value)
    # a range that holds some traffic: the figures of the days there are, the others named
    out = analyze(wh, days=("2025-06-01", "2025-06-04"), n_boot=20)
    assert sorted(out["daily"]) == ["2025-06-02", "2025-06-03"]
    assert any("2025-06-01, 2025-06-04" in n for n in out["notes"]), out["notes"]
    one = analyze(wh, days=("2025-06-03", "2025-06-03"), n_boot=20)
    assert list(one["daily"]) == ["2025-06-03"] and one["notes"] == []
    assert one["requests"] < analyze(wh, n_boot=20)["requests"]
    with pytest.raises(InputError, match="expected YYYY-MM-DD"):
        analyze(wh, days=("June 2", "2025-06-03"))


def test_report_escapes_what_the_logs_say(tmp_path):
    """A team's own logs name the arms: an arm called like markup is shown as text."""
    from revision.experiment.report import write_report

    hostile = '<img src=x onerror="alert(1)">'
    wh = _small(tmp_path, {"baseline": (0.6, 0.5), hostile: (0.3, 0.5)})
    out = analyze(wh, n_boot=50)
    assert out["arms"] == sorted(["baseline", hostile])
    html = write_report(wh, out, title="A/B").read_text()
    assert wh.artifact("reports", "experiment.html").read_text() == html  # the default place
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert html.count("data:image/png;base64,") == 3


# -- power -----------------------------------------------------------------------------------------

Z_975, Z_80, Z_90 = 1.959964, 0.841621, 1.281552  # standard normal quantiles (tables)


def test_sample_size_worked_example():
    # the paper's no-click change on a 0.6 baseline: 0.6 -> 0.5166
    p0, p1 = 0.6, 0.6 * (1 - 0.139)
    by_hand = (Z_975 + Z_80) ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / (p0 - p1) ** 2
    assert sample_size(0.6, -0.139) == int(np.ceil(by_hand))
    # 0.2 -> 0.25 at 90% power and alpha 0.05
    p0, p1 = 0.2, 0.25
    by_hand = (Z_975 + Z_90) ** 2 * (p0 * (1 - p0) + p1 * (1 - p1)) / (p0 - p1) ** 2
    assert sample_size(0.2, 0.25, power=0.9) == int(np.ceil(by_hand))
    # clustered requests: the design effect scales it
    assert sample_size(0.2, 0.25, power=0.9, design=2.5) == int(np.ceil(2.5 * by_hand))


def test_sample_size_moves_the_right_way():
    lifts = [-0.05, -0.1, -0.2, -0.4]
    sizes = [sample_size(0.5, lift) for lift in lifts]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    # about quadratic in the effect: half the lift, about four times the requests
    assert 3.5 < sample_size(0.5, -0.05) / sample_size(0.5, -0.1) < 4.5
    # the same absolute change needs more requests as the rate nears 0.5 (more variance)
    near = [sample_size(p0, -0.05 / p0) for p0 in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert near == sorted(near) and len(set(near)) == len(near)
    # ... and the same on the other side of 0.5
    far = [sample_size(p0, -0.05 / p0) for p0 in (0.55, 0.7, 0.8, 0.9)]
    assert far == sorted(far, reverse=True)
    # a stricter test or more power costs requests
    assert sample_size(0.6, -0.139, alpha=0.01) > sample_size(0.6, -0.139)
    assert sample_size(0.6, -0.139, power=0.95) > sample_size(0.6, -0.139)
    assert sample_size(0.6, -0.139, design=1.7) > sample_size(0.6, -0.139)


@pytest.mark.parametrize(
    "p0, lift", [(0.0, 0.1), (1.0, -0.1), (0.6, 0.0), (0.6, 1.0), (0.5, -1.0), (-0.2, 0.1)]
)
def test_sample_size_rejects_what_is_not_a_change_of_a_proportion(p0, lift):
    with pytest.raises(ValueError, match="p0="):
        sample_size(p0, lift)


def test_sample_size_gives_the_power_it_promises():
    """Monte Carlo: two arms of `n` requests each, the two-sided two-proportion z-test at 5%
    rejects about 80% of the time when the lift is there, and about 5% when it is not."""
    rng = np.random.default_rng(0)
    p0, lift = 0.6, -0.139
    n = sample_size(p0, lift)
    reps = 20_000

    def rejects(p_a: float) -> float:
        a, b = rng.binomial(n, p0, reps) / n, rng.binomial(n, p_a, reps) / n
        se = np.sqrt(a * (1 - a) / n + b * (1 - b) / n)
        return float((np.abs(a - b) / se > Z_975).mean())

    assert rejects(p0 * (1 + lift)) == pytest.approx(0.8, abs=0.02)
    assert rejects(p0) == pytest.approx(0.05, abs=0.01)
    # half as many requests give clearly less power
    n //= 2
    assert rejects(p0 * (1 + lift)) < 0.6


# -- a real experiment through the service ---------------------------------------------------------

ALL_ARMS = ("baseline", "revision", "always_all", "random_plan", "oracle")


def small_world(path, products: int, low_photos: int):
    """The default world with a smaller photo pool, written to `path`."""
    from conftest import small_world as world_with

    world = world_with(products=products, low_photos=low_photos)
    path.write_text(yaml.safe_dump(world.model_dump()))
    return world, path


@pytest.fixture(scope="module")
def all_arms(built_warehouse, tmp_path_factory):
    """Two days of plain-search traffic (the service takes its trigger threshold from these
    logs), then a one-day experiment with every arm, through the service: (warehouse, world
    file, run summary, config). Read-only."""
    from conftest import read_only
    from revision.experiment.run import ExperimentConfig, run_experiment
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.settings import get_settings
    from revision.sim.traffic import simulate

    tmp = tmp_path_factory.mktemp("experiment")
    base = ss.servable_base(built_warehouse, tmp_path_factory, plan=ss.PLAN_PAGE)
    wh = ss.copy(base, tmp / "warehouse")
    world, path = small_world(tmp / "world.yaml", products=30, low_photos=4)
    simulate(world, SearchPipeline(SearchEngine.open(wh)), wh, users=60, days=2, requests=500)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVISION_HOME", str(tmp / "home"))
        # generous budgets: a busy machine must not turn the tools' output into fallbacks
        mp.setenv("REVISION_PLANNER_TIMEOUT_MS", "60000")
        mp.setenv("REVISION_TOOLS_TIMEOUT_MS", "60000")
        get_settings.cache_clear()
        try:
            config = ExperimentConfig(
                world=path, arms=ALL_ARMS, users=100, requests=700, days=1, seed=3, name="allarms"
            )
            run = run_experiment(wh, config)
        finally:
            get_settings.cache_clear()
    return read_only("all_arms", wh), path, run, config


def _logged(all_arms) -> pd.DataFrame:
    """The experiment's requests with their hidden truth and the plan's tools."""
    from revision.tools.grammar import parse_completion

    wh, _, run, _ = all_arms
    requests = wh.read_pandas(REQUESTS)
    requests = requests[requests["dt"].astype(str).between(*run["days"])]
    truth = wh.read_pandas(TRUTH, columns=["request_id", "intent", "preferred", "is_bot"])
    out = requests.merge(truth, on="request_id", how="left", validate="one_to_one")
    out["tools"] = [
        list(parse_completion(p).tools) if isinstance(p, str) else None for p in out["plan"]
    ]
    return out


def test_experiment_assigns_every_user_to_one_arm_by_the_hash(all_arms):
    _, _, run, config = all_arms
    logged = _logged(all_arms)
    assert run["days"][0] == run["days"][1] and run["simulation"]["requests"] == len(logged)
    arms = logged.groupby("user_id")["variant"].unique()
    assert (arms.map(len) == 1).all(), "a user was served by two arms"
    expected = {u: assign(u, config.arms, config.weights, config.name) for u in arms.index}
    assert {u: a[0] for u, a in arms.items()} == expected
    humans = logged[~logged["is_bot"]]
    per_arm = humans.groupby("variant")["user_id"].nunique()
    assert set(per_arm.index) == set(ALL_ARMS) and per_arm.min() >= 5, per_arm
    # every arm shares the same decision columns and the same threshold
    assert logged["threshold"].nunique() == 1 and logged["triggered"].notna().all()


def test_experiment_threshold_gives_about_the_trigger_share(all_arms):
    from revision.serve.trigger import TRIGGER_SHARE

    wh, _, run, _ = all_arms
    logged = _logged(all_arms)
    before = wh.read_pandas(REQUESTS)
    before = before[before["dt"].astype(str) < run["days"][0]]
    # the threshold is the TRIGGER_SHARE quantile of the relevance logged before the test
    threshold = np.quantile(before["relevance"], TRIGGER_SHARE)
    assert logged["threshold"].iloc[0] == pytest.approx(threshold, rel=1e-6)
    assert run["threshold"] == pytest.approx(threshold, rel=1e-6)
    below = logged["relevance"] < threshold
    assert ((logged["triggered"] | logged["capped"]) == below).all()
    assert not (logged["triggered"] & logged["capped"]).any()
    # a new day of the same world falls below it about as often
    assert below.mean() == pytest.approx(TRIGGER_SHARE, abs=0.07), below.mean()
    assert 0 < logged["triggered"].mean() <= below.mean()


def test_experiment_baseline_decides_but_never_shows(all_arms):
    logged = _logged(all_arms)
    base = logged[logged["variant"] == "baseline"]
    assert base["triggered"].sum() >= 5
    assert not base["shown"].fillna(False).any()
    assert all(len(a) == 0 for a in base["applied"] if a is not None)
    # it still asked the planner on triggered requests (the decision is logged in every arm)
    triggered = base[base["triggered"]]
    assert triggered["plan"].notna().all() and not triggered["fallback"].notna().any()
    # the acting arms do show their tools on triggered requests, and only there
    acting = logged[logged["variant"] != "baseline"]
    assert acting.loc[acting["shown"].fillna(False).astype(bool), "triggered"].all()
    assert acting.loc[acting["triggered"], "shown"].fillna(False).mean() > 0.5


def test_experiment_reference_arms_plan_as_documented(all_arms):
    from revision.eval.plans import tool_intents
    from revision.tools._registry import load_tools

    wh, *_ = all_arms
    tools = load_tools(wh)
    live = sorted(tools.live_indices())
    serves = tool_intents(tools)
    logged = _logged(all_arms)
    done = logged[logged["triggered"] & logged["fallback"].isna()]
    for arm in ALL_ARMS[1:]:
        assert (done["variant"] == arm).sum() >= 3, f"too few triggered requests in {arm}"

    every = done[done["variant"] == "always_all"]
    assert all(t == live for t in every["tools"])
    assert all(set(a) <= set(live) for a in every["applied"])

    random_plan = done[done["variant"] == "random_plan"]
    assert all(len(set(t)) == len(t) == 2 and set(t) <= set(live) for t in random_plan["tools"])

    revision = done[done["variant"] == "revision"]
    planned = {tools.get(i).component for t in revision["tools"] for i in t}
    assert planned == set(ss.PLAN_PAGE)  # the published planner's constant plan

    oracle = done[done["variant"] == "oracle"]
    servable = 0
    for row in oracle.itertuples():
        serving = {i for i, intents in serves.items() if row.intent in intents}
        if row.is_bot or not serving:
            assert row.tools == [], row  # nothing serves it (or no truth): no tool
        else:
            servable += 1
            assert len(row.tools) == 1 and row.tools[0] in serving, row
    assert servable >= 1


def test_experiment_analysis_and_report(all_arms, tmp_path):
    from revision.experiment.report import write_report

    wh, _, run, _ = all_arms
    out = analyze(wh, days=tuple(run["days"]), n_boot=200)
    assert out["arms"] == sorted(ALL_ARMS) and set(out["all"]) == set(ALL_ARMS) - {"baseline"}
    assert set(out["triggered"]) == set(ALL_ARMS) - {"baseline"}, out["notes"]
    humans = _logged(all_arms).query("not is_bot")
    assert out["requests"] == len(humans)
    assert out["trigger_share"] == pytest.approx(humans["triggered"].mean(), abs=1e-5)
    for arm, block in out["triggered"].items():
        assert block[arm]["requests"] == int(
            (humans["triggered"] & (humans["variant"] == arm)).sum()
        )
    # earlier traffic (the plain search's days) stays out of the experiment's figures
    assert list(out["daily"]) == [run["days"][0]]

    hostile = '<script>alert("x")</script> & <b>bold</b>'
    path = write_report(
        wh, out, tmp_path / "report.html", title=hostile, run={**run, "note": hostile}
    )
    html = path.read_text()
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(" in html and "&amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count("data:image/png;base64,") == 3  # lifts, daily, per intent
    for arm in ALL_ARMS:
        assert f"<td>{arm}</td>" in html
    assert "Trigger subset" in html and "All requests" in html
    assert not list(tmp_path.glob("*.tmp"))


# -- the weekly loop and the pipeline runner -------------------------------------------------------

LOOP = {"weeks": 2, "users": 150, "requests": 700, "seed": 4, "sft_epochs": 1, "grpo_steps": 0}


@pytest.fixture(scope="module")
def loop(built_warehouse, tmp_path_factory):
    """Two weeks of the loop on the small catalog (with attribute heads, which mining reads):
    (warehouse, report). Read-only."""
    from conftest import copy_with_heads, read_only
    from revision.experiment.loop import run_loop
    from revision.settings import get_settings

    tmp = tmp_path_factory.mktemp("loop")
    wh, _ = copy_with_heads(built_warehouse, tmp / "warehouse", augment=4, eval_queries=2, epochs=3)
    _, world = small_world(tmp / "world.yaml", products=80, low_photos=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVISION_HOME", str(tmp / "home"))
        mp.setenv("REVISION_PLANNER_TIMEOUT_MS", "60000")
        mp.setenv("REVISION_TOOLS_TIMEOUT_MS", "60000")
        get_settings.cache_clear()
        try:
            report = run_loop(wh, world=world, **LOOP)
        finally:
            get_settings.cache_clear()
    return read_only("loop", wh), report


LOOP_TABLES = ("mining/signals", "mining/errors", "clustering/assignments", "planner/samples")


def _rows(wh: Warehouse) -> dict[str, int]:
    return {t: wh.read(t).num_rows if wh.exists(t) else 0 for t in LOOP_TABLES}


def _files(root) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_loop_weeks_baseline_then_ab(loop):
    wh, report = loop
    week1, week2 = report["weeks"]
    first = date.fromisoformat(week1["days"][0])
    assert week1["days"] == [first.isoformat(), (first + timedelta(days=6)).isoformat()]
    assert week2["days"][0] == (first + timedelta(days=7)).isoformat()
    assert week1["arms"] == ["baseline"] and week2["arms"] == ["baseline", "revision"]
    requests = wh.read_pandas(REQUESTS)
    day = requests["dt"].astype(str)
    in1, in2 = day.between(*week1["days"]), day.between(*week2["days"])
    assert (in1 | in2).all()
    assert set(requests.loc[in1, "variant"]) == {"baseline"}
    assert set(requests.loc[in2, "variant"]) == {"baseline", "revision"}
    # the same users come back in week 2 (one traffic seed), split by the week's salt
    users2 = requests.loc[in2].groupby("user_id")["variant"].unique()
    assert (users2.map(len) == 1).all()
    salted = {u: assign(u, ("baseline", "revision"), (1, 1), "week2") for u in users2.index}
    assert {u: a[0] for u, a in users2.items()} == salted
    assert len(set(users2.index) & set(requests.loc[in1, "user_id"])) > 0.8 * len(users2)

    # week 1 has no A/B figures; week 2 has the trigger subset's lift, as `analyze` finds it
    assert "triggered_no_click" not in week1
    lift = week2["triggered_no_click"]
    assert lift["ci95"][0] <= lift["lift"] <= lift["ci95"][1] and 0 <= lift["p"] <= 1
    analysis = analyze(wh, days=tuple(week2["days"]), n_boot=500)
    assert lift == analysis["triggered"]["revision"]["lift"]["no_click_ratio"]
    assert week2["triggered_ctr"] == analysis["triggered"]["revision"]["lift"]["ctr"]
    assert week2["trigger_share"] == analysis["trigger_share"] > 0


def test_loop_cache_hit_rate_is_the_whole_weeks(loop):
    wh, report = loop
    week2 = report["weeks"][1]
    requests = wh.read_pandas(REQUESTS)
    mine = requests[
        requests["dt"].astype(str).between(*week2["days"]) & (requests["variant"] == "revision")
    ]
    looked = mine["cache"].dropna()
    assert len(looked) > 0
    assert week2["cache_hit_rate"] == pytest.approx((looked == "hit").mean(), abs=1e-4)


def test_loop_runs_the_pipeline_between_weeks_only(loop):
    from revision import toollist
    from revision.pipeline.stages import STAGES
    from revision.planner.publish import load_publication, manifest_path

    wh, report = loop
    week1, week2 = report["weeks"]
    as_of = week2["days"][0]  # week 1's pipeline runs on the day after it
    folder = wh.root / "artifacts" / "pipeline"
    assert sorted(p.name for p in folder.iterdir()) == [f"as_of={as_of}"]  # none after week 2
    records = {s: json.loads((folder / f"as_of={as_of}" / f"{s}.json").read_text()) for s in STAGES}
    assert all(r["stage"] == s and r["as_of"] == as_of for s, r in records.items())
    mine = records["mine"]["result"]
    assert mine["run"] == f"week-{as_of}" and mine["signals"] > 0
    assert mine["signals"] == wh.read("mining/signals").num_rows
    assert records["planner_data"]["result"]["samples"]["train"] > 0
    assert week1["published"] is True and records["publish"]["result"]["published"] is True
    assert week1["tool_match"] == records["evaluate"]["result"]["new"]["tool_match"]
    assert "pipeline_s" not in week2 and "published" not in week2
    # mining read week 1 only
    signals = wh.read_pandas("mining/signals", columns=["request_id"])
    requests = wh.read_pandas(REQUESTS, columns=["request_id", "dt"])
    days = requests.set_index("request_id").loc[signals["request_id"].unique(), "dt"].astype(str)
    assert days.between(*week1["days"]).all()

    # the planner it published is the one week 2's revision arm served
    assert manifest_path(wh) == wh.root / "artifacts" / "published" / "current.json"
    publication = load_publication(wh)
    assert publication.notes["as_of"] == as_of
    assert publication.version == records["publish"]["result"]["version"]
    assert publication.toollist_digest == toollist.load(wh).digest
    week2_logs = wh.read_pandas(REQUESTS)
    week2_logs = week2_logs[week2_logs["dt"].astype(str).between(*week2["days"])]
    revision = week2_logs[week2_logs["variant"] == "revision"]
    assert set(revision["planner_version"].dropna()) == {publication.version}
    assert set(revision["toollist_digest"].dropna()) == {publication.toollist_digest}
    assert (
        revision["triggered"].sum() > 0
        and revision.loc[revision["triggered"], "plan"].notna().all()
    )
    assert not week2_logs.loc[week2_logs["variant"] == "baseline", "shown"].fillna(False).any()


@pytest.fixture
def loop_copy(loop, tmp_path):
    wh, report = loop
    shutil.copytree(wh.root, tmp_path / "warehouse", symlinks=True)
    return Warehouse(tmp_path / "warehouse"), report["weeks"][1]["days"][0]


def test_rerunning_a_finished_week_is_a_no_op(loop_copy):
    from revision.pipeline.runner import run_pipeline
    from revision.pipeline.stages import STAGES

    wh, as_of = loop_copy
    folder = wh.root / "artifacts" / "pipeline" / f"as_of={as_of}"
    recorded = {s: json.loads((folder / f"{s}.json").read_text())["result"] for s in STAGES}
    rows, files = _rows(wh), _files(wh.root)
    assert rows["mining/signals"] > 0 and rows["planner/samples"] > 0
    again = run_pipeline(
        wh, as_of, window_days=7, sft_epochs=LOOP["sft_epochs"], grpo_steps=LOOP["grpo_steps"]
    )
    assert again["as_of"] == as_of and again["stages"] == recorded
    assert _rows(wh) == rows
    assert _files(wh.root) == files  # nothing written at all

    # a forced stage runs again, and only it
    gate = folder / "gate.json"
    before = gate.stat().st_mtime_ns
    forced = run_pipeline(wh, date.fromisoformat(as_of), stages=("gate",), force=("gate",))
    assert forced["stages"] == {"gate": recorded["gate"]}
    assert gate.stat().st_mtime_ns != before
    changed = {k for k, v in _files(wh.root).items() if files.get(k) != v}
    assert changed == {str(gate.relative_to(wh.root))}


def test_a_stage_rerun_after_a_crash_writes_no_row_twice(loop_copy):
    """Mining finished but its record was lost (the process died before writing it): the stage
    runs again, finds every batch committed and writes no signal twice."""
    from revision.pipeline.runner import run_pipeline

    wh, as_of = loop_copy
    folder = wh.root / "artifacts" / "pipeline" / f"as_of={as_of}"
    rows = _rows(wh)
    recorded = json.loads((folder / "mine.json").read_text())["result"]
    (folder / "mine.json").unlink()
    out = run_pipeline(wh, as_of, stages=("no_click", "mine"))
    assert (folder / "mine.json").exists()
    assert out["stages"]["mine"]["run"] == recorded["run"] == f"week-{as_of}"
    assert out["stages"]["mine"]["requests"] == recorded["requests"]
    assert _rows(wh) == rows


def test_a_rerun_stage_records_the_whole_run(loop_copy):
    from revision.pipeline.runner import run_pipeline

    wh, as_of = loop_copy
    folder = wh.root / "artifacts" / "pipeline" / f"as_of={as_of}"
    (folder / "mine.json").unlink()
    out = run_pipeline(wh, as_of, stages=("no_click", "mine"))
    assert out["stages"]["mine"]["signals"] == wh.read("mining/signals").num_rows


def test_pipeline_runner_rejects_bad_arguments(loop_copy):
    from revision.pipeline.runner import run_pipeline

    wh, as_of = loop_copy
    with pytest.raises(InputError, match="--as-of 'next monday': expected YYYY-MM-DD"):
        run_pipeline(wh, "next monday")
    with pytest.raises(InputError, match="--window-days 0"):
        run_pipeline(wh, as_of, window_days=0)
    with pytest.raises(InputError, match="unknown stage\\(s\\) deploy; stages: no_click, mine"):
        run_pipeline(wh, as_of, stages=("mine", "deploy"))
    # a later stage of a week whose earlier stages never ran: named, nothing run
    files = _files(wh.root)
    with pytest.raises(InputError, match="stage train needs no_click first \\(as_of 2030-01-07\\)"):
        run_pipeline(wh, "2030-01-07", stages=("train",))
    changed = {k for k, v in _files(wh.root).items() if files.get(k) != v}
    assert not any("train" in k or "planner/runs" in k for k in changed), changed


def test_planner_commands_from_data_to_predict(loop_copy):
    """The README's sequence on the loop's warehouse: data, train, eval (of the run just
    trained, with nothing newer published), publish, predict."""
    from typer.testing import CliRunner

    from revision.catalog.schema import load_products
    from revision.cli.main import app

    wh, _ = loop_copy
    runner = CliRunner()
    base = ["--warehouse", str(wh.root), "--json"]

    def run(*args: str) -> dict:
        result = runner.invoke(app, ["planner", *args, *base])
        assert result.exit_code == 0, result.output[-2000:]
        return json.loads(result.stdout)

    assert run("data")["samples"]["train"] > 0
    trained = run("train", "--epochs", "1", "--grpo-steps", "2")
    latest = wh.root / "artifacts" / "planner" / "runs" / "latest"
    assert trained["final"].startswith(str(latest)) and trained["parameters"] > 0
    again = run("train", "--epochs", "1", "--grpo-steps", "0")  # a second run: a fresh folder
    assert again["final"].startswith(str(latest))
    assert [p.name.startswith("run-") for p in latest.parent.iterdir()].count(True) == 1
    figures = run("eval")
    assert figures["checkpoint"] == str(latest)  # the run just trained, not the published one
    assert figures["answers"]["requests"] > 0 and "bleu4" in figures["thinking"]
    published = run("publish")
    assert published["checkpoint"] and published["version"]
    photo = wh.resolve(load_products(wh)["image_path"].iloc[0])
    answer = run("predict", str(photo))
    assert answer["error"] is None and answer["planner_version"] == published["version"]
    assert answer["plan"].startswith("<think>") and len(answer["tools"]) <= 3
