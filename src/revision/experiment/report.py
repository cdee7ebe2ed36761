"""The experiment's HTML report: lift bars with 95% intervals, daily series, per-intent bars."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader

from revision.warehouse import Warehouse

LABELS = {
    "no_click_ratio": "no-click ratio",
    "ctr": "CTR",
    "cvr": "CVR",
    "orders_per_request": "orders / request",
    "gmv_per_request": "GMV / request",
}

TEMPLATE = "report.html.j2"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(analysis: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    subset = analysis.get("triggered") or analysis.get("all") or {}
    if subset:
        metrics = list(LABELS)
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
        for ax, m in zip(axes, metrics, strict=True):
            arms = [a for a, b in subset.items() if b["lift"][m].get("lift") is not None]
            lifts = [100 * subset[a]["lift"][m]["lift"] for a in arms]
            lo = [
                100 * (subset[a]["lift"][m]["lift"] - subset[a]["lift"][m]["ci95"][0]) for a in arms
            ]
            hi = [
                100 * (subset[a]["lift"][m]["ci95"][1] - subset[a]["lift"][m]["lift"]) for a in arms
            ]
            ax.bar(arms, lifts, yerr=[lo, hi], capsize=4, color="#4a7")
            ax.axhline(0, color="#333", lw=0.8)
            ax.set_title(f"{LABELS[m]} lift, %")
            ax.tick_params(axis="x", rotation=30)
        out.append(
            ("Lifts on the trigger subset" if analysis.get("triggered") else "Lifts", _png(fig))
        )
        plt.close(fig)
    daily = analysis.get("daily") or {}
    if daily:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        days = sorted(daily)
        for arm in analysis["arms"]:
            ax.plot(days, [daily[d].get(arm) for d in days], marker="o", label=arm)
        ax.set_ylabel("no-click ratio")
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
        out.append(("Daily no-click ratio", _png(fig)))
        plt.close(fig)
    per = analysis.get("per_intent_triggered") or {}
    if per:
        intents = sorted({k.split("|")[0] for k in per})
        fig, ax = plt.subplots(figsize=(9, 3.4))
        width = 0.8 / max(1, len(analysis["arms"]))
        for j, arm in enumerate(analysis["arms"]):
            values = [(per.get(f"{i}|{arm}") or {}).get("no_click_ratio") or 0 for i in intents]
            ax.bar([x + j * width for x in range(len(intents))], values, width, label=arm)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(intents))], intents, rotation=30)
        ax.set_ylabel("no-click ratio (trigger subset)")
        ax.legend()
        out.append(("Per hidden intent (evaluation only)", _png(fig)))
        plt.close(fig)
    return out


def write_report(
    warehouse: Warehouse,
    analysis: dict[str, Any],
    path: str | Path | None = None,
    *,
    title: str = "Experiment",
    run: dict | None = None,
) -> Path:
    import json

    target = Path(path) if path else warehouse.artifact("reports", "experiment.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    html = (
        Environment(loader=PackageLoader("revision.experiment", "."), autoescape=True)
        .get_template(TEMPLATE)
        .render(
            title=title,
            analysis=analysis,
            labels=LABELS,
            plots=plots(analysis),
            run=json.dumps(run, indent=2, default=str) if run else None,
        )
    )
    tmp = target.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(target)
    return target
