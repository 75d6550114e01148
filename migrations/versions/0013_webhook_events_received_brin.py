"""A BRIN index on webhook_events.received_at, for the retention job (campaigns/webhooks/retention.py): events
arrive in time order, so a few pages find the old ones in a table of millions.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 22:00:00
"""

from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_webhook_events_received_brin', 'webhook_events', ['received_at'], unique=False, postgresql_using='brin'
    )


def downgrade() -> None:
    op.drop_index('ix_webhook_events_received_brin', table_name='webhook_events')
