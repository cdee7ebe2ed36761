"""A training run's report: `curves.png` (one panel per logged metric), `history.json` and
`report.html` in the output folder.

Trade-off: a static page next to its PNG instead of a dashboard: it opens offline and is
archived with the checkpoints. Sample text comes from training data and model output, so the
template autoescapes everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from jinja2 import Environment

_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}table{border-collapse:collapse;margin-bottom:1.5em}</style>
</head><body>
<h1>{{ title }}</h1>
<table>{% for key, value in summary.items() %}
<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}
</table>
{% if curves %}<img alt="training curves" src="{{ curves }}">{% endif %}
{% if examples %}<h2>Examples</h2>
<table><tr>{% for key in examples[0] %}<th>{{ key }}</th>{% endfor %}</tr>
{% for row in examples %}<tr>{% for value in row.values() %}<td>{{ value }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
</body></html>
"""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def plot_curves(history: Sequence[Mapping[str, float]], keys: Sequence[str], path: Path) -> bool:
    """One panel per metric in `keys` against the step; False when there is nothing to plot."""
    keys = [k for k in keys if any(k in row for row in history)]
    if not keys:
        return False
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(4 * len(keys), 3))
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        points = [(row["step"], row[key]) for row in history if key in row]
        ax.plot([p[0] for p in points], [p[1] for p in points], color="#4477aa")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=80)
    os.replace(tmp, path)
    return True


def write_report(
    output_dir: str | Path,
    title: str,
    history: Sequence[Mapping[str, float]],
    curves: Sequence[str],
    summary: Mapping[str, object],
    examples: Sequence[Mapping[str, object]] = (),
) -> Path:
    """Write the `curves` (metric names), the history and the HTML page; returns its path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(output_dir / "history.json", json.dumps(list(history)).encode())
    curves = "curves.png" if plot_curves(history, curves, output_dir / "curves.png") else ""
    page = (
        Environment(autoescape=True)
        .from_string(_TEMPLATE)
        .render(title=title, summary=summary, curves=curves, examples=list(examples))
    )
    _atomic_write(output_dir / "report.html", page.encode("utf-8"))
    return output_dir / "report.html"
