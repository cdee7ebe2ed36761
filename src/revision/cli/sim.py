"""`revision simulate`: run the simulated world's users through the reference search engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json


def simulate(
    world: Annotated[
        Path | None,
        typer.Option(
            "--world",
            help="World file (YAML); default: the shipped default world.",
            show_default=False,
        ),
    ] = None,
    users: Annotated[int, typer.Option("--users", help="Human users.", min=0)] = 1000,
    days: Annotated[int, typer.Option("--days", help="Days to simulate.", min=1)] = 1,
    requests: Annotated[
        int,
        typer.Option("--requests", help="Requests in total over all days, bots included.", min=0),
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="Traffic seed.", min=0)] = 0,
    start_date: Annotated[
        str, typer.Option("--start-date", help="First UTC day, YYYY-MM-DD.")
    ] = "2025-06-02",
    variant: Annotated[
        str, typer.Option("--variant", help="Name written to logs/requests.variant.")
    ] = "baseline",
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Simulate users with hidden intents searching with photos; write the logs.

    Builds a pool of query photos derived from catalog photos (once: later runs
    reuse it), sends REQUESTS requests (total, bots included) from USERS users
    and the world's bots over DAYS days through the baseline pipeline, and
    writes logs/requests, logs/impressions, logs/clicks, logs/orders and
    sim/truth (hidden intents, for evaluation only), one partition per day.
    A rerun replaces the same days' files of the same variant; a day without
    requests is written empty and reported.

    Example: revision simulate --users 500 --days 2 --requests 3000 --seed 1
    """

    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.sim.traffic import simulate as run
    from revision.sim.world import load_world

    spec = load_world(world)
    wh = open_warehouse(warehouse)
    pipeline = SearchPipeline(SearchEngine.open(wh))
    summary = run(
        spec,
        pipeline,
        wh,
        users=users,
        days=days,
        requests=requests,
        seed=seed,
        start_date=start_date,
        variant=variant,
    )
    if json:
        print_json(summary)
        return
    _print_summary(summary)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print_summary(s: dict) -> None:
    pool = s["pool"]
    console.print(
        f"[bold]world {s['world']}[/], variant {s['variant']}, seed {s['seed']}: "
        f"{s['requests']} requests over {s['days']} day(s) from {s['start_date']}"
    )
    console.print(
        f"  photo pool: {pool['photos']} photos of {pool['products']} products "
        f"({pool['built']} built now, {pool['seconds']} s)"
    )
    console.print(
        f"  users {s['users']} active of {s['population']}, bot share {_pct(s['bot_share'])}, "
        f"low-quality photos {_pct(s['low_quality_share'])}"
    )
    console.print(
        f"  CTR {_pct(s['ctr'])} (requests with a click), no-click ratio "
        f"{_pct(s['no_click_ratio'])} (humans {_pct(s['human_no_click_ratio'])}), "
        f"orders {s['orders']}"
    )
    if s["requests"]:
        console.print(f"  {s['requests_per_s']} requests/s ({s['path']} responses)")
    if s["empty_days"]:
        console.print(f"  [yellow]empty days (written empty):[/] {', '.join(s['empty_days'])}")
    for warning in s.get("warnings", []):
        console.print(f"  [yellow]warning:[/] {warning}")
    if s["per_intent"]:
        console.print("  hidden intent        share  no-click  served")
        for name, row in s["per_intent"].items():
            console.print(
                f"  {name:<18} {_pct(row['share']):>7} {_pct(row['no_click_ratio']):>9} "
                f"{_pct(row['satisfied_rate']):>7}"
            )
