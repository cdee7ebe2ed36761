"""A picture of a plan's DAG: the main search as a lane of stages, each tool under its stage.

Only the transitive reduction is drawn (an edge implied by two others is left out), so the
picture shows what must wait for what; tools side by side in a column run concurrently.
"""

from __future__ import annotations

from pathlib import Path

from revision.errors import InputError
from revision.tools._base import ToolStage
from revision.tools.dag import ToolDag

FORMATS = (".png", ".svg", ".pdf")
_COLOURS = {
    ToolStage.QUERY: "#d0e1f9",
    ToolStage.RECALL: "#c7e9c0",
    ToolStage.FILTER: "#fdd0a2",
    ToolStage.RANK: "#fcbba1",
    ToolStage.DISPLAY: "#dadaeb",
    ToolStage.INTERACTION: "#f6e8c3",
}


def render_dag(dag: ToolDag, path: str | Path, title: str | None = None) -> Path:
    """Draw `dag` to `path` (.png, .svg or .pdf) and return the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"{path}: unsupported picture format; use one of {', '.join(FORMATS)}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import networkx as nx

    stages = list(ToolStage)
    column = {s: i for i, s in enumerate(stages)}
    graph = dag.reduced()
    pos: dict = {}
    depth: dict[ToolStage, int] = {}
    for step in dag.order():
        stage = dag.stage_of(step.index)
        depth[stage] = depth.get(stage, 0) + 1
        pos[step.index] = (column[stage] * 2.0, -1.4 * depth[stage])
    rows = max(depth.values(), default=1)
    fig, ax = plt.subplots(figsize=(2.1 * len(stages) + 1, 1.3 * rows + 2.2))
    # the main search lane
    for s in stages:
        x = column[s] * 2.0
        ax.text(
            x,
            0.6,
            "interaction" if s is ToolStage.INTERACTION else s.value,
            ha="center",
            va="center",
            fontsize=10,
            bbox={"boxstyle": "round,pad=0.4", "fc": "#eeeeee", "ec": "#888888"},
        )
        if column[s]:
            ax.annotate(
                "",
                xy=(x - 0.55, 0.6),
                xytext=(x - 1.45, 0.6),
                arrowprops={"arrowstyle": "->", "color": "#888888"},
            )
    for stage in depth:  # where the stage's tools plug into the main search
        x = column[stage] * 2.0
        ax.plot([x, x], [0.3, -1.4 + 0.35], ls=":", color="#aaaaaa", lw=1, zorder=0)
    nx.draw_networkx_edges(
        graph,
        pos,
        ax=ax,
        arrows=True,
        arrowstyle="-|>",
        arrowsize=14,
        node_size=2600,
        node_shape="s",
        edge_color="#555555",
        connectionstyle="arc3,rad=0.12",
    )
    for step in dag.plan.steps:
        x, y = pos[step.index]
        stage = dag.stage_of(step.index)
        label = f"({step.index}) {step.title or step.component}"
        wrapped = _wrap(label, 18)
        if step.info:
            wrapped += "\n" + _wrap(f"Info: {step.info}", 22)
        ax.text(
            x,
            y,
            wrapped,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.5", "fc": _COLOURS[stage], "ec": "#444444"},
            zorder=3,
        )
    ax.set_xlim(-1.2, 2.0 * (len(stages) - 1) + 1.2)
    ax.set_ylim(-1.4 * rows - 0.9, 1.2)
    ax.axis("off")
    ax.set_title(
        title
        or f"plan {dag.plan}  (main search on top; a column's tools wait for the arrows into them)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text
