"""`revision`: noun groups with verbs (`revision catalog import`, `revision index build`, …)."""

from __future__ import annotations

import sys

import typer

from revision.cli import (
    catalog,
    clustering,
    experiment,
    index,
    logs,
    mining,
    pipeline,
    planner,
    search,
    serve,
    sim,
    tools,
    vision,
)
from revision.errors import RevisionError

app = typer.Typer(
    name="revision",
    help="REVISION: mine no-click visual-search queries and plan tools that serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(catalog.app, name="catalog")
app.add_typer(vision.app, name="vision")
app.add_typer(index.app, name="index")
app.command("search")(search.search)
app.add_typer(logs.app, name="logs")
app.command("simulate")(sim.simulate)
app.add_typer(mining.app, name="mine")
app.add_typer(clustering.app, name="cluster")
app.add_typer(tools.app, name="tools")
app.add_typer(planner.app, name="planner")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(experiment.app, name="experiment")
app.command("serve")(serve.serve)


def main() -> None:
    """Entry point: library errors become one clear line on stderr and exit code 2."""
    try:
        app()
    except RevisionError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
