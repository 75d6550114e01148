"""Per-number caps: messages per minute, hour and day (null = no cap).

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-26 06:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ('per_minute', 'per_hour', 'per_day'):
        op.add_column('whatsapp_numbers', sa.Column(column, sa.Integer(), nullable=True))
        op.create_check_constraint(f'{column}_positive', 'whatsapp_numbers', f'{column} is null or {column} > 0')


def downgrade() -> None:
    for column in ('per_minute', 'per_hour', 'per_day'):
        op.drop_constraint(f'{column}_positive', 'whatsapp_numbers')
        op.drop_column('whatsapp_numbers', column)
