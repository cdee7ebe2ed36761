"""`revision catalog …`: import and inspect the product table."""

from __future__ import annotations

from typing import Annotated

import typer

from revision.cli._common import JsonOpt, WarehouseOpt, console, open_warehouse, print_json
from revision.errors import InputError

app = typer.Typer(help="Import and inspect the product catalog.", no_args_is_help=True)


@app.command("import")
def import_(
    path: Annotated[str, typer.Argument(help="H&M folder (--format hm) or a CSV/Parquet file.")],
    format: Annotated[str, typer.Option("--format", help="hm or table.")] = "hm",
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="FIELD=COLUMN for --format table (id, title, image, "
            "description, category, colour, pattern, department, index_group, price, "
            "variant_group).",
        ),
    ] = None,
    images: Annotated[
        str | None, typer.Option("--images", help="Folder that image paths are relative to.")
    ] = None,
    warehouse: WarehouseOpt = None,
    json: JsonOpt = False,
) -> None:
    """Import products into the warehouse table `catalog/products`.

    Bad rows (empty id, duplicate id, unreadable image) go to `catalog/rejects` with file and row;
    good rows still import. Importing the same data twice changes nothing.

    Examples:

      revision catalog import ../shared/data/hm --format hm

      revision catalog import items.csv --format table \\
        --map id=sku --map title=name --map image=photo
    """
    from revision.catalog.importer import import_hm, import_table, parse_column_map

    wh = open_warehouse(warehouse)
    if format == "hm":
        report = import_hm(path, wh)
    elif format == "table":
        report = import_table(path, parse_column_map(map_ or []), wh, images=images)
    else:
        raise InputError(f"--format {format!r}: valid formats are hm, table")
    if json:
        print_json(report.as_dict())
        return
    console.print(
        f"imported {report.imported} products from {report.source}; "
        f"rejected {report.rejected}; catalog now holds {report.total}"
    )
    for r in report.rejects[:10]:
        console.print(f"  [yellow]{r['source']} row {r['row']}[/] {r['field']}: {r['reason']}")
    if report.rejected > 10:
        console.print(f"  … and {report.rejected - 10} more in table catalog/rejects")


@app.command("info")
def info(warehouse: WarehouseOpt = None, json: JsonOpt = False) -> None:
    """Summarise the catalog: size, priced share, attribute cardinalities.

    Example: revision catalog info --json
    """
    from revision.catalog.schema import load_products

    products = load_products(open_warehouse(warehouse))
    summary = {
        "products": len(products),
        "priced": int(products["price"].notna().sum()),
        "variant_groups": int(products["variant_group"].nunique()),
        **{
            f"{c}_values": int(products[c].nunique())
            for c in ("category", "colour", "pattern", "department", "index_group")
        },
    }
    if json:
        print_json(summary)
    else:
        for key, value in summary.items():
            console.print(f"{key:>20}: {value}")
