"""A campaign waiting for its provider during an outage (campaigns/sending/outage.py): since when, and when the
runner tries it again with one message. Both null while the provider answers.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('campaigns', sa.Column('provider_down_since', sa.DateTime(timezone=True), nullable=True))
    op.add_column('campaigns', sa.Column('provider_probe_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('campaigns', 'provider_probe_at')
    op.drop_column('campaigns', 'provider_down_since')
