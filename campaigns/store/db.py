"""Database engine and the small helpers every repository uses."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaigns.settings import get_settings

if TYPE_CHECKING:
    from alembic.config import Config


def iso_z(value: datetime | None) -> str | None:
    """The seed's timestamp form, 2024-12-14T10:00:00Z: UTC, to the second (how every face writes a row's time)."""
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def sqlalchemy_url(url: str) -> str:
    """Use psycopg 3 whatever scheme the environment gives (postgres://, postgresql://)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The plain libpq form of a URL (for psycopg.connect and COPY)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@lru_cache(maxsize=4)
def _engine_for(url: str, pool_size: int) -> Engine:
    return sa.create_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def get_engine() -> Engine:
    settings = get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set; call campaigns.infra.embedded.bootstrap() first")
    return _engine_for(settings.database_url, max(5, settings.parallel_batches + 4))


def alembic_config(url: str | None = None) -> Config:
    """The migrations (the repository's migrations/) against `url`, or DATABASE_URL."""
    from alembic.config import Config

    root = Path(__file__).resolve().parents[2]  # the repository: campaigns/store/db.py
    cfg = Config()
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url or get_settings().database_url or ""))
    return cfg


def upgrade(url: str | None = None) -> None:
    """Apply the Alembic migrations (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def schema_behind(engine: sa.Engine) -> str | None:
    """Why the database cannot serve this code's queries, or None: no tables yet, or migrations not applied.
    The servers say so when they start, and /health with them, instead of a 500 on the first request."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current == head:
        return None
    where = "has no tables yet" if current is None else f"is at migration {current}, this code needs {head}"
    return f"the database {where}: run `campaigns db upgrade`"


def psycopg_of(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one, in the same transaction: for COPY, which SQLAlchemy
    does not offer (the bulk paths: audience, contact import, exports, preflight's counts)."""
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"expected a psycopg connection, got {type(raw).__name__}")
    return raw
