"""No-click extraction, bot and quality filters, stats and the `revision logs` CLI, on small
synthetic logs this file writes itself (humans with a few irregular requests a day and clicks,
bots with high-rate regular requests and few clicks, photos rendered to tmp_path)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from revision.cli.main import app
from revision.errors import InputError, MissingArtifactError
from revision.eval.logs_truth import logs_evaluation
from revision.logs.bots import (
    FEATURES,
    RuleBotFilter,
    precision_recall,
    read_labels,
    train_bot_filter,
    user_features,
)
from revision.logs.no_click import extract_no_click, open_logs
from revision.logs.quality_filter import assess_images
from revision.logs.stats import compute_stats
from revision.tables import (
    BOT_SCORES,
    CLICKS,
    IMAGE_QUALITY,
    IMPRESSIONS,
    NO_CLICK,
    ORDERS,
    REQUESTS,
    TRUTH,
)
from revision.vision.images import content_hash
from revision.warehouse import Warehouse

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
runner = CliRunner()


# -- synthetic world ---------------------------------------------------------------------------
def render_photos(folder) -> dict[str, list[str]]:
    """A few good photos and dark, blurred and tiny ones, as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out: dict[str, list[str]] = {"good": [], "dark": [], "blurred": [], "tiny": []}
    for i in range(6):
        base = rng.integers(40, 220, size=(16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((160, 200), Image.Resampling.NEAREST)
        noise = rng.normal(0, 12, size=(200, 160, 3))
        good = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        variants = {
            "good": good,
            "dark": Image.fromarray((np.asarray(good) * 0.08).astype(np.uint8)),
            "blurred": good.filter(ImageFilter.GaussianBlur(12)),
            "tiny": good.resize((40, 50)),
        }
        for kind, photo in variants.items():
            if kind != "good" and i >= 2:
                continue
            path = folder / f"{kind}{i}.png"
            photo.save(path)
            out[kind].append(str(path))
    return out


def write_day_tables(wh: Warehouse, name: str, rows: list[dict], day_of) -> None:
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(day_of(row), []).append(row)
    for day, items in by_day.items():
        wh.write(name, pa.Table.from_pylist(items, schema=name.schema), {"dt": day})


def make_world(wh: Warehouse, photos, *, humans=120, bots=12, days=3, seed=0, tag="") -> list[dict]:
    """Write logs/requests, impressions, clicks and sim/truth; returns the truth rows. User
    ids are `h<tag><n>` (humans) and `b<tag><n>` (bots)."""
    rng = np.random.default_rng(seed)
    hashes = {p: content_hash(p) for kind in photos.values() for p in kind}
    requests, impressions, clicks, truth = [], [], [], []
    bad_kinds = ("dark", "blurred", "tiny")

    def add(user, ts, is_bot, p_click, photo, kind):
        rid = f"r{len(requests):06d}"
        requests.append(
            {
                "request_id": rid,
                "user_id": user,
                "ts": ts,
                "image": photo,
                "image_hash": hashes[photo],
                "relevance": 0.5,
                "variant": "baseline",
            }
        )
        for rank in range(1, 6):
            impressions.append(
                {
                    "request_id": rid,
                    "product_id": f"p{rng.integers(50)}",
                    "rank": rank,
                    "score": 1 / rank,
                }
            )
        if rng.random() < p_click:
            delay = 1 + rng.exponential(8)
            clicks.append(
                {
                    "request_id": rid,
                    "product_id": impressions[-5]["product_id"],
                    "ts": ts + timedelta(seconds=float(delay)),
                    "dwell_s": 5.0,
                }
            )
        truth.append(
            {
                "request_id": rid,
                "user_id": user,
                "is_bot": is_bot,
                "intent": str(rng.choice(["exact", "cheaper", "colour"])),
                "photo_kind": kind,
            }
        )

    for u in range(humans):
        for d in range(days):
            for _ in range(rng.poisson(2.5)):
                ts = DAY0 + timedelta(days=d, hours=float(rng.uniform(7, 23)))
                kind = str(rng.choice(bad_kinds)) if rng.random() < 0.15 else "good"
                photo = str(rng.choice(photos[kind]))
                add(f"h{tag}{u:04d}", ts, False, 0.6, photo, kind if kind != "good" else "mild")
    for b in range(bots):
        regular = b % 2 == 0
        for d in range(days):
            start = DAY0 + timedelta(days=d, hours=float(rng.uniform(0, 12)))
            n = int(rng.integers(60, 200))
            step = float(rng.uniform(15, 90))
            t = start
            for _ in range(n):
                # regular bots tick like a clock; burst bots fire several requests a minute
                t += timedelta(
                    seconds=step * float(rng.uniform(0.97, 1.03))
                    if regular
                    else float(rng.exponential(4))
                )
                add(f"b{tag}{b:04d}", t, True, 0.02, str(rng.choice(photos["good"])), "mild")
    day = lambda r: r["ts"].strftime("%Y-%m-%d")  # noqa: E731
    write_day_tables(wh, REQUESTS, requests, day)
    rdays = {r["request_id"]: day(r) for r in requests}
    write_day_tables(wh, IMPRESSIONS, impressions, lambda r: rdays[r["request_id"]])
    write_day_tables(wh, CLICKS, clicks, day)
    rows = [{"clicked": False, "ordered": False, **t} for t in truth]
    wh.write(TRUTH, pa.Table.from_pylist(rows, schema=TRUTH.schema))
    return truth


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return render_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture
def wh(isolated_warehouse) -> Warehouse:
    return Warehouse(isolated_warehouse)


# -- hand-made logs: exact rules -------------------------------------------------------------
def req(rid, user, seconds, image, day=0):
    return {
        "request_id": rid,
        "user_id": user,
        "image": image,
        "ts": DAY0 + timedelta(days=day, seconds=seconds),
    }


def clk(rid, seconds, day=0, product="p1"):
    return {
        "request_id": rid,
        "product_id": product,
        "ts": DAY0 + timedelta(days=day, seconds=seconds),
    }


def write_small(wh, requests, clicks):
    day = lambda r: r["ts"].strftime("%Y-%m-%d")  # noqa: E731
    write_day_tables(wh, REQUESTS, requests, day)
    if clicks:
        write_day_tables(wh, CLICKS, clicks, day)


def no_click_rows(wh) -> dict[str, dict]:
    return {r["request_id"]: r for r in wh.read(NO_CLICK).to_pylist()}


def test_window_edges_and_clock_skew(wh, photos):
    good = photos["good"][0]
    write_small(
        wh,
        [
            req("r29", "u1", 100, good),  # clicked at +29 s: counts
            req("r30", "u1", 200, good),  # clicked at exactly +30 s: counts (inclusive)
            req("r31", "u1", 300, good),  # clicked at +31 s: too late, still a no-click request
            req("rskew", "u2", 400, good),  # click 60 s BEFORE the request: clock skew, ignored
            req("rtol", "u2", 500, good),  # click 1 s before: inside the 2 s tolerance, counts
            req("rnone", "u3", 600, good),
        ],
        [
            clk("r29", 129),
            clk("r30", 230),
            clk("r31", 331),
            clk("rskew", 340),
            clk("rtol", 499),
            clk("ghost", 10),
        ],
    )
    report = extract_no_click(wh, window=30, bot_filter="none", nsfw=False)
    rows = no_click_rows(wh)
    assert set(rows) == {"r31", "rskew", "rnone"}
    assert rows["r31"]["late_clicks"] == 1
    assert all(r["kept"] and r["drop_reason"] is None for r in rows.values())
    assert report.rules["skewed_clicks"] == 1
    assert report.rules["late_clicks"] == 1
    assert report.rules["orphan_clicks"] == 1  # a click on an unknown request is ignored
    assert report.requests == 6 and report.no_click == 3
    # --window is honoured: with 60 s the late click counts
    extract_no_click(wh, window=60, bot_filter="none", nsfw=False)
    assert set(no_click_rows(wh)) == {"rskew", "rnone"}  # rerun replaced, never appended


def test_duplicate_request_ids_keep_the_earliest(wh, photos):
    good = photos["good"][0]
    write_small(
        wh,
        [
            req("r1", "u1", 100, good),
            req("r1", "u9", 50, good),
            req("r1", "u1", 100, good),
            req("r2", "u1", 200, good),
        ],
        [clk("r1", 110)],
    )  # 60 s after the earliest r1 (at 50 s): too late
    report = extract_no_click(wh, bot_filter="none", nsfw=False)
    assert report.rules["duplicate_request_rows"] == 2
    rows = no_click_rows(wh)
    assert set(rows) == {"r1", "r2"}
    assert rows["r1"]["user_id"] == "u9"  # the earliest row wins


def test_empty_days_and_no_clicks_table(wh, photos):
    good = photos["good"][0]
    write_small(wh, [req("a", "u1", 10, good, day=0), req("b", "u1", 10, good, day=3)], [])
    wh.write(REQUESTS, REQUESTS.schema.empty_table(), {"dt": "2026-03-03"})  # an empty day
    report = extract_no_click(wh, bot_filter="none", nsfw=False)
    assert report.days == ["2026-03-02", "2026-03-05"]
    assert report.empty_days == ["2026-03-03", "2026-03-04"]
    assert report.rules["no_clicks_table"] is True
    assert report.no_click == 2
    partitions = sorted(p.name for p in wh.table_dir(NO_CLICK).iterdir())
    assert partitions == ["dt=2026-03-02", "dt=2026-03-05"]
    # a day that left the log leaves logs/no_click on the next run
    wh.drop(REQUESTS, {"dt": "2026-03-05"})
    extract_no_click(wh, bot_filter="none", nsfw=False)
    assert [p.name for p in wh.table_dir(NO_CLICK).iterdir()] == ["dt=2026-03-02"]


def test_no_requests_is_a_clear_error(wh):
    with pytest.raises(MissingArtifactError, match="revision logs import"):
        extract_no_click(wh, bot_filter="none")


def test_missing_model_names_the_command(wh, photos):
    write_small(wh, [req("a", "u1", 10, photos["good"][0])], [])
    with pytest.raises(MissingArtifactError, match="train-bot-filter"):
        extract_no_click(wh)


def test_unreadable_photos(wh, photos, tmp_path):
    write_small(
        wh,
        [
            req("a", "u1", 10, photos["good"][0]),
            req("b", "u1", 20, str(tmp_path / "gone.jpg")),
            req("c", "u1", 30, "relative/missing.png"),
        ],
        [],
    )
    extract_no_click(wh, bot_filter="none", nsfw=False)
    rows = no_click_rows(wh)
    assert rows["a"]["kept"]
    assert rows["b"]["drop_reason"] == "unreadable_image" == rows["c"]["drop_reason"]
    # every photo unreadable: a wrong --images folder, not a log of bad photos
    other = Warehouse(tmp_path / "other")
    write_small(other, [req("a", "u1", 10, "good0.png")], [])
    with pytest.raises(InputError, match="--images"):
        extract_no_click(other, bot_filter="none", nsfw=False, images_root=tmp_path / "nowhere")


def test_relative_paths_resolve_against_images_root(wh, photos):
    from pathlib import Path

    good = Path(photos["good"][0])
    write_small(wh, [req("a", "u1", 10, good.name)], [])
    extract_no_click(wh, bot_filter="none", nsfw=False, images_root=good.parent)
    assert no_click_rows(wh)["a"]["kept"]


# -- quality filter ----------------------------------------------------------------------------
def test_low_quality_photos_flagged_and_cached(wh, photos):
    images = {f"{kind}:{p}": p for kind, paths in photos.items() for p in paths}
    verdicts, measured = assess_images(wh, images, nsfw=False)
    assert measured == len(images)
    for key, verdict in verdicts.items():
        kind = key.split(":")[0]
        if kind == "good":
            assert verdict.quality == "", key
        else:
            assert kind in verdict.quality.split(","), (key, verdict)
    again, measured = assess_images(wh, images, nsfw=False)
    assert measured == 0 and again == verdicts  # served from logs/image_quality
    assert wh.read(IMAGE_QUALITY).num_rows == len(images)
    # the bundled NSFW classifier runs when asked (figures filled in, photos still pass)
    one = {k: v for k, v in images.items() if k.startswith("good")}
    verdicts, measured = assess_images(wh, dict(list(one.items())[:2]), nsfw=True)
    assert measured == 2
    assert all(v.quality == "" for v in verdicts.values())
    nsfw = [r["nsfw"] for r in wh.read(IMAGE_QUALITY).to_pylist() if r["nsfw"] is not None]
    assert len(nsfw) == 2 and all(0 <= x <= 1 for x in nsfw)


# -- bot filter and the full extraction ---------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, photos):
    """One synthetic world, trained and extracted once for the tests below."""
    wh = Warehouse(tmp_path_factory.mktemp("world"))
    truth = make_world(wh, photos, humans=200, bots=16)
    training = train_bot_filter(wh, TRUTH)
    report = extract_no_click(wh, nsfw=False)
    return wh, truth, training, report


def test_features_are_defined_for_every_user(world):
    wh, truth, *_ = world
    con, _ = open_logs(wh)
    features = user_features(con)
    assert list(features.columns) == ["user_id", *FEATURES]
    assert len(features) == len({t["user_id"] for t in truth})
    bots = features[features.user_id.str.startswith("b")]
    humans = features[features.user_id.str.startswith("h")]
    assert bots.max_per_minute.median() > humans.max_per_minute.median()
    assert bots.click_share.mean() < humans.click_share.mean()


def test_bot_classifier_reaches_high_precision_and_recall(world, photos, tmp_path):
    """Cross-validated on its training users, then scored on users it never saw."""
    wh, _, training, _ = world
    assert training.bots == 16 and training.users == 216
    for level in ("per_user", "per_request"):
        assert getattr(training, level)["precision"] >= 0.9, training
        assert getattr(training, level)["recall"] >= 0.9, training
    assert (wh.root / "artifacts/models/bot_filter.joblib").exists()
    assert json.loads((wh.root / "artifacts/models/bot_filter.json").read_text())["users"] == 216
    # held out: another world (other users, other seed) filtered with the trained model
    held = Warehouse(tmp_path / "held")
    make_world(held, photos, humans=150, bots=14, seed=11, tag="x")
    for name in ("bot_filter.joblib", "bot_filter.json"):
        (held.artifact("models", name)).write_bytes(
            (wh.root / "artifacts/models" / name).read_bytes()
        )
    extract_no_click(held, nsfw=False, bot_filter="model")
    scores = held.read_pandas(BOT_SCORES)
    trained_on = set(wh.read_pandas(BOT_SCORES)["user_id"])
    assert len(scores) == 164 and not set(scores.user_id) & trained_on
    labels = read_labels(held, TRUTH).set_index("user_id")["is_bot"]
    pr = precision_recall(labels[scores.user_id].to_numpy(), scores.is_bot.to_numpy())
    assert pr["precision"] >= 0.9 and pr["recall"] >= 0.9, pr


def test_rule_filter_catches_the_synthetic_bots(world):
    wh, *_ = world
    con, _ = open_logs(wh)
    features = user_features(con)
    flt = RuleBotFilter()
    pred = flt.is_bot(flt.score(features))
    pr = precision_recall(features.user_id.str.startswith("b").to_numpy(), pred)
    assert pr["precision"] >= 0.9 and pr["recall"] >= 0.9, pr


def test_extraction_drop_reasons(world):
    wh, truth, _, report = world
    kinds = {t["request_id"]: t for t in truth}
    rows = wh.read(NO_CLICK).to_pylist()
    assert len(rows) == report.no_click and report.no_click_ratio > 0.3
    assert set(report.dropped) <= {"bot", "low_quality"}
    for row in rows:
        t = kinds[row["request_id"]]
        if row["drop_reason"] == "bot":
            assert row["bot_score"] >= 0.5
        if row["kept"]:
            assert row["drop_reason"] is None and row["quality"] == ""
        if not t["is_bot"] and t["photo_kind"] in ("dark", "blurred", "tiny") and row["kept"]:
            pytest.fail(f"low-quality photo kept: {row}")
        if row["drop_reason"] == "low_quality":
            assert t["photo_kind"] in row["quality"].split(",")
    bot_rows = [r for r in rows if kinds[r["request_id"]]["is_bot"]]
    assert sum(r["drop_reason"] == "bot" for r in bot_rows) / len(bot_rows) >= 0.95
    assert NO_CLICK.schema.names == wh.read(NO_CLICK).schema.names[:-1]  # + the dt partition


# -- stats ---------------------------------------------------------------------------------------
def test_stats_on_a_hand_made_log(wh, photos):
    """Worked example: 4 requests by 2 users, 8 impressions, 3 clicks, 1 order."""
    good = photos["good"][0]
    write_small(
        wh,
        [
            req("r1", "u1", 0, good),
            req("r2", "u1", 100, good),
            req("r3", "u2", 200, good),
            req("r4", "u2", 300, good, day=1),
        ],
        [
            clk("r1", 10, product="p1"),
            clk("r2", 145, product="p2"),
            clk("r4", 240, day=1, product="p1"),
        ],
    )  # late (45 s) and skewed (-60 s)
    imps = [
        {"request_id": r, "product_id": f"p{k}", "rank": k, "score": 1.0}
        for r in ("r1", "r2", "r3", "r4")
        for k in (1, 2)
    ]
    write_day_tables(
        wh, IMPRESSIONS, imps, lambda r: "2026-03-03" if r["request_id"] == "r4" else "2026-03-02"
    )
    wh.write(
        ORDERS,
        pa.Table.from_pylist(
            [
                {
                    "request_id": "r1",
                    "product_id": "p1",
                    "ts": DAY0 + timedelta(seconds=60),
                    "price": 19.5,
                }
            ],
            schema=ORDERS.schema,
        ),
        {"dt": "2026-03-02"},
    )
    s = compute_stats(wh)
    assert (s["requests"], s["users"], s["impressions"], s["clicks"]) == (4, 2, 8, 3)
    assert s["ctr"] == 3 / 8  # clicks / impressions
    assert s["no_click"] == 3 and s["no_click_ratio"] == 0.75  # only r1 clicked within 30 s
    assert (s["orders"], s["gmv"], s["cvr"]) == (1, 19.5, round(1 / 3, 6))
    assert s["rules"]["late_clicks"] == 1 and s["rules"]["skewed_clicks"] == 1
    assert s["per_day"] == [
        {"dt": "2026-03-02", "requests": 3, "no_click": 2, "no_click_ratio": round(2 / 3, 6)},
        {"dt": "2026-03-03", "requests": 1, "no_click": 1, "no_click_ratio": 1.0},
    ]
    assert s["ctr_by_rank"] == [
        {"rank": 1, "impressions": 4, "ctr": 0.5},
        {"rank": 2, "impressions": 4, "ctr": 0.25},
    ]
    assert s["bot_share"] is None and "evaluation" not in s  # no extraction, no truth yet
    extract_no_click(wh, bot_filter="rules", nsfw=False)
    s = compute_stats(wh)
    assert s["bot_share"] == 0.0 and s["extraction"] == {
        "no_click_rows": 3,
        "kept": 3,
        "dropped": {},
    }


def test_stats_evaluation_and_report(world, tmp_path):
    wh, *_ = world
    s = compute_stats(wh)
    assert 0 < s["bot_share"] < 1 and "evaluation" not in s  # the log stage never reads truth
    s["evaluation"] = ev = logs_evaluation(wh)
    assert {r["intent"] for r in ev["no_click_by_intent"]} == {"exact", "cheaper", "colour"}
    assert ev["bot_filter"]["per_user"]["recall"] >= 0.9
    quality = ev["quality_filter"]  # the degraded photos the world sent, caught
    assert quality["recall"] == 1.0 and quality["precision"] == 1.0, quality
    assert quality["flagged_by_kind"]["mild"]["flagged"] == 0
    from revision.logs.report import write_report

    path = write_report(wh, s, tmp_path / "logs.html")
    page = path.read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert "Evaluation only" in page and "per hidden intent" in page


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_json_shapes(world, tmp_path):
    wh, *_ = world
    out = runner.invoke(
        app, ["logs", "no-click", "--warehouse", str(wh.root), "--no-nsfw", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert {
        "requests",
        "no_click",
        "kept",
        "dropped",
        "no_click_ratio",
        "rules",
        "days",
        "empty_days",
        "bot_filter",
    } <= set(data)
    report = tmp_path / "r.html"
    out = runner.invoke(
        app, ["logs", "stats", "--warehouse", str(wh.root), "--json", "--report", str(report)]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert {"requests", "users", "ctr", "no_click_ratio", "bot_share"} <= set(data)
    assert data["report"] == str(report) and report.exists()
    out = runner.invoke(app, ["logs", "no-click", "--help"])
    assert out.exit_code == 0 and "--window" in out.output


def test_cli_train_bot_filter_json(wh, photos):
    make_world(wh, photos, humans=40, bots=6, days=2, seed=3)
    out = runner.invoke(app, ["logs", "train-bot-filter", "--json"])
    assert out.exit_code != 0 and "--labels" in out.output  # no default points at sim/truth
    out = runner.invoke(app, ["logs", "train-bot-filter", "--labels", "sim/truth", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["bots"] == 6 and {"precision", "recall", "f1"} <= set(data["per_user"])
