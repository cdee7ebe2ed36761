"""`revision mining` commands (filled in by the mining stage)."""

import typer

app = typer.Typer(help="mining stage.", no_args_is_help=True)
