"""`revision tools` commands (filled in by the tools stage)."""

import typer

app = typer.Typer(help="tools stage.", no_args_is_help=True)
