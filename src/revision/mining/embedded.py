"""The embedded analyst: perception (stage 1) plus evidence and expert rules (stage 2), CPU only.

Trade-off: deterministic and fast (a cached feature lookup, a small MLP and a few dict passes
per request) instead of a 72B VLM and a 30B LLM; it can only say what its facts and rules
express, so new kinds of discrepancy need a new fact or rule, where an LLM would improvise.

What it reads: the photo and its results (perception), and what the logs say around the request
(`revision.mining.evidence`): follow-up events, the user's history and session, outcomes of
tools shown before. How it orders its signals: an evidence rule that fired (a follow-up said
what the user wanted) comes first; the rest by a calibration fitted on the run's own settled
requests (`revision.mining.calibration`, option `calibration`), else by rule confidence. At most
`max_signals` (3) per request. Its thinking is composed from the facts and the rules that
fired; product titles never enter it (untrusted text), only catalog labels, numbers, cleaned
OCR and cleaned, quoted user text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revision.catalog.schema import load_products
from revision.errors import ConfigError, InputError
from revision.mining._base import (
    Analysis,
    Analyst,
    MiningInput,
    Signal,
    config_from_options,
)
from revision.mining.calibration import NONE, Calibration
from revision.mining.evidence import cross_facts, evidence_facts
from revision.mining.perception import Perception, metadata_top
from revision.mining.rules import FACTS, Rule, load_rules
from revision.warehouse import Warehouse

CALIBRATION_MODES = ("auto", "off")
EVIDENCE_BONUS = 1.0  # a settled intent outranks every calibrated guess


@dataclass
class EmbeddedConfig:
    """Options of the `embedded` backend (`revision mine run --option k=v`)."""

    rules: str = ""  # an expert rules file (default: the shipped rules)
    ocr: bool = False  # read text (brands, labels) on query photos; cached per photo hash
    ocr_side: int = 640  # photos are shrunk to fit this square before OCR (cost ~ pixels)
    # auto: fit on the run's requests whose follow-up settles the intent; off: rule order;
    # or the folder of a saved calibration
    calibration: str = "auto"

    def __post_init__(self) -> None:
        if self.ocr_side < 32:
            raise ConfigError(f"embedded backend: ocr_side={self.ocr_side} is below 32 pixels")


class EmbeddedAnalyst(Analyst):
    name = "embedded"

    def __init__(self, warehouse: Warehouse, *, perception: Perception | None = None, **options):
        self.config = config_from_options(EmbeddedConfig, options, "embedded")
        self.rules = load_rules(self.config.rules or None)
        self.perception = perception or Perception(
            warehouse, ocr=self.config.ocr, ocr_side=self.config.ocr_side
        )
        products = load_products(warehouse)
        self.audiences = sorted(products["index_group"].dropna().unique().tolist())
        self.colours = sorted(products["colour"].dropna().unique().tolist())
        self.calibration: Calibration | None = None
        self.notes: dict[str, Any] = {}
        mode = self.config.calibration
        if mode not in CALIBRATION_MODES:
            self.calibration = Calibration.load(mode)

    # -- the run ---------------------------------------------------------------------------------
    def prepare(self, inputs: Callable[[], list[MiningInput]], folder) -> dict[str, Any]:
        """Fit the calibration on the run's settled requests (once; a resumed run loads it)."""
        if self.config.calibration != "auto":
            return {}
        folder = Path(folder)
        if (folder / "calibration.json").exists():
            self.calibration = Calibration.load(folder)
        else:
            rows, labels = [], []
            batch = inputs()
            for item, facts in zip(batch, self.perception.facts(batch), strict=True):
                if isinstance(facts, str):
                    continue
                facts = self.all_facts(item, facts)
                rows.append(facts)
                labels.append(self.label(facts))
            try:
                calibration = Calibration().fit(rows, labels, FACTS)
            except InputError as exc:  # too few settled requests: rule order it is
                self.notes["calibration"] = str(exc)
                return {"calibration": "off"}
            calibration.save(folder)
            self.calibration = calibration
        return {"calibration": str(folder)}

    def stats(self) -> dict[str, Any]:
        if self.calibration is None:
            return dict(self.notes)
        return {
            "calibration_labels": self.calibration.n_labels_,
            "calibration_classes": self.calibration.label_counts_,
        }

    def label(self, facts: dict[str, Any]) -> str | tuple[str, ...] | None:
        """The intent a follow-up settles: the action of the evidence rules that fired, or
        their candidates when they point two ways (a tapped colour: another variant, or the
        colour meant?); `NONE` when the user followed up in a way no tool answers
        (re-uploaded, searched the title); None without a follow-up."""
        actions = {s.action for r, s in self.rules.rules.apply(facts, limit=None) if r.evidence}
        if len(actions) == 1:
            return actions.pop()
        if actions:
            return tuple(sorted(actions))  # the calibration weighs the candidates
        return NONE if facts.get("events.any") else None

    def all_facts(self, item: MiningInput, facts: dict[str, Any]) -> dict[str, Any]:
        out = {**facts, **evidence_facts(item.context, self.audiences, self.colours)}
        cross_facts(out)
        return out

    # -- a batch ---------------------------------------------------------------------------------
    def analyse(self, batch: list[MiningInput]) -> list[Analysis]:
        out: list[Analysis | None] = []
        ready: list[tuple[int, MiningInput, dict]] = []
        for item, facts in zip(batch, self.perception.facts(batch), strict=True):
            if isinstance(facts, str):
                out.append(Analysis.failed(item.request_id, "perception", facts))
            else:
                ready.append((len(out), item, self.all_facts(item, facts)))
                out.append(None)
        probas = (
            self.calibration.proba([f for _, _, f in ready])
            if self.calibration is not None
            else [None] * len(ready)
        )
        for (i, item, facts), proba in zip(ready, probas, strict=True):
            out[i] = self.reason(item, facts, proba)
        return out  # type: ignore[return-value]

    def reason(
        self, item: MiningInput, facts: dict[str, Any], proba: dict[str, float] | None = None
    ) -> Analysis:
        """Stage 2: metadata top-10, evidence and expert rules -> thinking and signals."""
        metadata = metadata_top(item, facts)
        fired = self.rules.rules.apply(facts, limit=None)
        scored = []
        for order, (rule, signal) in enumerate(fired):
            if rule.evidence:  # settled; where evidence points two ways, calibration decides
                p = proba.get(signal.action, 0.0) if proba is not None else 0.0
                score = EVIDENCE_BONUS + signal.confidence + p
            elif proba is not None:
                score = proba.get(signal.action, 0.0) + 1e-3 * signal.confidence
            else:
                score = signal.confidence
            scored.append(
                (-score, order, rule, Signal(signal.action, signal.info, round(score, 4)))
            )
        scored.sort(key=lambda x: (x[0], x[1]))
        kept = [(rule, signal) for _, _, rule, signal in scored[: self.rules.rules.max_signals]]
        return Analysis(
            request_id=item.request_id,
            thinking=compose_thinking(facts, metadata, kept),
            signals=[signal for _, signal in kept],
            facts={**facts, "metadata": metadata, "rules": [rule.name for rule, _ in kept]},
        )


def _share(facts: dict[str, Any], attr: str) -> str:
    n = facts.get("results.count") or 0
    return f"{round((facts.get(f'results.{attr}_match') or 0) * n)}/{n}"


def compose_thinking(facts: dict[str, Any], metadata: list[dict], fired: list[tuple[Rule, Any]]):
    """A short reasoning text: what the photo shows, how the results differ, what to do."""
    seen = [
        f"{facts[f'query.{a}']} ({facts[f'query.{a}_p']:.2f})"
        for a in ("colour", "pattern", "category", "index_group")
        if facts.get(f"query.{a}")
    ]
    parts = [
        "The query photo shows "
        + (", ".join(seen) if seen else "nothing the heads are sure of")
        + (" and is of low quality" if facts.get("query.low_quality") else "")
        + (f"; legible text: {facts['query.text']}" if facts.get("query.text") else "")
        + "."
    ]
    n = facts.get("results.count") or 0
    parts.append(
        f"Its {n} results have relevance {facts.get('results.relevance') or 0:.2f}; "
        f"{_share(facts, 'colour')} share its colour (mostly {facts.get('results.colour_top')}), "
        f"{_share(facts, 'category')} its type, {_share(facts, 'pattern')} its pattern."
    )
    if facts.get("price.known"):
        parts.append(
            f"{facts['price.known']} results are priced, {facts['price.min']:.3g} to "
            f"{facts['price.max']:.3g}; the item itself is likely {facts['price.anchor']:.3g}."
        )
    if facts.get("variants.hidden"):
        parts.append(f"{facts['variants.hidden']} colour variants of the top designs are hidden.")
    if metadata:
        parts.append(
            "Key metadata: " + "; ".join(f"{m['key']} {m['value']}" for m in metadata) + "."
        )
    parts.extend(_evidence_sentences(facts))
    if fired:
        steps = [
            f"{i}) {signal} ({rule.description.rstrip('.').lower() or rule.name})"
            for i, (rule, signal) in enumerate(fired, start=1)
        ]
        parts.append("So: " + "; ".join(steps) + ".")
    return " ".join(parts)


def _evidence_sentences(f: dict[str, Any]) -> list[str]:
    """What the user did: follow-ups (text quoted, as data), history, session."""
    out = []
    did = []
    if f.get("events.sort_price"):
        did.append(
            f"sorted by price {'ascending' if f['events.sort_price'] == 'asc' else 'descending'}"
        )
    for key, words in (
        ("events.filter_colour", "filtered by the colour"),
        ("events.filter_department", "switched to the department"),
        ("events.open_details", "opened the details on"),
    ):
        if f.get(key):
            did.append(f"{words} {f[key]}")
    if f.get("events.text"):
        did.append(f'typed the query "{f["events.text"]}"')
    if f.get("events.reupload"):
        did.append("re-uploaded a photo")
    if did:
        out.append("Afterwards the user " + ", ".join(did) + ".")
    if f.get("user.requests"):
        level = f.get("user.price_level")
        price = f", buying at {level:+.2f} log-price against type medians" if level else ""
        home = f", mostly for {f['user.home_group']}" if f.get("user.home_group") else ""
        out.append(
            f"The user made {int(f['user.requests'])} earlier requests and "
            f"{int(f.get('user.orders') or 0)} orders{price}{home}."
        )
    return out
