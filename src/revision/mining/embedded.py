"""The embedded analyst: perception (stage 1) plus expert rules (stage 2), CPU only.

Trade-off: deterministic and fast (a cached feature lookup, a small MLP and a few dict passes
per request) instead of a 72B VLM and a 30B LLM; it can only say what its facts and rules
express, so new kinds of discrepancy need a new fact or rule, where an LLM would improvise.
Its thinking is composed from the facts and the rules that fired; product titles never enter
it (they are untrusted text), only catalog labels, numbers and cleaned OCR text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from revision.errors import ConfigError
from revision.mining._base import (
    Analysis,
    Analyst,
    MiningInput,
    config_from_options,
)
from revision.mining.perception import Perception, metadata_top
from revision.mining.rules import Rule, load_rules
from revision.warehouse import Warehouse


@dataclass
class EmbeddedConfig:
    """Options of the `embedded` backend (`revision mine run --option k=v`)."""

    rules: str = ""  # an expert rules file (default: the shipped rules)
    ocr: bool = False  # read text (brands, labels) on query photos; cached per photo hash
    ocr_side: int = 640  # photos are shrunk to fit this square before OCR (cost ~ pixels)

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

    def analyse(self, batch: list[MiningInput]) -> list[Analysis]:
        out = []
        for item, facts in zip(batch, self.perception.facts(batch), strict=True):
            if isinstance(facts, str):
                out.append(Analysis.failed(item.request_id, "perception", facts))
            else:
                out.append(self.reason(item, facts))
        return out

    def reason(self, item: MiningInput, facts: dict[str, Any]) -> Analysis:
        """Stage 2: metadata top-10 + expert rules -> thinking and ordered signals."""
        metadata = metadata_top(item, facts)
        fired = self.rules.rules.apply(facts)
        return Analysis(
            request_id=item.request_id,
            thinking=compose_thinking(facts, metadata, fired),
            signals=[signal for _, signal in fired],
            facts={**facts, "metadata": metadata, "rules": [rule.name for rule, _ in fired]},
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
    if fired:
        steps = [
            f"{i}) {signal} ({rule.description.rstrip('.').lower() or rule.name})"
            for i, (rule, signal) in enumerate(fired, start=1)
        ]
        parts.append("So: " + "; ".join(steps) + ".")
    return " ".join(parts)
