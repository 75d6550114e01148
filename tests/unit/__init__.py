"""Unit tests: pure functions and models, no Postgres, Redis, Prefect server or HTTP (`make test-fast`)."""
