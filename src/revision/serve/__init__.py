"""The online service (paper §IV-A(c)): it answers a visual-search request with the planner's
tool plan only for low-relevance queries, at most a few times per user per day, and reuses the
decision of a near-duplicate earlier query (the Image Query Caching Module) instead of calling
the planner again. State that must hold across worker processes (daily caps, rate limits)
lives in `revision.serve.state`, with an in-process and a Redis implementation of each.
"""
