"""Times in a row the scheduler launched a campaign again because its runner was gone.

A runner resets it when it takes over; at RELAUNCH_LIMIT the campaign is paused (`runner_failed`)
instead of being relaunched into the same crash forever.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 11:30:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('campaigns', sa.Column('relaunches', sa.SmallInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('campaigns', 'relaunches')
