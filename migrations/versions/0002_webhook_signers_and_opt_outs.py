"""Webhook signers (which secret vouches for which number) and how a contact's opt-out was recorded.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:50:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Fingerprint of the secret that signs this number's webhooks (its own Meta app secret or Evolution
    # api key); null = the platform's Meta app (settings.META_APP_SECRET).
    op.add_column('whatsapp_numbers', sa.Column('webhook_signer', sa.Text(), nullable=True))
    # Which signers vouched for an event: ingestion applies it only to those signers' numbers.
    op.add_column('webhook_events', sa.Column('signers', postgresql.ARRAY(sa.Text()), nullable=True))
    op.add_column('contacts', sa.Column('opt_out_source', sa.Text(), nullable=True))
    op.add_column('contacts', sa.Column('opt_out_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('contacts', 'opt_out_changed_at')
    op.drop_column('contacts', 'opt_out_source')
    op.drop_column('webhook_events', 'signers')
    op.drop_column('whatsapp_numbers', 'webhook_signer')
