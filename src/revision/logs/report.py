"""The logs HTML report: one self-contained page (plots embedded as PNG data URIs).

Trade-off: static matplotlib images instead of an interactive dashboard: the page opens
anywhere offline, can be mailed or archived with the run, and needs no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from revision.warehouse import Warehouse

REPORT = ("reports", "logs.html")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar(labels, values, title, ylabel, *, rotate=False, ylim=None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([str(x) for x in labels], values, color="#4477aa")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if rotate:
        ax.tick_params(axis="x", labelrotation=45)
    return _png(fig)


def _img(labels, values, title, ylabel, **kw) -> str:
    return f'<img alt="{html.escape(title)}" src="{_bar(labels, values, title, ylabel, **kw)}">'


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_report(stats: dict) -> str:
    """The HTML page for `stats` (the dict of `compute_stats`)."""
    import matplotlib

    matplotlib.use("Agg")
    parts = ["<h1>Search logs</h1>"]
    headline = {
        k: stats.get(k)
        for k in (
            "requests",
            "users",
            "impressions",
            "clicks",
            "ctr",
            "no_click",
            "no_click_ratio",
            "bot_share",
            "orders",
            "cvr",
            "gmv",
            "window_s",
        )
    }
    parts.append(_table([{"figure": k, "value": v} for k, v in headline.items()]))
    parts.append("<h2>Bad-input rules applied</h2>")
    parts.append(_table([{"rule": k, "count": v} for k, v in stats["rules"].items()]))

    days = stats.get("per_day", [])
    if days:
        labels = [d["dt"] for d in days]
        parts.append("<h2>Per day</h2>")
        parts.append(
            _img(labels, [d["requests"] for d in days], "Requests per day", "requests", rotate=True)
        )
        parts.append(
            _img(
                labels,
                [d["no_click_ratio"] or 0 for d in days],
                "No-click ratio per day",
                "no-click ratio",
                rotate=True,
                ylim=(0, 1),
            )
        )
    extraction = stats.get("extraction")
    if extraction:
        dropped = extraction["dropped"]
        parts.append("<h2>No-click extraction</h2>")
        parts.append(
            _img(
                ["kept", *dropped],
                [extraction["kept"], *dropped.values()],
                "No-click requests: kept and drop reasons",
                "requests",
            )
        )
    ranks = stats.get("ctr_by_rank", [])
    if ranks:
        parts.append("<h2>CTR by rank</h2>")
        parts.append(
            _img(
                [r["rank"] for r in ranks],
                [r["ctr"] or 0 for r in ranks],
                "CTR by rank",
                "clicks / impressions",
            )
        )

    ev = stats.get("evaluation")
    if ev:
        parts.append('<section class="eval"><h2>Evaluation only (simulator truth)</h2>')
        parts.append(
            "<p>These figures use the simulator's hidden ground truth "
            "(<code>sim/truth</code>). No stage of the pipeline reads them.</p>"
        )
        intents = ev.get("no_click_by_intent", [])
        if intents:
            parts.append(
                _img(
                    [r["intent"] or "(none: bots)" for r in intents],
                    [r["no_click_ratio"] or 0 for r in intents],
                    "No-click ratio per hidden intent (evaluation only)",
                    "no-click ratio",
                    rotate=True,
                    ylim=(0, 1),
                )
            )
            parts.append(_table(intents))
        photos = ev.get("no_click_by_photo", [])
        if photos:
            parts.append("<h3>No-click ratio per photo kind</h3>" + _table(photos))
        bots = ev.get("bot_filter")
        if bots:
            parts.append(f"<h3>Bot filter ({html.escape(bots['method'])}) against truth</h3>")
            keys = ("precision", "recall", "f1", "tp", "fp", "fn")
            parts.append(
                _table(
                    [
                        {"level": lvl, **{k: bots[lvl][k] for k in keys}}
                        for lvl in ("per_user", "per_request")
                    ]
                )
            )
        quality = ev.get("quality_filter")
        if quality:
            parts.append(
                "<h3>Low-quality filter against the simulator's degraded photos "
                f"({', '.join(quality['degraded_kinds'])})</h3>"
            )
            parts.append(
                _table(
                    [
                        {
                            k: quality[k]
                            for k in ("requests", "precision", "recall", "f1", "tp", "fp", "fn")
                        }
                    ]
                )
            )
            parts.append(
                _table([{"photo_kind": k, **v} for k, v in quality["flagged_by_kind"].items()])
            )
        parts.append("</section>")
    parts.append(
        "<h2>All figures (JSON)</h2><pre>"
        + html.escape(json.dumps(stats, indent=1, default=str))
        + "</pre>"
    )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        ".eval{border:2px dashed #aa3377;padding:0 1em;margin-top:2em}"
        "pre{font-size:small;background:#f6f6f6;overflow:auto}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>revision: search logs"
        f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_report(warehouse: Warehouse, stats: dict, path: str | Path | None = None) -> Path:
    """Write the page to `path` (default `artifacts/reports/logs.html`); returns the path."""
    target = Path(path) if path else warehouse.artifact(*REPORT)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render_report(stats), encoding="utf-8")
    tmp.replace(target)
    return target
