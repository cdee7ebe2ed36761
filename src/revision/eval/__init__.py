"""Evaluation: metrics and reports; with the simulator, the only stage that reads sim/truth."""
