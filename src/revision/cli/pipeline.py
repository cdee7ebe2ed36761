"""`revision pipeline …`: the weekly offline pipeline (no-click → … → publish)."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(help="The weekly pipeline that learns from the logs.", no_args_is_help=True)


@app.command("run")
def run(
    as_of: Annotated[
        str, typer.Option("--as-of", help="The week ends the day before (YYYY-MM-DD).")
    ],
    window_days: Annotated[int, typer.Option("--window-days", min=1, help="Days mined.")] = 7,
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage", help="Only these stages (repeatable; default: all).", show_default=False
        ),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Redo these finished stages.", show_default=False),
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="Mining on local processes or ray.")
    ] = "local",
    epochs: Annotated[int, typer.Option(min=1, help="Planner SFT epochs.")] = 6,
    grpo_steps: Annotated[int, typer.Option(min=0, help="Planner GRPO steps.")] = 60,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Run one week: no-click → mine → cluster → tools → planner data → train → evaluate →
    gate → publish. Finished stages are skipped (a rerun is a no-op); a stage killed halfway
    resumes from its own state.

    Example: revision pipeline run --as-of 2025-06-09 --window-days 7
    """
    from revision.pipeline.runner import STAGES, run_pipeline

    report = run_pipeline(
        open_warehouse(warehouse),
        as_of,
        window_days=window_days,
        stages=tuple(stage) if stage else STAGES,
        force=tuple(force or ()),
        mining_engine=engine,
        sft_epochs=epochs,
        grpo_steps=grpo_steps,
    )
    if json:
        print_json(report)
        return
    for name, result in report["stages"].items():
        console.print(f"  {name:>13}: {result}", highlight=False)
    console.print(f"week {report['as_of']} done in {report['seconds']} s")
