"""Experiments: A/B tests of the online service on simulated traffic (or a team's own logs),
their analysis, and the weekly loop that learns from its own traffic (paper §IV-A(c), Tables
I-III). The harness is the one place besides `cli` and `pipeline` that may read the
simulator's hidden truth, and only for evaluation (the oracle arm, per-intent breakdowns).
"""
