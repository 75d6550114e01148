"""Rate refusals per recipient, for their backoff (they do not spend attempts).

Deriving them from the attempt log miscounted once the log held notes or an operator's retry reset the
attempts; a counter is exact and costs two bytes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 10:20:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('campaign_recipients',
                  sa.Column('rate_tries', sa.SmallInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('campaign_recipients', 'rate_tries')
