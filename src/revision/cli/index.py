"""`revision index …`: embed the catalog and build the FAISS indexes and the text index."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json

app = typer.Typer(
    help="Build the vector index over catalog photos and the catalog text index.",
    no_args_is_help=True,
)


@app.command("build")
def build(
    m: Annotated[int, typer.Option(help="HNSW neighbours per node.")] = 32,
    ef_construction: Annotated[int, typer.Option(help="HNSW build beam width.")] = 200,
    ef_search: Annotated[int, typer.Option(help="HNSW search beam width.")] = 128,
    text: Annotated[
        bool,
        typer.Option(
            "--text/--no-text",
            help="Also embed the catalog's text for the text-search tool (resumable).",
        ),
    ] = True,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Embed every catalog photo (cached by content hash), build HNSW and exact indexes, and
    embed the catalog's text for the text-search tool.

    Every step is cached as it goes: a killed build continues where it stopped. Tools never
    build these inside a request; a missing one is an error naming this command.

    Example: revision index build --json
    """
    from revision.search.engine import SearchEngine, build_index

    wh = open_warehouse(warehouse)
    summary = build_index(wh, m=m, ef_construction=ef_construction, ef_search=ef_search)
    if text:
        from revision.tools.builtin.text_search import build_text_index
        from revision.tools.catalog import catalog_arrays

        summary["text_index"] = build_text_index(catalog_arrays(SearchEngine.open(wh))).stats
    if json:
        print_json(summary)
        return
    console.print(
        f"indexed {summary['products']} products (embedding {summary['embed_s']} s, "
        f"HNSW {summary['hnsw_build_s']} s, exact {summary['flat_build_s']} s)"
    )
    if text:
        t = summary["text_index"]
        console.print(
            f"text index: {t['passages']} passages, {t['embedded']} embedded now, "
            f"{t['reused']} from the cache ({t['encoder']}, {t['build_s']} s)"
        )
    for fail in summary["failed"][:10]:
        console.print(f"  [yellow]skipped[/] {fail['error']}")


@app.command("adapt")
def adapt(
    products: Annotated[int, typer.Option(help="Catalog products to simulate photos of.")] = 3000,
    eval_products: Annotated[int, typer.Option(help="Held-out products to evaluate on.")] = 300,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Learn a projection that makes search robust to phone photos, then rebuild the index.

    Trains on simulated user photos of catalog products (one medium, one hard per product),
    never on the held-out fifth of variant groups, and reports recall on those before/after.

    Example: revision index adapt --products 3000 --json
    """
    from revision.search.adapt import adapt_index

    report = adapt_index(
        open_warehouse(warehouse),
        products=products,
        eval_products=eval_products,
        epochs=epochs,
        seed=seed,
    )
    if json:
        print_json(report)
        return
    console.print(
        f"trained on {report['train_photos']} photos in {report['train_s']} s; "
        f"index rebuilt with the adapter"
    )
    for severity in ("mild", "medium", "hard"):
        if severity in report:
            base, adapted = report[severity]["base"], report[severity]["adapted"]
            console.print(
                f"  {severity:>6} held-out recall@10 {base['recall@10']:.3f} -> "
                f"{adapted['recall@10']:.3f}   recall@1 {base['recall@1']:.3f} -> "
                f"{adapted['recall@1']:.3f}"
            )
