"""The SQL files bertetl runs with polars' SQL engine, installed as package data (`bertetl.sql`)."""
