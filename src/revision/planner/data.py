"""Planner training data (`revision planner data`): mined requests as `(request, thinking, tools)`.

Paper §III-C(a): the mined `Action -> Info` signals are replaced by their clustered tool, giving
`Query + Retrieval Results -> <think>…</think> (1) (3) (5)`. Per kept no-click request of one
mining run:

- **answer**: its signals in the mined order, mapped through the clustering assignments to
  live tool-list indices, deduplicated; a signal is kept while its confidence is at least
  `keep_ratio` of the first one's, at most `max_tools` (a plan that runs everything serves
  nobody: the exact-item seekers lose their item from the top). A request with no live tool
  is left out and counted.
- **thinking**: compressed from the analyst's thinking, extractively: what the photo shows and
  what the user's history says (never what the user did *after* the response, which a
  planner cannot see), then the plan in words, cut to `thinking_words`.
- **features**: the photo (hash), the top 12 results, the context vector of the user's history
  (`revision.planner.features`), stored so that training and serving assemble the same arrays.
- **split** by design and by day: the last `test_days` days' requests whose first result's
  design falls in a held-out share of designs are the test set; earlier days' requests on
  the other designs are the training set; the rest (held-out designs early, known designs late)
  is left out, so no design and no day leaks across. Training samples are balanced per main
  category (capped at `balance` × the median count), as the paper samples per category.

Written as the table `planner/samples` (partition `build=`), with the tool list's digest: a
planner trained on it can only be used with the same tool list.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from revision import toollist
from revision.errors import InputError, MissingArtifactError
from revision.logs.context import build_context
from revision.planner._base import PlannerSample
from revision.planner.features import CONTEXT_DIM, ProductFeatures, context_vector, request_features
from revision.progress import progress
from revision.tables import (
    ASSIGNMENTS,
    IMPRESSIONS,
    NO_CLICK,
    PLANNER_SAMPLES,
    REQUESTS,
    SIGNALS,
)
from revision.warehouse import Warehouse

SPLITS = ("train", "test")


@dataclass
class DataConfig:
    """How `revision planner data` builds its samples (see the module docstring)."""

    mining_run: str | None = None  # default: the latest run in mining/signals
    max_tools: int = 2
    keep_ratio: float = 0.5
    test_days: int = 1
    heldout_designs: float = 0.25
    balance: float | None = 2.0
    thinking_words: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_tools < 1:
            raise InputError(f"max_tools={self.max_tools}: a plan needs room for one tool")
        if not 0 < self.keep_ratio <= 1:
            raise InputError(f"keep_ratio={self.keep_ratio}: use a share in (0, 1]")
        if self.test_days < 1:
            raise InputError(f"test_days={self.test_days}: at least one day is held out")
        if not 0 < self.heldout_designs < 1:
            raise InputError(f"heldout_designs={self.heldout_designs}: use a share in (0, 1)")


@dataclass
class DataReport:
    build: str
    mining_run: str
    toollist_digest: str
    samples: dict[str, int] = field(default_factory=dict)  # per split
    per_tool: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> tool -> n
    tools_per_plan: dict[str, float] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> n
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latest_run(warehouse: Warehouse) -> str:
    if not warehouse.exists(SIGNALS):
        raise MissingArtifactError(f"no {SIGNALS} in {warehouse.root}: run `revision mine run`")
    runs = warehouse.read(SIGNALS, columns=["run"])["run"].unique().to_pylist()
    manifests = {
        r: (warehouse.root / "artifacts" / "mining" / "runs" / r / "manifest.json") for r in runs
    }
    return max(runs, key=lambda r: manifests[r].stat().st_mtime if manifests[r].exists() else 0)


_SEEN = re.compile(r"([^,()]+?) \((\d\.\d+)\)")
_LEVEL = re.compile(r"buying at ([+-]\d+\.\d+) log-price")
_FOR = re.compile(r"mostly for ([^.,]+)")


def compress_thinking(thinking: str, plan_words: list[str], max_words: int) -> str:
    """A short thinking from the analyst's: what the photo surely shows, what the user's
    history says, whether colour variants are hidden, then the plan. Nothing the user did
    *after* the response (a planner cannot see it).

    >>> compress_thinking("The query photo shows Black (0.96), Solid (0.41). Afterwards the "
    ...     'user typed "cheap". The user made 3 earlier requests and 1 orders, buying at '
    ...     "-0.40 log-price against type medians, mostly for Menswear.", ["Cheaper"], 40)
    'Photo: black. User buys cheap, for menswear. Plan: cheaper.'
    """
    parts = []
    photo = next((x for x in re.split(r"(?<=\.)\s+", thinking) if x.startswith("The query")), "")
    photo = photo.removeprefix("The query photo shows")
    seen = [name.strip().lower() for name, p in _SEEN.findall(photo) if float(p) >= 0.5]
    if seen:
        parts.append("Photo: " + ", ".join(seen) + ".")
    user = []
    if m := _LEVEL.search(thinking):
        level = float(m.group(1))
        user.append("buys dear" if level > 0.2 else "buys cheap" if level < -0.2 else "buys mid")
    if m := _FOR.search(thinking):
        user.append(f"for {m.group(1).strip().lower()}")
    if user:
        parts.append("User " + ", ".join(user) + ".")
    if "colour variants of the top designs are hidden" in thinking:
        parts.append("Other colours exist.")
    parts.append("Plan: " + ", ".join(w.lower() for w in plan_words) + ".")
    return " ".join(" ".join(parts).split()[:max_words])


def _design_share(design: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{design}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def build_planner_data(warehouse: Warehouse, config: DataConfig | None = None) -> DataReport:
    """Build `planner/samples` and the product features artifact (see the module docstring)."""
    config = config or DataConfig()
    started = time.perf_counter()
    doc = toollist.load(warehouse)
    live = set(doc.live_indices())
    by_name = {(t.main.casefold(), t.title.casefold()): t for t in doc.tools}
    run = config.mining_run or latest_run(warehouse)
    signals = warehouse.read_pandas(SIGNALS)
    signals = signals[signals["run"] == run].sort_values(["request_id", "position"])
    if signals.empty:
        raise InputError(f"mining run {run!r} has no signals in {SIGNALS}")
    if not warehouse.exists(ASSIGNMENTS):
        raise MissingArtifactError(f"no {ASSIGNMENTS}: run `revision cluster run` first")
    assign = warehouse.read_pandas(ASSIGNMENTS)
    if "source_run" in assign.columns:
        assign = assign[assign["source_run"] == run]
    if assign.empty:
        raise InputError(
            f"no clustering assignments of mining run {run!r}: run `revision cluster run` "
            "after mining"
        )
    assign = assign.sort_values("run").drop_duplicates(["request_id", "position"], keep="last")
    tool_of: dict[tuple[str, int], int] = {}
    for rid, pos, main, sub in zip(
        assign["request_id"], assign["position"], assign["main"], assign["sub"], strict=True
    ):
        spec = by_name.get((str(main).casefold(), str(sub).casefold())) if main and sub else None
        if spec is not None and spec.index in live:
            tool_of[(rid, int(pos))] = spec.index
    kept = warehouse.read_pandas(NO_CLICK, columns=["request_id", "kept"])
    kept_ids = set(kept.loc[kept["kept"].fillna(False).astype(bool), "request_id"])
    requests = warehouse.read_pandas(REQUESTS, columns=["request_id", "image", "image_hash", "dt"])
    requests = requests.drop_duplicates("request_id").set_index("request_id")
    report = DataReport(build="", mining_run=run, toollist_digest=doc.digest)
    left: Counter[str] = Counter()
    plans: dict[str, tuple[list[int], str]] = {}
    for rid, group in signals.groupby("request_id", sort=True):
        if rid not in kept_ids or rid not in requests.index:
            left["not a kept no-click request"] += 1
            continue
        answer, top = [], None
        for pos, confidence in zip(group["position"], group["confidence"], strict=True):
            tool = tool_of.get((rid, int(pos)))
            if tool is None or tool in answer:
                continue
            confidence = float(confidence) if confidence == confidence else 0.0
            top = confidence if top is None else top
            if answer and confidence < config.keep_ratio * top:
                break
            answer.append(tool)
            if len(answer) == config.max_tools:
                break
        if not answer:
            left["no signal maps to a live tool"] += 1
            continue
        plans[rid] = (answer, str(group["thinking"].iloc[0] or ""))
    if not plans:
        raise InputError(f"mining run {run!r}: no request has a signal that maps to a live tool")
    ids = sorted(plans)
    impressions = warehouse.read_pandas(
        IMPRESSIONS, columns=["request_id", "product_id", "rank", "score"]
    )
    impressions = impressions[impressions["request_id"].isin(set(ids))].sort_values(
        ["request_id", "rank"]
    )
    results = {
        rid: (g["product_id"].tolist()[:12], g["score"].astype(float).tolist()[:12])
        for rid, g in impressions.groupby("request_id", sort=False)
    }
    products = ProductFeatures.build(warehouse)
    products.save(warehouse)
    contexts = build_context(warehouse, ids)
    from revision.catalog.schema import load_products

    catalog = load_products(warehouse).set_index("product_id")
    days = sorted({str(requests.at[r, "dt"]) for r in ids})
    test_days = set(days[-config.test_days :])
    rows: dict[str, list] = {name: [] for name in PLANNER_SAMPLES.names}
    for rid in progress(ids, description="planner samples"):
        answer, thinking = plans[rid]
        if rid not in results:
            left["no impressions logged"] += 1
            continue
        ids_, scores = results[rid]
        first = ids_[0] if ids_ else None
        design = (
            str(catalog.at[first, "variant_group"] or first)
            if first in catalog.index
            else str(first)
        )
        late = str(requests.at[rid, "dt"]) in test_days
        held = _design_share(design, config.seed) < config.heldout_designs
        split = "test" if (late and held) else "train" if not (late or held) else "held"
        titles = [doc_title(doc, t) for t in answer]
        spec = next(t for t in doc.tools if t.index == answer[0])
        ctx = contexts.get(rid)
        rows["request_id"].append(rid)
        rows["split"].append(split)
        rows["day"].append(str(requests.at[rid, "dt"]))
        rows["design"].append(design)
        rows["category"].append(spec.main)
        rows["image"].append(requests.at[rid, "image"])
        rows["image_hash"].append(requests.at[rid, "image_hash"])
        rows["result_ids"].append(ids_)
        rows["result_scores"].append(scores)
        rows["context"].append(context_vector(ctx, products.audiences).tolist())
        rows["thinking"].append(compress_thinking(thinking, titles, config.thinking_words))
        rows["answer"].append(answer)
        rows["live"].append(sorted(live))
        rows["toollist_digest"].append(doc.digest)
        rows["mining_run"].append(run)
    table = pa.table(rows, schema=PLANNER_SAMPLES.schema)
    table = _balance(table, config)
    build = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    warehouse.write(PLANNER_SAMPLES, table, {"build": build})
    report.build = build
    report.left_out = dict(left)
    splits = table["split"].to_pylist()
    answers = table["answer"].to_pylist()
    for split in (*SPLITS, "held"):
        mine = [a for a, s in zip(answers, splits, strict=True) if s == split]
        report.samples[split] = len(mine)
        report.per_tool[split] = dict(sorted(Counter(t for a in mine for t in a).items()))
        report.tools_per_plan[split] = (
            round(float(np.mean([len(a) for a in mine])), 3) if mine else 0.0
        )
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def doc_title(doc, index: int) -> str:
    return next((t.title for t in doc.tools if t.index == index), f"tool {index}")


def _balance(table: pa.Table, config: DataConfig) -> pa.Table:
    """Cap training samples per main category at `balance` × the median count."""
    if config.balance is None:
        return table
    splits = table["split"].to_pylist()
    cats = table["category"].to_pylist()
    counts = Counter(c for c, s in zip(cats, splits, strict=True) if s == "train")
    if not counts:
        return table
    cap = max(1, int(config.balance * float(np.median(list(counts.values())))))
    rng = np.random.default_rng(config.seed)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, (c, s) in enumerate(zip(cats, splits, strict=True)):
        if s == "train":
            by_cat[c].append(i)
    drop = set()
    for rows in by_cat.values():
        if len(rows) > cap:
            drop.update(rng.choice(rows, size=len(rows) - cap, replace=False).tolist())
    keep = [i not in drop for i in range(len(splits))]
    return table.filter(pa.array(keep))


def latest_build(warehouse: Warehouse) -> str:
    if not warehouse.exists(PLANNER_SAMPLES):
        raise MissingArtifactError(
            f"no {PLANNER_SAMPLES} in {warehouse.root}: run `revision planner data` first"
        )
    return max(warehouse.read(PLANNER_SAMPLES, columns=["build"])["build"].unique().to_pylist())


def load_samples(
    warehouse: Warehouse,
    split: str,
    *,
    build: str | None = None,
    expected_digest: str | None = None,
) -> list[PlannerSample]:
    """The samples of one split, with their features assembled (`ProductFeatures` and the
    photo embeddings from the image cache). A tool list changed since the build is an error."""
    from revision.vision.embeddings import ImageEmbedder

    build = build or latest_build(warehouse)
    table = warehouse.read_pandas(PLANNER_SAMPLES)
    table = table[(table["build"] == build) & (table["split"] == split)]
    if table.empty:
        raise InputError(f"planner data build {build}: the {split!r} split is empty")
    digest = str(table["toollist_digest"].iloc[0])
    if expected_digest is not None:
        toollist.check_digest(digest, expected_digest, f"planner data build {build}")
    products = ProductFeatures.load(warehouse)
    embedder = ImageEmbedder(warehouse)
    hashes = table["image_hash"].tolist()
    missing = [
        (h, warehouse.resolve(p))
        for h, p in zip(hashes, table["image"], strict=True)
        if not h or h not in embedder.cache
    ]
    if missing:
        embedder.embed_paths([str(p) for _, p in missing])
    out = []
    for row in table.itertuples():
        key = row.image_hash
        if key and key in embedder.cache:
            query = embedder.cache.get([key])[0]
        else:
            query = embedder.embed_paths([str(warehouse.resolve(row.image))])[0][0]
        results = [
            (pid, float(score), rank + 1)
            for rank, (pid, score) in enumerate(zip(row.result_ids, row.result_scores, strict=True))
        ]
        context = np.asarray(row.context, np.float32)[:CONTEXT_DIM]
        features = request_features(products, query, results, None, context)
        out.append(
            PlannerSample(
                request_id=row.request_id,
                features=features,
                thinking=row.thinking,
                answer=[int(t) for t in row.answer],
                live=[int(t) for t in row.live],
                category=row.category,
                meta={"image": row.image, "results": list(row.result_ids), "digest": digest},
            )
        )
    return out
