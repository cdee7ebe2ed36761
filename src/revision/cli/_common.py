"""Options and output helpers every command group shares."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from revision.warehouse import Warehouse

WarehouseOpt = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        help="Warehouse directory (default: $REVISION_HOME, else ./.revision).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

console = Console(stderr=True)  # human output on stderr keeps stdout clean for --json


def open_warehouse(path: str | None) -> Warehouse:
    return Warehouse(path)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
