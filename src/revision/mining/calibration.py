"""Calibrated confidence: which action a user wanted, learned from the follow-ups that say so.

Some no-click requests settle their own intent: the user sorted by price, opened the material
section, typed "dress for kids" (`revision.mining.evidence.settled_action`). Those are labels,
observed in the logs, no hidden truth involved. A gradient-boosted classifier learns from them
which action serves a user given what is known without a follow-up (the photo's perception
facts, the results, the user's history and session), and is applied to the requests whose
follow-up says nothing. Its probabilities order the analyst's signals.

Trade-off: requests with a follow-up are not a random sample (some intents show themselves
more often), so the probabilities lean towards the talkative intents; what matters here is
their order, which the held-out benchmark checks against the simulator's truth.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from revision.errors import InputError

NONE = "(no tool)"  # a follow-up that settles on what visual matching already does
MIN_LABELS = 40  # fewer settled requests than this: no calibration, rule order stays
MAX_LEVELS = 250  # values kept per categorical fact (the rest read as missing)
# Text facts worth reading as categories: what the photo and the results show, who the user
# shops for. (Free text such as OCR stays out.)
CATEGORICAL = (
    "query.category",
    "query.index_group",
    "query.pattern",
    "top.category",
    "top.index_group",
    "top.pattern",
    "results.category_top",
    "results.index_group_top",
    "user.home_group",
)
# Facts the model may not read: they are the follow-ups that define its labels.
_EXCLUDED_PREFIXES = ("events.", "settled.", "session.next", "outcome.")


def feature_names(kinds: dict[str, tuple[str, str]]) -> list[str]:
    """The numeric and boolean facts (by declared kind) a calibration reads, sorted."""
    return sorted(
        name
        for name, (kind, _) in kinds.items()
        if kind in ("num", "bool") and not name.startswith(_EXCLUDED_PREFIXES)
    )


def _row(facts: dict[str, Any], names: list[str], levels: dict[str, dict[str, int]]) -> list:
    row = []
    for name in names:
        v = facts.get(name)
        if name in levels:
            row.append(float(levels[name].get(v, math.nan)) if v is not None else math.nan)
        else:
            ok = isinstance(v, bool | int | float) and v is not None
            row.append(float(v) if ok else math.nan)
    return row


class Calibration:
    """`fit(facts, labels)` -> `proba(facts) -> {action: p}`; saved as JSON + a joblib model."""

    def __init__(
        self, max_iter: int = 150, learning_rate: float = 0.08, seed: int = 0, threads: int = 1
    ):
        self.max_iter, self.learning_rate, self.seed = max_iter, learning_rate, seed
        self.threads = threads

    def fit(
        self,
        facts: list[dict[str, Any]],
        labels: list[str | tuple[str, ...] | None],
        kinds: dict[str, tuple[str, str]],
        em_rounds: int = 3,
    ) -> Calibration:
        """`kinds`: the declared facts (name -> (kind, description)) the rows hold. A label
        may name several candidate actions (a follow-up that points two ways): such a row
        counts for each candidate, weighted by the model's own belief, refined for
        `em_rounds` rounds (expectation-maximisation)."""
        pairs = [(f, y) for f, y in zip(facts, labels, strict=True) if y is not None]
        if len(pairs) < MIN_LABELS:
            raise InputError(
                f"only {len(pairs)} requests have a follow-up that settles the intent "
                f"(need {MIN_LABELS}): mine more days, or pass --option calibration=off"
            )
        classes = {c for _, y in pairs for c in ((y,) if isinstance(y, str) else y)}
        if len(classes) < 2:
            raise InputError(
                "every settled request points to the same action: nothing to calibrate "
                "(mine more days, or pass --option calibration=off)"
            )
        categorical = [c for c in CATEGORICAL if c in kinds]
        self.levels_ = {}
        for name in categorical:
            counts = Counter(f.get(name) for f, _ in pairs if f.get(name) is not None)
            self.levels_[name] = {v: i for i, (v, _) in enumerate(counts.most_common(MAX_LEVELS))}
        self.features_ = feature_names(kinds) + categorical
        rows, ys, owner = [], [], []  # one row per (request, candidate action)
        for n, (f, y) in enumerate(pairs):
            for c in (y,) if isinstance(y, str) else y:
                rows.append(_row(f, self.features_, self.levels_))
                ys.append(c)
                owner.append(n)
        x = np.array(rows, dtype=np.float32)
        y = np.array(ys)
        owner_ = np.array(owner)
        counts = np.bincount(owner_)
        weight = 1.0 / counts[owner_]  # an ambiguous request starts split evenly
        ambiguous = counts[owner_] > 1
        for round_ in range(em_rounds + 1):
            self._fit_model(x, y, weight)
            if round_ == em_rounds or not ambiguous.any():
                break
            p = self.model_.predict_proba(x[ambiguous])
            col = {c: i for i, c in enumerate(self.model_.classes_)}
            belief = p[np.arange(len(p)), [col[c] for c in y[ambiguous]]]
            totals = np.bincount(owner_[ambiguous], weights=belief, minlength=len(pairs))
            weight[ambiguous] = belief / np.maximum(totals[owner_[ambiguous]], 1e-12)
        self.classes_ = [str(c) for c in self.model_.classes_]
        self.n_labels_ = len(pairs)
        self.label_counts_ = {c: round(float(weight[y == c].sum()), 1) for c in self.classes_}
        return self

    def _fit_model(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=15,
            l2_regularization=1.0,
            categorical_features=[name in self.levels_ for name in self.features_] or None,
            random_state=self.seed,
        )
        with threadpool_limits(self.threads):
            self.model_ = model.fit(x, y, sample_weight=weight)

    def proba(self, facts: list[dict[str, Any]]) -> list[dict[str, float]]:
        if not facts:
            return []
        x = np.array([_row(f, self.features_, self.levels_) for f in facts], dtype=np.float32)
        with threadpool_limits(self.threads):  # OpenMP threads spin against a busy machine
            p = self.model_.predict_proba(x)
        return [dict(zip(self.classes_, map(float, row), strict=True)) for row in p]

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        import joblib

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "calibration.joblib"
        joblib.dump(self.model_, model)
        meta = {
            "features": self.features_,
            "levels": self.levels_,
            "classes": self.classes_,
            "labels": self.n_labels_,
            "label_counts": self.label_counts_,
            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        }
        (folder / "calibration.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Calibration:
        import joblib

        folder = Path(folder)
        try:
            meta = json.loads((folder / "calibration.json").read_text())
            model = folder / "calibration.joblib"
            if hashlib.sha256(model.read_bytes()).hexdigest() != meta["sha256"]:
                raise InputError(f"{model}: does not match calibration.json (a partial write?)")
            out = cls()
            out.threads = 1
            out.model_ = joblib.load(model)
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise InputError(f"{folder}: not a calibration ({exc})") from None
        out.features_, out.classes_ = meta["features"], meta["classes"]
        out.levels_ = meta["levels"]
        out.n_labels_, out.label_counts_ = meta["labels"], meta["label_counts"]
        return out
