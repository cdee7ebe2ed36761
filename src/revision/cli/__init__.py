"""Command line: one module per stage group, each a thin shell over the library."""
