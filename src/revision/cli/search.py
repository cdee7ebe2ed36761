"""`revision search IMAGE …`: run photos through the search pipeline, optionally with a plan."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json
from revision.errors import InputError, RevisionError


def search(
    images: Annotated[list[str], typer.Argument(help="Query photo path(s).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Results per query.", min=1)] = 10,
    index: Annotated[str, typer.Option(help="hnsw (fast) or flat (exact).")] = "hnsw",
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
    plan: Annotated[
        str | None,
        typer.Option(
            "--plan",
            help='Run a tool plan alongside, e.g. "(2) (5)" (see `revision tools list`), or a '
            "YAML plan file.",
            show_default=False,
        ),
    ] = None,
    info: Annotated[
        list[str] | None,
        typer.Option(
            "--info",
            help='Info for one tool of the plan, as N=TEXT (e.g. --info "2=cheaper"); repeatable.',
            show_default=False,
        ),
    ] = None,
    tool_timeout_ms: Annotated[
        float,
        typer.Option(
            "--tool-timeout-ms",
            help="With --plan: each tool's deadline; overrunning tools are dropped.",
            min=1.0,
        ),
    ] = 250.0,
) -> None:
    """Search the catalog with photos; one JSON object per line per query with --json.

    With --plan, the plan's tools run alongside the search and the JSON adds "applied" (the
    tools that ran), "cues" (labels, summaries, metadata, questions) and "trace". An input that
    fails (a photo that cannot be read, or any other error) is reported on stderr and the
    others still run; the exit code is then 1 (2 when every input failed).

    Example: revision search photo.jpg other.jpg --top-k 5 --json
             revision search photo.jpg --plan "(2) (6)" --info "2=cheaper" --json
    """
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline

    if info and plan is None:
        console.print("[red]error:[/] --info needs --plan")
        raise typer.Exit(2)
    pipeline = SearchPipeline(SearchEngine.open(open_warehouse(warehouse), kind=index).warm_up())
    run = pipeline.search
    if plan is not None:
        from revision.cli.tools import parse_info_options
        from revision.tools.executor import PlanExecutor

        try:
            executor = PlanExecutor(pipeline, timeout_ms=tool_timeout_ms)
            dag = executor.prepare(executor.dag(plan, parse_info_options(info)))
        except RevisionError as exc:
            console.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None

        def run(image, top_k):
            return executor.search(image, dag, top_k=top_k)

    failed = 0
    for image in images:
        try:
            response = run(image, top_k=top_k)
        except Exception as exc:  # one bad input never costs the others their answers
            failed += 1
            reason = str(exc) if isinstance(exc, InputError) else f"{image}: {_describe(exc)}"
            console.print(f"error: {reason}", markup=False, highlight=False, soft_wrap=True)
            continue
        if json:
            print_json(response.as_dict(extended=plan is not None))
            continue
        console.print(
            f"[bold]{image}[/]  relevance {response.relevance:.3f}  ({response.latency_ms:.1f} ms)"
        )
        for hit in response.results:
            price = "-" if hit.price is None else f"{hit.price:.4f}"
            badges = f"  ({', '.join(hit.badges)})" if hit.badges else ""
            console.print(
                f"  {hit.rank:>2}. {hit.product_id}  {hit.score:.3f}  {price:>7}  {hit.title}"
                f"{badges}",
                markup=False,
            )
        if plan is not None:
            for cue in response.cues:
                if cue.type in ("summary", "question"):
                    console.print(f"  {cue.type}: {cue.text}", markup=False, highlight=False)
            ran = ", ".join(f"({t.index}) {t.status} {t.ms:.1f} ms" for t in response.trace)
            console.print(f"  tools: {ran}", highlight=False)
    if plan is not None:
        executor.close()
    if failed:  # 1: some inputs failed, the rest were answered; 2: every input failed
        raise typer.Exit(1 if failed < len(images) else 2)


def _describe(exc: Exception) -> str:
    """An unexpected failure as one line: its type, and its message when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
