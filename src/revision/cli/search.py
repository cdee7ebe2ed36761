"""`revision search IMAGE …`: run photos through the search pipeline."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json
from revision.errors import InputError


def search(
    images: Annotated[list[str], typer.Argument(help="Query photo path(s).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Results per query.", min=1)] = 10,
    index: Annotated[str, typer.Option(help="hnsw (fast) or flat (exact).")] = "hnsw",
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Search the catalog with photos; one JSON object per line per query with --json.

    A photo that cannot be read is reported on stderr and the others still run.

    Example: revision search photo.jpg other.jpg --top-k 5 --json
    """
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline

    pipeline = SearchPipeline(SearchEngine.open(open_warehouse(warehouse), kind=index))
    failed = 0
    for image in images:
        try:
            response = pipeline.search(image, top_k=top_k)
        except InputError as exc:
            failed += 1
            console.print(f"[red]error:[/] {exc}")
            continue
        if json:
            print_json(response.as_dict())
            continue
        console.print(
            f"[bold]{image}[/]  relevance {response.relevance:.3f}  ({response.latency_ms:.1f} ms)"
        )
        for hit in response.results:
            price = "-" if hit.price is None else f"{hit.price:.4f}"
            console.print(
                f"  {hit.rank:>2}. {hit.product_id}  {hit.score:.3f}  {price:>7}  {hit.title}"
            )
    if failed:
        raise typer.Exit(1 if failed < len(images) else 2)
