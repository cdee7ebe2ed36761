"""`revision logs` commands (filled in by the logs stage)."""

import typer

app = typer.Typer(help="logs stage.", no_args_is_help=True)
