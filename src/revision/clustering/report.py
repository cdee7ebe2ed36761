"""A self-contained HTML report of a clustering run: sizes, examples and one bar chart.

The chart is a matplotlib PNG embedded as base64, so the file can be mailed or archived alone.
Every action text is escaped: it is mined user data.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from revision.clustering.hierarchy import HierarchicalClusterer
from revision.text.tokenize import has_cjk

_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "WenQuanYi Zen Hei",
    "Source Han Sans SC",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Droid Sans Fallback",
)


def _cjk_font() -> str | None:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in _CJK_FONTS if n in names), None)


def _plot(hier: dict[str, Any]) -> str:
    import matplotlib

    cjk = _cjk_font()

    def fit(label: str, fallback: str) -> str:
        # without a CJK font matplotlib draws empty boxes: the tables below keep the full text
        return label if cjk or not has_cjk(label) else fallback

    labels, sizes, colours = [], [], []
    palette = matplotlib.colormaps["tab10"]
    for i, m in enumerate(hier["main_categories"]):
        for s in m["subcategories"]:
            labels.append(f"{m['name']} › {s['name']}")
            sizes.append(s["size"])
            colours.append(palette(i % 10))
    un = hier["unassigned"]
    for c in sorted(un["aux_clusters"], key=lambda c: -c["size"])[:15]:
        labels.append(fit(f"aux {c['id']}: {c['label']}"[:60], f"aux {c['id']}"))
        sizes.append(c["size"])
        colours.append("0.6")
    if un["noise"]:
        labels.append("unassigned, no cluster")
        sizes.append(un["noise"])
        colours.append("0.85")
    fonts = {"font.family": [cjk, "DejaVu Sans"]} if cjk else {}
    with matplotlib.rc_context(fonts):
        return _draw(labels, sizes, colours)


def _draw(labels: list[str], sizes: list[int], colours: list) -> str:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(9, 0.28 * max(len(labels), 4) + 1.2))
    ax = fig.subplots()
    ax.barh(range(len(labels)), sizes, color=colours)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("actions")
    ax.set_title("Actions per subcategory (colour = main category; grey = unassigned)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def render_report(
    model: HierarchicalClusterer,
    *,
    title: str = "Clustering report",
    meta: dict[str, Any] | None = None,
    n_examples: int = 5,
) -> str:
    """The report as an HTML string."""
    hier = model.hierarchy(max_actions=n_examples)
    summ = model.summary()
    rows = []
    for m in hier["main_categories"]:
        for s in m["subcategories"]:
            ex = "<br>".join(
                f"{escape(a['action'])} <small>×{a['count']}, "
                f"{'–' if a['score_sub'] is None else a['score_sub']}</small>"
                for a in s["actions"]
            )
            rows.append(
                f"<tr><td>{escape(m['name'])}</td><td>{escape(s['name'])}</td>"
                f"<td>{escape(s['tool'] or '')}</td><td class=n>{s['size']}</td><td>{ex}</td></tr>"
            )
    aux_rows = [
        f"<tr><td class=n>{c['id']}</td><td>{escape(c['label'])}</td>"
        f"<td>{escape(', '.join(c['keywords']))}</td><td class=n>{c['size']}</td>"
        f"<td>{'<br>'.join(escape(e) for e in c['examples'])}</td></tr>"
        for c in sorted(hier["unassigned"]["aux_clusters"], key=lambda c: -c["size"])
    ]
    meta = {**(meta or {}), **model.get_params(), "encoder": summ["encoder"]}
    meta_html = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in meta.items()
    )
    summ_html = "".join(
        f"<tr><th>{escape(k)}</th><td class=n>{escape(str(v))}</td></tr>" for k, v in summ.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
td.n {{ text-align: right; }} small {{ color: #777; }}
</style></head><body>
<h1>{escape(title)}</h1>
<h2>Summary</h2><table>{summ_html}</table>
<h2>Run</h2><table>{meta_html}</table>
<h2>Sizes</h2><img alt="actions per subcategory" src="data:image/png;base64,{_plot(hier)}">
<h2>Ontology (main → sub → actions)</h2>
<table><tr><th>main</th><th>sub</th><th>tool</th><th>actions</th>
<th>examples (count, score)</th></tr>
{"".join(rows)}</table>
<h2>Auxiliary clusters of unassigned actions (DBSCAN)</h2>
<table><tr><th>id</th><th>label</th><th>keywords</th><th>actions</th><th>examples</th></tr>
{"".join(aux_rows) or "<tr><td colspan=5>none</td></tr>"}</table>
</body></html>
"""


def write_report(model: HierarchicalClusterer, path: str | Path, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(model, **kwargs), encoding="utf-8")
    tmp.replace(path)
    return path
