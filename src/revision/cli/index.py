"""`revision index …`: embed the catalog and build the FAISS indexes."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(help="Build the vector index over catalog photos.", no_args_is_help=True)


@app.command("build")
def build(
    m: Annotated[int, typer.Option(help="HNSW neighbours per node.")] = 32,
    ef_construction: Annotated[int, typer.Option(help="HNSW build beam width.")] = 200,
    ef_search: Annotated[int, typer.Option(help="HNSW search beam width.")] = 128,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Embed every catalog photo (cached by content hash) and build HNSW and exact indexes.

    Example: revision index build --json
    """
    from revision.search.engine import build_index

    summary = build_index(
        open_warehouse(warehouse), m=m, ef_construction=ef_construction, ef_search=ef_search
    )
    if json:
        print_json(summary)
        return
    console.print(
        f"indexed {summary['products']} products (embedding {summary['embed_s']} s, "
        f"HNSW {summary['hnsw_build_s']} s, exact {summary['flat_build_s']} s)"
    )
    for fail in summary["failed"][:10]:
        console.print(f"  [yellow]skipped[/] {fail['error']}")
