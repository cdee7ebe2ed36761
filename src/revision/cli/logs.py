"""`revision logs …`: import search logs, extract no-click requests, train the bot filter, stats."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(
    help="Search logs: import, no-click extraction, bot filter, statistics.",
    no_args_is_help=True,
)

WindowOpt = Annotated[
    float, typer.Option("--window", help="Seconds after a request in which a click counts.")
]
SkewOpt = Annotated[
    float,
    typer.Option(
        "--skew-tolerance",
        help="A click up to this many seconds before its request counts as at 0 s; "
        "earlier ones are clock skew, reported and ignored.",
    ),
]


@app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="A .jsonl or .parquet file, or a folder of them.")],
    table: Annotated[
        str,
        typer.Option(
            "--table",
            help="requests, impressions, clicks, orders or auto "
            "(from the file name, else its columns).",
        ),
    ] = "auto",
    assume_utc: Annotated[
        bool,
        typer.Option(
            "--assume-utc", help="Read timestamps without a time zone as UTC (else rejected)."
        ),
    ] = False,
    unknown_products: Annotated[
        str,
        typer.Option(
            "--unknown-products",
            help="Rows naming a product not in the catalog: keep (with a warning) or drop.",
        ),
    ] = "keep",
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Validate and import a team's logs into logs/requests, impressions, clicks, orders.

    A malformed row is reported as FILE:LINE: field X: reason, kept in logs/rejects and
    skipped; good rows are written partitioned by their UTC day. Importing the same file twice
    adds nothing (rows are deduplicated on each table's key; the first import wins).

    Examples:

      revision logs import exports/requests.jsonl

      revision logs import exports/ --assume-utc --json
    """
    from revision.logs.importer import import_logs, message

    report = import_logs(
        path,
        open_warehouse(warehouse),
        table,
        assume_utc=assume_utc,
        unknown_products=unknown_products,
    )
    if json:
        print_json(report.as_dict())
        return
    for tbl, n in report.imported.items():
        console.print(f"{tbl}: {n} new rows, {report.already_present.get(tbl, 0)} already present")
    console.print(f"rejected {report.rejected} rows; {report.warnings} warnings")
    for r in report.rejects[:10]:
        colour = "yellow" if r["action"] == "kept" else "red"
        console.print(f"  [{colour}]{r['action']}[/] {message(r)}", markup=True, highlight=False)
    if len(report.rejects) > 10:
        console.print(f"  … and {len(report.rejects) - 10} more in table logs/rejects")


@app.command("no-click")
def no_click(
    window: WindowOpt = 30.0,
    bot_filter: Annotated[
        str,
        typer.Option(
            "--bot-filter",
            help="model (trained by train-bot-filter), rules (fixed thresholds) or none.",
        ),
    ] = "model",
    skew_tolerance: SkewOpt = 2.0,
    nsfw: Annotated[
        bool, typer.Option("--nsfw/--no-nsfw", help="Run the NSFW classifier on new photos.")
    ] = True,
    images: Annotated[
        str | None,
        typer.Option(
            "--images", help="Folder that relative image paths start from (default: the warehouse)."
        ),
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Extract the no-click requests (no click within --window s) into logs/no_click.

    One row per such request, with kept / drop_reason (bot, unreadable_image, low_quality)
    from the bot and low-quality filters (docs/logs.md). Rerunning replaces the table.

    Examples:

      revision logs no-click

      revision logs no-click --window 30 --bot-filter rules --json
    """
    from revision.logs.no_click import extract_no_click

    report = extract_no_click(
        open_warehouse(warehouse),
        window=window,
        bot_filter=bot_filter,
        skew_tolerance=skew_tolerance,
        nsfw=nsfw,
        images_root=images,
    )
    if json:
        print_json(report.as_dict())
        return
    ratio = report.no_click_ratio
    console.print(
        f"{report.requests} requests, {report.no_click} without a click within "
        f"{window:g} s ({ratio:.1%} no-click)"
        if ratio is not None
        else "no requests in the log"
    )
    console.print(f"kept {report.kept}; dropped {report.dropped or 'none'}")
    console.print(
        f"bot filter '{report.bot_filter}': {report.bot_users} of {report.users} users flagged"
    )
    console.print(
        f"photos: {report.photos} distinct, {report.photos_measured} newly measured, "
        f"{report.photos_unreadable} unreadable"
    )
    if report.photos_unreadable:
        console.print(
            f"  [yellow]warning[/]: {report.photos_unreadable} photos could not be "
            "read (their requests are dropped as unreadable_image); if the paths are "
            "relative, pass --images DIR. First:",
            highlight=False,
        )
        for example in report.unreadable_examples[:3]:
            console.print(f"    {example}", highlight=False, soft_wrap=True)
    rules = {k: v for k, v in report.rules.items() if v}
    if rules:
        console.print(f"bad-input rules applied: {rules}")
    if report.empty_days:
        console.print(f"days without requests: {', '.join(report.empty_days)}")
    console.print(f"wrote logs/no_click for {len(report.days)} day(s) in {report.seconds:.1f} s")


@app.command("train-bot-filter")
def train_bot_filter(
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="Warehouse table with is_bot and user_id (or request_id), e.g. the "
            "simulator's sim/truth or a team's own labelled users.",
        ),
    ],
    window: WindowOpt = 30.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the CV and model.")] = 0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Train the bot classifier on labelled users; prints cross-validated precision/recall.

    Saves artifacts/models/bot_filter.joblib (used by `revision logs no-click`) and
    bot_filter.json (the CV figures).

    Example:

      revision logs train-bot-filter --labels sim/truth
    """
    from revision.logs.bots import train_bot_filter as train

    report = train(open_warehouse(warehouse), labels, window=window, seed=seed)
    if json:
        print_json(report.as_dict())
        return
    console.print(
        f"trained on {report.users} users ({report.bots} bots), {report.cv_folds}-fold CV:"
    )
    for level in ("per_user", "per_request"):
        m = getattr(report, level)
        console.print(
            f"  {level:>11}: precision {m['precision']:.3f}  recall "
            f"{m['recall']:.3f}  F1 {m['f1']:.3f}"
        )
    if report.warning:
        console.print(f"[yellow]warning[/]: {report.warning}")
    console.print(f"saved {report.model_path}")


@app.command("stats")
def stats(
    window: WindowOpt = 30.0,
    report: Annotated[
        str | None,
        typer.Option(
            "--report", help="Write the HTML report here (default: artifacts/reports/logs.html)."
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Only print the figures.")] = False,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Requests, users, CTR, no-click ratio, bot share, and an HTML report with plots.

    When sim/truth exists, evaluation-only figures are added: no-click ratio per hidden
    intent, the bot and low-quality filters against the truth.

    Examples:

      revision logs stats --json

      revision logs stats --report logs.html
    """
    from revision.eval.logs_truth import logs_evaluation
    from revision.logs.report import write_report
    from revision.logs.stats import compute_stats

    wh = open_warehouse(warehouse)
    figures = compute_stats(wh, window=window)
    evaluation = logs_evaluation(wh, window=window)
    if evaluation is not None:
        figures["evaluation"] = evaluation
    path = None if no_report else write_report(wh, figures, report)
    figures["report"] = str(path) if path else None
    if json:
        print_json(figures)
        return
    for key in (
        "requests",
        "users",
        "impressions",
        "clicks",
        "ctr",
        "no_click_ratio",
        "bot_share",
        "cvr",
    ):
        value = figures.get(key)
        console.print(
            f"{key:>15}: {value:.4f}" if isinstance(value, float) else f"{key:>15}: {value}"
        )
    if path:
        console.print(f"report: {path}")
