"""Queries over enriched tables and run plans: the SQL runner for `sql/` and summaries."""
