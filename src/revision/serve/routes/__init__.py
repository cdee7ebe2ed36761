"""One route module per resource: search, events, health (and metrics), the page."""
