"""`revision simulate`: run the simulated world's traffic (filled in by the sim stage)."""


def simulate() -> None:
    """Simulate traffic (not yet available)."""
    raise SystemExit("revision simulate is not implemented yet")
