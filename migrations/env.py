"""Alembic environment: the URL comes from the caller (campaigns.store.db.upgrade) or DATABASE_URL."""

import os

import sqlalchemy as sa
from alembic import context

from campaigns.store.db import sqlalchemy_url
from campaigns.store.schema import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url") or sqlalchemy_url(os.environ["DATABASE_URL"])

engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    # Two commands upgrading at once must not race: serialise on an advisory lock.
    connection.execute(sa.text("select pg_advisory_lock(727001)"))
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
    connection.execute(sa.text("select pg_advisory_unlock(727001)"))
    connection.commit()
engine.dispose()
