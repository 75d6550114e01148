"""Business portfolios: numbers grouped under Meta's unique-recipients-per-24 h messaging limit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 06:20:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('business_portfolios',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('organization_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('unique_recipients_24h', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('unique_recipients_24h is null or unique_recipients_24h > 0', name='portfolio_limit_positive'),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('organization_id', 'name')
    )
    op.add_column('whatsapp_numbers', sa.Column('portfolio_id', sa.UUID(), nullable=True))
    op.create_foreign_key('whatsapp_numbers_portfolio_id_fkey', 'whatsapp_numbers', 'business_portfolios',
                          ['portfolio_id'], ['id'])


def downgrade() -> None:
    op.drop_constraint('whatsapp_numbers_portfolio_id_fkey', 'whatsapp_numbers')
    op.drop_column('whatsapp_numbers', 'portfolio_id')
    op.drop_table('business_portfolios')
