"""Postgres: the tables, the engine, the runner lock."""
