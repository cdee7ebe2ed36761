"""Stage 1 (the VLM's role): facts about the query photo and its results, from tools.

Trade-off: instead of a 72B VLM, the embedded analyst sees through the attribute heads (colour,
type, pattern, audience from [embedding, colour histogram]), optional OCR and cheap quality
figures, plus exact statistics over the results' catalog rows. Facts are a flat dict of dotted
names (`FACTS`) that expert rules test. The photo is read by `revision.vision`'s
`QueryUnderstanding`, the same object the online tools read it with; every query feature is
cached by photo content hash (the embeddings the log stage or the simulator already computed
are reused, OCR is kept in the warehouse table `mining/ocr`), so a rerun, or a photo seen
twice, costs a lookup. Materials and care phrases come from the shared product-text
vocabulary (`revision.text.vocabulary`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from revision.catalog.schema import load_products
from revision.mining._base import MiningInput, describe_error
from revision.tables import IMAGE_QUALITY, OCR
from revision.text.vocabulary import DELICATE, care_phrases, materials_in
from revision.vision.attributes import UNKNOWN, AttributeHeads
from revision.vision.encoder import ImageEncoder
from revision.vision.images import content_hash
from revision.vision.quality import QualityReport, QualityThresholds, measure, reasons
from revision.vision.understanding import HeadReading, Photo, QueryUnderstanding
from revision.warehouse import Warehouse

ATTRS = ("colour", "category", "pattern", "index_group")
CONFIDENT = 0.45  # a head's probability above which the query attribute counts as seen
PLAIN_PATTERNS = frozenset({"Solid", "Melange", "Unknown", UNKNOWN})  # no print or structure

# Fact name -> (kind, description). Rules may only name these; kinds: num, str, bool.
FACTS: dict[str, tuple[str, str]] = {
    "query.print": ("str", "the likeliest print or structure (a non-plain pattern) on the query"),
    "query.print_p": ("num", "the heads' probability that the query item is patterned at all"),
    "query.text": ("str", "OCR text read on the query photo (None when OCR is off or empty)"),
    "query.blur": ("num", "Laplacian variance of the query photo; low = blurred"),
    "query.brightness": ("num", "mean luma of the query photo, 0-255"),
    "query.low_quality": ("bool", "the photo fails a quality threshold (blurred, dark, tiny)"),
    "results.count": ("num", "number of result products analysed (at most K = 12)"),
    "results.top_score": ("num", "similarity of the first result"),
    "results.relevance": ("num", "mean similarity of the first four results"),
    "results.mean_score": ("num", "mean similarity of all results"),
    "results.top_id": ("str", "product id of the first result"),
    "results.department_top": ("str", "most common department among the results"),
    "price.known": ("num", "results with a known price"),
    "price.min": ("num", "lowest result price"),
    "price.median": ("num", "median result price"),
    "price.max": ("num", "highest result price"),
    "price.anchor": ("num", "the query item's likely price: first result's, else top-4 median"),
    "price.cheaper_share": ("num", "share of priced results below 0.9 x anchor"),
    "price.pricier_share": ("num", "share of priced results above 1.1 x anchor"),
    "price.percentile": (
        "num",
        "share of the catalog's same-type, same-audience prices below "
        "the anchor (1 = the dearest of its kind)",
    ),
    "price.headroom": ("num", "1 - price.percentile: how much dearer the same kind can get"),
    "price.cheaper_alternatives": (
        "num",
        "results of the anchor's type and audience priced at most 0.75 x anchor",
    ),
    "price.pricier_alternatives": (
        "num",
        "results of the anchor's type and audience priced at least 1.25 x anchor",
    ),
    "price.cheaper_in_catalog": (
        "num",
        "catalog products of that type and audience priced at most 0.75 x anchor",
    ),
    "price.pricier_in_catalog": (
        "num",
        "catalog products of that type and audience priced at least 1.25 x anchor",
    ),
    "price.low_share": ("num", "share of priced results at or below the type's catalog q25"),
    "price.high_share": ("num", "share of priced results at or above the type's catalog q75"),
    "price.q25": ("num", "catalog 25th price percentile for the query's type"),
    "price.q50": ("num", "catalog median price for the query's type"),
    "price.q75": ("num", "catalog 75th price percentile for the query's type"),
    "variants.group": ("str", "variant group of the first result"),
    "variants.hidden": ("num", "colour variants of the top-3 results' designs not shown"),
    "variants.colours": ("str", "up to three colours of those hidden variants"),
    "materials.top": ("str", "the material named most in the top-3 results' descriptions"),
    "materials.all": ("str", "materials named in the top-3 results' descriptions"),
    "materials.count": ("num", "number of distinct materials named"),
    "materials.delicate": ("str", "a delicate material among them (wool, silk, leather, …)"),
    "care.text": ("str", "care instructions found in the top-3 descriptions"),
    "department.other": (
        "str",
        "the audience (index group) that most often sells this type, other than the results' own",
    ),
    "department.other_share": ("num", "that audience's share of the type in the catalog"),
}
for _attr in (*ATTRS, "price"):
    FACTS[f"top.{_attr}"] = (
        "num" if _attr == "price" else "str",
        f"the first result's {_attr} (often the photographed item itself)",
    )
for _attr in ATTRS:
    FACTS[f"query.{_attr}"] = ("str", f"the query's predicted {_attr} (None when unsure)")
    FACTS[f"query.{_attr}_p"] = ("num", f"the attribute head's probability for query.{_attr}")
    FACTS[f"results.{_attr}_match"] = ("num", f"share of results whose {_attr} is the query's")
    FACTS[f"results.{_attr}_top"] = ("str", f"most common {_attr} among the results")
    FACTS[f"results.{_attr}_top_share"] = ("num", f"share of results with results.{_attr}_top")
    FACTS[f"results.{_attr}_entropy"] = ("num", f"normalised entropy of result {_attr}s, 0-1")
    FACTS[f"diff.{_attr}"] = (
        "bool",
        f"the query's {_attr} is confident and differs from results.{_attr}_top",
    )

_UNTRUSTED_TEXT = re.compile(r"[^\w\s&.,'/+-]", re.UNICODE)


def clean_text(text: str | None, limit: int = 40) -> str | None:
    """Untrusted text (OCR) reduced to a short printable phrase: data, never markup."""
    if not text:
        return None
    out = " ".join(_UNTRUSTED_TEXT.sub(" ", text).split())[:limit].strip()
    return out or None


class CatalogStats:
    """What the analyst knows about the catalog as a whole: price percentiles per type,
    colour variants per design, audiences per type, materials per product."""

    def __init__(self, products):
        priced = products[products["price"].notna()]
        self.global_q = _quantiles(priced["price"].to_numpy())
        self.price_q = {
            cat: _quantiles(group.to_numpy())
            for cat, group in priced.groupby("category")["price"]
            if len(group) >= 10
        }
        # sorted prices per (type, audience): "is anything clearly cheaper?" is a bisection
        self.kind_prices = {
            key: np.sort(group.to_numpy())
            for key, group in priced.groupby(["category", "index_group"])["price"]
        }
        self.variants: dict[str, list[tuple[str, str | None]]] = {}
        for pid, group, colour in zip(
            products["product_id"], products["variant_group"], products["colour"], strict=True
        ):
            if isinstance(group, str) and group:
                self.variants.setdefault(group, []).append((pid, colour))
        self.audiences = {
            cat: Counter(group.dropna().tolist())
            for cat, group in products.groupby("category")["index_group"]
        }
        self._materials: dict[str, tuple[list[str], list[str]]] = {}

    def quantiles(self, category: str | None) -> tuple[float, ...] | None:
        return self.price_q.get(category or "", self.global_q)

    def materials(self, product_id: str, description: str | None) -> tuple[list[str], list[str]]:
        """(materials, care phrases) named in a product description, cached per product."""
        if product_id not in self._materials:
            self._materials[product_id] = (materials_in(description), care_phrases(description))
        return self._materials[product_id]


def _quantiles(prices: np.ndarray) -> tuple[float, ...] | None:
    if len(prices) == 0:
        return None
    return tuple(float(v) for v in np.quantile(prices, [0.25, 0.5, 0.75]))


class OcrCache:
    """OCR text per photo hash, kept in the warehouse table `mining/ocr` (one file per add):
    the `OcrStore` mining hands to `QueryUnderstanding`."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        self.text: dict[str, str] = {}
        self._lock = threading.Lock()
        if warehouse.exists(OCR):
            table = warehouse.read(OCR, columns=["image_hash", "text"])
            self.text = dict(
                zip(
                    table.column("image_hash").to_pylist(),
                    table.column("text").to_pylist(),
                    strict=True,
                )
            )

    def get(self, key: str) -> str | None:
        return self.text.get(key)

    def put(self, texts: Mapping[str, str]) -> None:
        if not texts:
            return
        with self._lock:
            self.warehouse.write(
                OCR,
                pa.table({"image_hash": list(texts), "text": list(texts.values())}),
                file=f"part-{uuid.uuid4().hex}.parquet",
            )
            self.text.update(texts)


class Perception:
    """Stage-1 facts for a batch of requests (see `FACTS`)."""

    def __init__(
        self,
        warehouse: Warehouse,
        *,
        ocr: bool = False,
        ocr_side: int = 640,
        heads: AttributeHeads | None = None,
    ):
        self.warehouse = warehouse
        self.ocr = OcrCache(warehouse) if ocr else None
        # the heads are required (a missing file is a clear error) and fixed for the run
        self.understanding = QueryUnderstanding.for_warehouse(
            warehouse,
            heads=heads,
            require_heads=True,
            cached=True,
            ocr_side=ocr_side,
            ocr_store=self.ocr,
        )
        self.heads = self.understanding.require_heads()
        self.catalog = CatalogStats(load_products(warehouse))
        self.quality = self._quality_cache()
        self.thresholds = QualityThresholds()

    @property
    def encoder(self) -> ImageEncoder:
        return self.understanding.encoder

    @property
    def hist_encoder(self) -> ImageEncoder:
        return self.understanding.hist_encoder

    def _quality_cache(self) -> dict[str, QualityReport]:
        """Quality figures the log stage measured (logs/image_quality), by hash or path."""
        if not self.warehouse.exists(IMAGE_QUALITY):
            return {}
        fields = [f.name for f in dataclasses.fields(QualityReport)]
        rows = self.warehouse.read(IMAGE_QUALITY, columns=["image_key", *fields]).to_pylist()
        return {
            row.pop("image_key"): QualityReport(**row)
            for row in rows
            if row["blur"] is not None and row["brightness"] is not None
        }

    # -- query facts ---------------------------------------------------------------------------
    def facts(self, batch: Sequence[MiningInput]) -> list[dict[str, Any] | str]:
        """One facts dict per request, or a reason string when its photo is unusable."""
        out: list[dict[str, Any] | str] = []
        queries = self.query_facts(batch)
        for item, q in zip(batch, queries, strict=True):
            if isinstance(q, str):
                out.append(q)
                continue
            facts = dict(q)
            facts.update(self.result_facts(facts, item))
            out.append(facts)
        return out

    def query_facts(self, batch: Sequence[MiningInput]) -> list[dict[str, Any] | str]:
        errors: dict[int, str] = {}
        photos: dict[int, Photo] = {}
        for i, item in enumerate(batch):
            try:
                key = item.image_hash or content_hash(item.image)
            except Exception as exc:
                errors[i] = describe_error(exc)
                continue
            photos[i] = self.understanding.photo(item.image, key=key)
        self.understanding.read(list(photos.values()))  # cached features, one heads call

        def failed() -> None:
            for i, photo in photos.items():
                if photo.error is not None and i not in errors:
                    errors[i] = describe_error(photo.error)

        failed()
        good = [i for i in range(len(batch)) if i not in errors]
        quality = {}
        for i in good:
            try:
                quality[i] = self._quality(batch[i], photos[i].key, lambda i=i: photos[i].image)
            except Exception as exc:
                errors[i] = describe_error(exc)
        texts: dict[int, str] = {}
        if self.ocr is not None:
            todo = [i for i in good if i not in errors]
            for i, text in zip(
                todo, self.understanding.read_text([photos[i] for i in todo]), strict=True
            ):
                texts[i] = text
            failed()
        out: list[dict[str, Any] | str] = []
        for i in range(len(batch)):
            if i in errors:
                out.append(errors[i])
                continue
            facts = self._predict(photos[i].reading())
            report = quality[i]
            facts.update(
                {
                    "query.blur": round(report.blur, 3),
                    "query.brightness": round(report.brightness, 3),
                    "query.low_quality": bool(reasons(report, self.thresholds)),
                    "query.text": clean_text(texts.get(i)),
                }
            )
            out.append(facts)
        return out

    @staticmethod
    def _predict(reading: HeadReading) -> dict[str, Any]:
        """Query attribute facts from the heads' reading of one photo."""
        facts: dict[str, Any] = {}
        for attr in ATTRS:
            label, conf = reading.best(attr)
            facts[f"query.{attr}"] = None if label == UNKNOWN else label
            facts[f"query.{attr}_p"] = round(conf, 4)
        p = reading.probabilities.get("pattern")
        classes = reading.classes.get("pattern", ())
        prints = [j for j, c in enumerate(classes) if c not in PLAIN_PATTERNS]
        if p is None or not prints:
            facts["query.print"], facts["query.print_p"] = None, 0.0
        else:
            best = max(prints, key=lambda j: p[j])
            facts["query.print"] = classes[best]
            facts["query.print_p"] = round(float(p[prints].sum()), 4)
        return facts

    def _quality(self, item: MiningInput, key: str, image) -> QualityReport:
        cached = self.quality.get(key) or self.quality.get(item.image)
        return cached or measure(image(), nsfw=False)

    # -- result facts --------------------------------------------------------------------------
    def result_facts(self, q: dict[str, Any], item: MiningInput) -> dict[str, Any]:
        results = item.results
        n = len(results)
        scores = [r.score for r in results]
        f: dict[str, Any] = {
            "results.count": n,
            "results.top_score": round(scores[0], 4) if n else None,
            "results.relevance": round(float(np.mean(scores[:4])), 4) if n else None,
            "results.mean_score": round(float(np.mean(scores)), 4) if n else None,
            "results.top_id": results[0].product_id if n else None,
        }
        for attr in (*ATTRS, "price"):
            f[f"top.{attr}"] = getattr(results[0], attr) if n else None
        for attr in ATTRS:
            values = [getattr(r, attr) for r in results]
            counts = Counter(v for v in values if v)
            top, top_n = counts.most_common(1)[0] if counts else (None, 0)
            mine = q.get(f"query.{attr}")
            f[f"results.{attr}_match"] = round(sum(v == mine for v in values) / n, 4) if n else 0
            f[f"results.{attr}_top"] = top
            f[f"results.{attr}_top_share"] = round(top_n / n, 4) if n else 0.0
            f[f"results.{attr}_entropy"] = round(_entropy(counts, n), 4)
            confident = mine is not None and q.get(f"query.{attr}_p", 0) >= CONFIDENT
            f[f"diff.{attr}"] = bool(confident and top is not None and mine != top)
        depts = Counter(r.department for r in results if r.department)
        f["results.department_top"] = depts.most_common(1)[0][0] if depts else None
        f.update(self._price_facts(q, f, results))
        f.update(self._variant_facts(results))
        f.update(self._material_facts(results))
        f.update(self._department_facts(q, f))
        return f

    def _type_of(self, q: dict[str, Any], f: dict[str, Any]) -> str | None:
        """The query's type: the head's guess when confident, else what the results show."""
        if q.get("query.category") and q.get("query.category_p", 0) >= 0.5:
            return q["query.category"]
        return f.get("results.category_top")

    def _price_facts(self, q, f, results) -> dict[str, Any]:
        prices = [r.price for r in results if r.price is not None]
        out: dict[str, Any] = dict.fromkeys(
            (
                "price.min",
                "price.median",
                "price.max",
                "price.anchor",
                "price.cheaper_share",
                "price.pricier_share",
                "price.low_share",
                "price.high_share",
                "price.q25",
                "price.q50",
                "price.q75",
                "price.percentile",
                "price.headroom",
                "price.cheaper_alternatives",
                "price.pricier_alternatives",
                "price.cheaper_in_catalog",
                "price.pricier_in_catalog",
            ),
        )
        out["price.known"] = len(prices)
        quant = self.catalog.quantiles(self._type_of(q, f))
        if quant:
            out["price.q25"], out["price.q50"], out["price.q75"] = (round(v, 6) for v in quant)
        if not prices:
            return out
        # The anchor stands for the photographed item: the first priced result of the top 3
        # (usually the item itself), else the median price of the results' main kind.
        head = next((r for r in results[:3] if r.price is not None), None)
        if head:
            kind = (head.category, head.index_group)
        else:
            kind = (f.get("results.category_top"), f.get("results.index_group_top"))
        of_kind = [
            r.price for r in results if r.price is not None and (r.category, r.index_group) == kind
        ]
        anchor = head.price if head else float(np.median(of_kind or prices))
        others = [r.price for r in results if r.price is not None and r is not head]
        same = [
            r.price
            for r in results
            if r.price is not None and r is not head and (r.category, r.index_group) == kind
        ]
        prices_of_kind = self.catalog.kind_prices.get(kind)
        if prices_of_kind is not None and len(prices_of_kind):
            below = int(np.searchsorted(prices_of_kind, anchor, side="left"))
            out["price.percentile"] = round(below / len(prices_of_kind), 4)
            out["price.headroom"] = round(1 - below / len(prices_of_kind), 4)
            out["price.cheaper_in_catalog"] = int(
                np.searchsorted(prices_of_kind, 0.75 * anchor, side="right")
            )
            out["price.pricier_in_catalog"] = int(
                len(prices_of_kind) - np.searchsorted(prices_of_kind, 1.25 * anchor, side="left")
            )
        out["price.cheaper_alternatives"] = sum(p <= 0.75 * anchor for p in same)
        out["price.pricier_alternatives"] = sum(p >= 1.25 * anchor for p in same)
        out.update(
            {
                "price.min": round(min(prices), 6),
                "price.median": round(float(np.median(prices)), 6),
                "price.max": round(max(prices), 6),
                "price.anchor": round(anchor, 6),
                "price.cheaper_share": _share(others, lambda p: p < 0.9 * anchor),
                "price.pricier_share": _share(others, lambda p: p > 1.1 * anchor),
            }
        )
        if quant:
            out["price.low_share"] = _share(prices, lambda p: p <= quant[0])
            out["price.high_share"] = _share(prices, lambda p: p >= quant[2])
        return out

    def _variant_facts(self, results) -> dict[str, Any]:
        shown = {r.product_id for r in results}
        hidden: list[str | None] = []
        for r in results[:3]:
            for pid, colour in self.catalog.variants.get(r.variant_group or "", ()):
                if pid not in shown:
                    shown.add(pid)
                    hidden.append(colour)
        colours = list(dict.fromkeys(c for c in hidden if c))[:3]
        return {
            "variants.group": results[0].variant_group if results else None,
            "variants.hidden": len(hidden),
            "variants.colours": ", ".join(colours) or None,
        }

    def _material_facts(self, results) -> dict[str, Any]:
        weights: Counter[str] = Counter()
        care: list[str] = []
        for r in results[:3]:
            mats, phrases = self.catalog.materials(r.product_id, r.description)
            for m in mats:
                weights[m] += 4 - r.rank if r.rank <= 3 else 1
            care.extend(phrases)
        ordered = [m for m, _ in weights.most_common()]
        delicate = [m for m in ordered if m in DELICATE]
        return {
            "materials.top": ordered[0] if ordered else None,
            "materials.all": ", ".join(ordered[:4]) or None,
            "materials.count": len(ordered),
            "materials.delicate": delicate[0] if delicate else None,
            "care.text": ", ".join(dict.fromkeys(care)) or None,
        }

    def _department_facts(self, q, f) -> dict[str, Any]:
        shown = f.get("results.index_group_top") or q.get("query.index_group")
        audiences = self.catalog.audiences.get(self._type_of(q, f) or "", Counter())
        total = sum(audiences.values())
        for audience, count in audiences.most_common():
            if audience != shown:
                return {
                    "department.other": audience,
                    "department.other_share": round(count / total, 4),
                }
        return {"department.other": None, "department.other_share": 0.0}


def _entropy(counts: Counter, n: int) -> float:
    if n <= 1 or not counts:
        return 0.0
    probs = np.array(list(counts.values()), dtype=float) / n
    return float(-(probs * np.log(probs)).sum() / math.log(n))


def _share(values, predicate) -> float | None:
    return round(sum(1 for v in values if predicate(v)) / len(values), 4) if values else None


def metadata_top(item: MiningInput, facts: dict[str, Any], n: int = 10) -> list[dict[str, str]]:
    """The product metadata ranked by importance, first `n` elements (paper §IV-A(a)).

    Importance: how many of the results share the element, weighted by rank (1/rank), doubled
    where the element contradicts the query (a discrepancy is what the reasoning needs most).
    """
    scores: dict[tuple[str, str], float] = {}
    for r in item.results:
        weight = 1.0 / r.rank
        for key, value in (
            ("type", r.category),
            ("colour", r.colour),
            ("pattern", r.pattern),
            ("audience", r.index_group),
            ("department", r.department),
        ):
            if value:
                scores[(key, value)] = scores.get((key, value), 0.0) + weight
    for attr, key in (
        ("category", "type"),
        ("colour", "colour"),
        ("pattern", "pattern"),
        ("index_group", "audience"),
    ):
        top = facts.get(f"results.{attr}_top")
        if facts.get(f"diff.{attr}") and (key, top) in scores:
            scores[(key, top)] *= 2.0
    extra = []
    if facts.get("price.known"):
        span = f"{facts['price.min']:.4g}-{facts['price.max']:.4g}"
        extra.append(("price range", span, 1.5))
    if facts.get("materials.all"):
        extra.append(("material", facts["materials.all"], 1.2))
    if facts.get("variants.hidden"):
        colours = facts.get("variants.colours") or "other colours"
        extra.append(("hidden variants", f"{facts['variants.hidden']} ({colours})", 1.1))
    if facts.get("care.text"):
        extra.append(("care", facts["care.text"], 1.0))
    ranked = sorted(
        [(k, v, s) for (k, v), s in scores.items()] + extra, key=lambda e: (-e[2], e[0], e[1])
    )
    return [{"key": k, "value": v, "importance": round(s, 3)} for k, v, s in ranked[:n]]
