"""Bot filter: per-user behavioural features (DuckDB) and a scikit-learn classifier over them.

Trade-off: one verdict per user, not per request, from features of the user's whole history in
the extraction run (rate, regularity, click pattern, photo re-use, time of day): a user's
requests share the verdict, so a bot that also sends a few human-looking requests is dropped
whole, and a user with one or two requests can never look like a bot. The classifier is a
gradient-boosted tree ensemble trained on labelled users (`revision logs train-bot-filter`,
labels from the simulator's truth or a team's own list); `RuleBotFilter` is a documented
fallback when no labels exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from revision.errors import InputError, MissingArtifactError
from revision.warehouse import Warehouse

MODEL_FILE = ("models", "bot_filter.joblib")
METRICS_FILE = ("models", "bot_filter.json")

FEATURES = (
    "n_requests",  # requests in the run
    "active_days",  # distinct UTC days with a request
    "requests_per_day",  # per active day
    "requests_per_active_hour",  # per distinct clock hour with a request
    "max_per_minute",  # most requests in one clock minute
    "max_per_hour",  # most requests in one clock hour
    "gap_median_s",  # median seconds between consecutive requests
    "gap_cv",  # coefficient of variation of those gaps (low = machine-regular)
    "session_gap_cv",  # the same over gaps under 30 minutes only (within a session)
    "regular_share",  # share of gaps within ±10% of the gap before (clockwork timing)
    "click_share",  # share of requests with a click inside the window
    "clicks_per_request",
    "distinct_image_ratio",  # distinct photos / requests (bots re-send or never repeat)
    "night_share",  # share of requests 00:00-05:59 UTC
    "distinct_hours",  # distinct hours of the day (0-23) used
)

# The features, from the table `reqc` that `revision.logs.no_click.open_logs` prepares: one row
# per de-duplicated request, with `u` (a 64-bit hash of user_id), `t` (UTC wall time), `day`,
# `clicked` and `n_clicks`.
FEATURE_SQL = """
WITH gaps AS (  -- the window carries two integers only: it is the costly step
    SELECT u, (e - lag(e) OVER w) / 1000.0 AS gap,
           (lag(e) OVER w - lag(e, 2) OVER w) / 1000.0 AS prev_gap
    FROM (SELECT u, epoch_ms(t) AS e FROM reqc)
    WINDOW w AS (PARTITION BY u ORDER BY e)
),
timing AS (
    SELECT u,
        median(gap) AS gap_median_s,
        stddev_pop(gap) / nullif(avg(gap), 0) AS gap_cv,
        stddev_pop(gap) FILTER (gap < 1800) / nullif(avg(gap) FILTER (gap < 1800), 0)
            AS session_gap_cv,
        avg(CASE WHEN abs(gap - prev_gap) <= 0.1 * greatest(prev_gap, 1.0) THEN 1.0 ELSE 0.0
            END) FILTER (prev_gap IS NOT NULL) AS regular_share
    FROM gaps GROUP BY u
),
per_minute AS (
    SELECT u, epoch_ms(t) // 60000 AS m, count(*) AS n FROM reqc GROUP BY ALL
),
per_hour AS (
    SELECT u, m // 60 AS h, sum(n) AS n FROM per_minute GROUP BY ALL
),
peaks AS (
    SELECT m.u, m.max_per_minute, h.max_per_hour, h.active_hours
    FROM (SELECT u, max(n) AS max_per_minute FROM per_minute GROUP BY u) m
    JOIN (SELECT u, max(n) AS max_per_hour, count(*) AS active_hours
          FROM per_hour GROUP BY u) h USING (u)
),
counts AS (
    SELECT u, any_value(user_id) AS user_id,
        count(*) AS n_requests,
        count(DISTINCT day) AS active_days,
        avg(CAST(clicked AS DOUBLE)) AS click_share,
        sum(n_clicks) / count(*) AS clicks_per_request,
        count(DISTINCT hash(coalesce(image_hash, image))) / count(*) AS distinct_image_ratio,
        avg(CASE WHEN hour(t) < 6 THEN 1.0 ELSE 0.0 END) AS night_share,
        bit_count(bit_or(CAST(1 AS UBIGINT) << CAST(hour(t) AS UBIGINT))) AS distinct_hours
    FROM reqc GROUP BY u
)
SELECT
    c.user_id, c.n_requests, c.active_days,
    c.n_requests / c.active_days AS requests_per_day,
    c.n_requests / p.active_hours AS requests_per_active_hour,
    p.max_per_minute, p.max_per_hour,
    t.gap_median_s, t.gap_cv, t.session_gap_cv, t.regular_share,
    c.click_share, c.clicks_per_request, c.distinct_image_ratio, c.night_share,
    c.distinct_hours
FROM counts c JOIN peaks p USING (u) JOIN timing t USING (u)
ORDER BY c.user_id
"""


def user_features(con) -> pd.DataFrame:
    """One row per user: `user_id` and FEATURES (NaN where undefined, e.g. one request)."""
    frame = con.sql(FEATURE_SQL).df()
    return frame.astype({f: "float64" for f in FEATURES})


# -- filters: score users, 1 = bot ----------------------------------------------------------
class BotFilter:
    """Scores nobody as a bot (`--bot-filter none`); the base of the real filters."""

    name = "none"
    threshold = 0.5

    def score(self, features: pd.DataFrame) -> np.ndarray:
        return np.full(len(features), np.nan)

    def is_bot(self, scores: np.ndarray) -> np.ndarray:
        return np.nan_to_num(scores, nan=0.0) >= self.threshold


@dataclass(frozen=True)
class BotRules:
    """Thresholds of the rule-based filter (docs/logs.md); a user matching any rule is a bot."""

    max_per_minute: float = 8  # more requests than this in one minute
    requests_per_day: float = 150  # more requests than this per active day
    min_regular_requests: float = 20  # with at least this many requests ...
    regular_share: float = 0.5  # ... and this share of gaps within ±10% of the previous one
    min_silent_requests: float = 40  # with at least this many requests ...
    click_share: float = 0.02  # ... and fewer clicks than this share


class RuleBotFilter(BotFilter):
    name = "rules"

    def __init__(self, rules: BotRules | None = None):
        self.rules = rules or BotRules()

    def score(self, features: pd.DataFrame) -> np.ndarray:
        r, f = self.rules, features.fillna({"regular_share": 0.0, "click_share": 1.0})
        n = f["n_requests"]
        bot = (
            (f["max_per_minute"] > r.max_per_minute)
            | (f["requests_per_day"] > r.requests_per_day)
            | ((n >= r.min_regular_requests) & (f["regular_share"] >= r.regular_share))
            | ((n >= r.min_silent_requests) & (f["click_share"] < r.click_share))
        )
        return bot.to_numpy(dtype=float)


class ModelBotFilter(BotFilter):
    name = "model"

    def __init__(self, model, features: tuple[str, ...] = FEATURES, threshold: float = 0.5):
        self.model = model
        self.features = tuple(features)
        self.threshold = threshold

    def score(self, features: pd.DataFrame) -> np.ndarray:
        if features.empty:
            return np.zeros(0)
        with _one_thread():
            return self.model.predict_proba(features[list(self.features)])[:, 1]


def check_bot_filter(warehouse: Warehouse, kind: str) -> None:
    """Fail fast (before any heavy work) on an unknown filter or a model never trained."""
    if kind not in ("model", "rules", "none"):
        raise InputError(f"--bot-filter {kind!r}: valid filters are model, rules, none")
    if kind == "model" and not warehouse.root.joinpath("artifacts", *MODEL_FILE).exists():
        raise MissingArtifactError(
            f"no trained bot filter in {warehouse.root}: run `revision logs train-bot-filter` "
            "(needs labelled users, e.g. the simulator's sim/truth), or pass --bot-filter rules"
        )


def load_bot_filter(warehouse: Warehouse, kind: str = "model") -> BotFilter:
    """`model` (the trained classifier), `rules` or `none`."""
    check_bot_filter(warehouse, kind)
    if kind == "none":
        return BotFilter()
    if kind == "rules":
        return RuleBotFilter()
    path = warehouse.root.joinpath("artifacts", *MODEL_FILE)
    import joblib

    saved = joblib.load(path)  # our own artefact, written by train_bot_filter
    return ModelBotFilter(saved["model"], tuple(saved["features"]), saved["threshold"])


# -- labels and training ---------------------------------------------------------------------
def read_labels(warehouse: Warehouse, table: str) -> pd.DataFrame:
    """Per-user bot labels (`user_id`, `is_bot`) from a labels table: the ONLY read of the
    simulator's ground truth outside evaluation. A user is a bot if any of its rows says so.

    The table needs `is_bot` and `user_id`, or `request_id` (then users come from logs/requests).
    """
    if not warehouse.exists(table):
        raise MissingArtifactError(
            f"labels table {table!r} not found in {warehouse.root} "
            "(run `revision simulate`, or import a table with user_id and is_bot)"
        )
    names = warehouse.dataset(table).schema.names
    if "is_bot" not in names or not ({"user_id", "request_id"} & set(names)):
        raise InputError(
            f"labels table {table!r} needs columns is_bot and user_id (or request_id); "
            f"it has: {', '.join(names)}"
        )
    if "user_id" in names:
        frame = warehouse.read_pandas(table, columns=["user_id", "is_bot"])
    else:
        from revision.tables import REQUESTS

        frame = warehouse.read_pandas(table, columns=["request_id", "is_bot"]).merge(
            warehouse.read_pandas(REQUESTS, columns=["request_id", "user_id"]), on="request_id"
        )
    frame = frame.dropna(subset=["user_id", "is_bot"])
    frame["is_bot"] = frame["is_bot"].astype(bool)
    return frame.groupby("user_id", as_index=False)["is_bot"].max()


def _one_thread():
    """HistGradientBoosting's OpenMP threads spin badly on a busy 2-core machine (a 0.2 s fit
    took 17 s under load); a few thousand users need no parallelism."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def new_classifier(seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Shallow trees: a few hundred to a few thousand users, features on very different scales
    # (trees do not care) and NaN for users with a single request (handled natively). Bots are
    # few users (the default world runs at most six), so classes are reweighted and a leaf may
    # hold two users: with the defaults (20 per leaf, no weights) two labelled bots among 460
    # users were never learnt at all.
    return HistGradientBoostingClassifier(
        max_iter=150,
        learning_rate=0.1,
        max_leaf_nodes=15,
        min_samples_leaf=2,
        l2_regularization=1.0,
        class_weight="balanced",
        random_state=seed,
    )


def precision_recall(truth: np.ndarray, pred: np.ndarray, weight=None) -> dict:
    """Precision, recall, F1 (and counts) of `pred` against `truth`, optionally weighted."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    w = np.ones(len(truth)) if weight is None else np.asarray(weight, float)
    tp = float(w[truth & pred].sum())
    fp = float(w[~truth & pred].sum())
    fn = float(w[truth & ~pred].sum())
    precision = tp / (tp + fp) if tp + fp else (1.0 if not fn else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


@dataclass
class TrainReport:
    users: int
    bots: int
    unlabelled_users: int
    cv_folds: int
    per_user: dict
    per_request: dict
    model_path: str
    window_s: float

    @property
    def warning(self) -> str | None:
        if self.bots < 5:
            return (
                f"only {self.bots} labelled bots: the cross-validated figures are rough "
                "(simulate more days or a world with more bots)"
            )
        return None

    def as_dict(self) -> dict:
        return {**self.__dict__, "warning": self.warning}


def train_bot_filter(
    warehouse: Warehouse,
    labels: str,
    *,
    window: float = 30.0,
    skew_tolerance: float = 2.0,
    seed: int = 0,
) -> TrainReport:
    """Fit the classifier on labelled users; print-ready cross-validated precision/recall.

    The features come from the same extraction code as `revision logs no-click`, so training
    and use see the same numbers. Saves `artifacts/models/bot_filter.joblib` (+ `.json`).
    """
    import joblib
    import sklearn
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from revision.logs.no_click import open_logs

    con, _facts = open_logs(warehouse, window=window, skew_tolerance=skew_tolerance)
    features = user_features(con)
    truth = read_labels(warehouse, labels)
    data = features.merge(truth, on="user_id", how="inner")
    unlabelled = len(features) - len(data)
    y = data["is_bot"].to_numpy(bool)
    minority = int(min(y.sum(), (~y).sum()))
    if minority < 2:
        raise InputError(
            f"labels table {labels!r} gives {int(y.sum())} bot and {int((~y).sum())} human "
            "users among the logged users: need at least 2 of each to train"
        )
    X = data[list(FEATURES)]
    folds = min(5, minority)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with _one_thread():
        proba = cross_val_predict(new_classifier(seed), X, y, cv=cv, method="predict_proba")[:, 1]
        model = new_classifier(seed).fit(X, y)
    pred = proba >= 0.5
    per_user = precision_recall(y, pred)
    per_request = precision_recall(y, pred, weight=data["n_requests"].to_numpy())
    path = warehouse.artifact(*MODEL_FILE)
    report = TrainReport(
        users=len(data),
        bots=int(y.sum()),
        unlabelled_users=unlabelled,
        cv_folds=folds,
        per_user=per_user,
        per_request=per_request,
        model_path=str(path),
        window_s=window,
    )
    tmp = path.with_suffix(".tmp")
    joblib.dump(
        {
            "model": model,
            "features": list(FEATURES),
            "threshold": 0.5,
            "window_s": window,
            "labels": labels,
            "sklearn": sklearn.__version__,
            "trained_at": datetime.now(UTC).isoformat(),
            "cv": report.as_dict(),
        },
        tmp,
    )
    tmp.replace(path)
    Path(warehouse.artifact(*METRICS_FILE)).write_text(json.dumps(report.as_dict(), indent=2))
    return report


def evaluate_bot_scores(warehouse: Warehouse, labels: str) -> dict | None:
    """Evaluation only: the last no-click run's verdicts (`logs/bot_scores`) against labels,
    per user and per request; None when either table is missing."""
    from revision.tables import BOT_SCORES

    if not (warehouse.exists(BOT_SCORES) and warehouse.exists(labels)):
        return None
    scores = warehouse.read_pandas(BOT_SCORES)
    if scores["method"].eq("none").all():
        return None
    data = scores.merge(read_labels(warehouse, labels), on="user_id", how="inner")
    if data.empty:
        return None
    truth, pred = data["is_bot_y"].to_numpy(bool), data["is_bot_x"].to_numpy(bool)
    return {
        "method": str(scores["method"].iloc[0]),
        "users": len(data),
        "per_user": precision_recall(truth, pred),
        "per_request": precision_recall(truth, pred, weight=data["n_requests"].to_numpy()),
    }
