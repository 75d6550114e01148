"""When a claimed recipient's request may have left: set in bulk, and committed, just before it is sent.

A row in `sending` without it was claimed but never sent (its runner died first), so recovery puts it back
to `pending` at once; only rows with it wait the grace period for their status webhook (reconcile.py).
Rows already in `sending` when this runs may have been sent by the code before it: they are marked, so
they keep waiting the grace period as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('campaign_recipients', sa.Column('in_flight_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("update campaign_recipients set in_flight_at = claimed_at where status = 'sending'")


def downgrade() -> None:
    op.drop_column('campaign_recipients', 'in_flight_at')
